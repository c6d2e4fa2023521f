"""The audience benchmark's reference: `TARGET` written by hand as a DuckDB query over the
store's events, exported to Parquet."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiences_definitions import NOW

if TYPE_CHECKING:
    pass


EXPORT_BATCH = 250_000

# The reference: TARGET written by hand over the raw events, at the same NOW. Parameters:
# the Parquet files and the count threshold.
DUCKDB_QUERY = """
WITH recent AS (
    SELECT e.seq, e.name, e.timestamp, e.properties
    FROM read_parquet('{events}') AS e
    WHERE e.type = 'track'
      AND e.name IN ('Order Completed', 'Cart Viewed', 'Product Added')
      AND e.timestamp > TIMESTAMP '{now}' - INTERVAL 30 DAY
)
SELECT a.profile_id
FROM recent AS r
JOIN read_parquet('{attribution}') AS a ON a.seq = r.seq
WHERE a.profile_id IS NOT NULL
GROUP BY a.profile_id
HAVING count(*) FILTER (
           WHERE r.name = 'Order Completed'
             AND TRY_CAST(json_extract(r.properties, '$.total') AS DOUBLE) > 50
       ) >= {count}
   AND count(*) FILTER (
           WHERE r.name IN ('Cart Viewed', 'Product Added')
             AND r.timestamp > TIMESTAMP '{now}' - INTERVAL 7 DAY
       ) = 0
"""


def export_parquet(database: Path, directory: Path) -> dict[str, Any]:
    """events (seq, type, name, timestamp, properties JSON) and event_profiles (seq,
    profile_id) to Parquet, EXPORT_BATCH rows at a time."""
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    started = time.perf_counter()
    directory.mkdir(exist_ok=True)
    events_path, attribution_path = directory / "events.parquet", directory / "attribution.parquet"
    schema = pa.schema(
        [
            ("seq", pa.int64()),
            ("type", pa.string()),
            ("name", pa.string()),
            ("timestamp", pa.timestamp("us")),
            ("properties", pa.string()),
        ]
    )
    rows = 0
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        cursor = db.execute(
            "SELECT seq, type, name, timestamp, json_extract(payload, '$.properties') "
            "FROM events ORDER BY seq"
        )
        with pq.ParquetWriter(events_path, schema, compression="zstd") as writer:
            while batch := cursor.fetchmany(EXPORT_BATCH):
                seqs, kinds, names, stamps, properties = zip(*batch, strict=True)
                writer.write_table(
                    pa.table(
                        [
                            pa.array(seqs, pa.int64()),
                            pa.array(kinds, pa.string()),
                            pa.array(names, pa.string()),
                            pa.array(stamps, pa.string()).cast(pa.timestamp("us")),
                            pa.array(properties, pa.string()),
                        ],
                        schema=schema,
                    )
                )
                rows += len(batch)
        attribution_schema = pa.schema([("seq", pa.int64()), ("profile_id", pa.string())])
        cursor = db.execute("SELECT seq, profile_id FROM event_profiles ORDER BY seq")
        with pq.ParquetWriter(attribution_path, attribution_schema, compression="zstd") as writer:
            while batch := cursor.fetchmany(EXPORT_BATCH):
                seqs, pids = zip(*batch, strict=True)
                writer.write_table(
                    pa.table(
                        [pa.array(seqs, pa.int64()), pa.array(pids, pa.string())],
                        schema=attribution_schema,
                    )
                )
    return {
        "export_s": time.perf_counter() - started,
        "rows": rows,
        "bytes": events_path.stat().st_size + attribution_path.stat().st_size,
        "events": events_path,
        "attribution": attribution_path,
    }


def duckdb_members(exported: dict[str, Any], count: int, runs: int = 3) -> dict[str, Any]:
    """The reference query: the first run in a fresh connection, then `runs - 1` more."""
    import duckdb

    sql = DUCKDB_QUERY.format(
        events=exported["events"],
        attribution=exported["attribution"],
        now=NOW.replace(tzinfo=None).isoformat(" "),
        count=count,
    )
    times: list[float] = []
    members: set[str] = set()
    connection = duckdb.connect()
    try:
        connection.execute("SET threads = 2")
        for _ in range(runs):
            started = time.perf_counter()
            found = connection.execute(sql).fetchall()
            times.append(time.perf_counter() - started)
            members = {row[0] for row in found}
    finally:
        connection.close()
    return {"first_s": times[0], "best_s": min(times), "members": members}
