"""Append to and read from the event log, on an open connection.

Appends are idempotent per (source, messageId): a duplicate is silently not stored twice,
which is how the tracking API dedupes client retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.eventlog.models import events
from tessera.store.types import sqlite_time


class NewEvent(TypedDict):
    """A row about to be appended; `payload` is the full message as JSON text."""

    source_id: int
    message_id: str
    type: str
    name: str | None
    user_id: str | None
    anonymous_id: str | None
    timestamp: datetime
    original_timestamp: datetime | None
    sent_at: datetime | None
    received_at: datetime
    payload: str


COLUMNS = (
    "source_id",
    "message_id",
    "type",
    "name",
    "user_id",
    "anonymous_id",
    "timestamp",
    "original_timestamp",
    "sent_at",
    "received_at",
    "payload",
)
# Any constant will do; held for the append transaction on PostgreSQL.
APPEND_LOCK = 0x7E55E7B


def insert_sql(dialect_name: str) -> str:
    marker = "?" if dialect_name == "sqlite" else "%s"
    columns = ", ".join(f'"{column}"' for column in COLUMNS)
    values = ", ".join(marker for _ in COLUMNS)
    return (
        f"INSERT INTO events ({columns}) VALUES ({values}) "
        "ON CONFLICT (source_id, message_id) DO NOTHING"
    )


def append_events(conn: Connection, rows: Sequence[NewEvent]) -> int:
    """Insert `rows` in one executemany, skipping duplicates; return how many were new, or
    -1 when the driver cannot tell.

    This is the ingest hot path, so it hands the driver plain tuples: on SQLite the times
    are pre-formatted as `UtcDateTime` stores them; psycopg adapts aware datetimes itself.
    """
    if not rows:
        return 0
    dialect = conn.dialect.name
    if dialect == "postgresql":
        # Sequence values are taken at insert but become visible at commit; serialising the
        # appends of all processes makes `seq` order commit order, so a reader that follows
        # `seq > position` never passes over a row that commits late.
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
    if dialect == "sqlite":
        # The rows of one request share `received_at`, and `timestamp` is often that very
        # moment: format each distinct moment once (datetimes cache their hash).
        formatted: dict[datetime, str | None] = {}

        def text(moment: datetime | None) -> str | None:
            if moment is None:
                return None
            found = formatted.get(moment)
            if found is None:
                found = formatted[moment] = sqlite_time(moment)
            return found

        params: list[tuple[Any, ...]] = [
            (
                row["source_id"],
                row["message_id"],
                row["type"],
                row["name"],
                row["user_id"],
                row["anonymous_id"],
                text(row["timestamp"]),
                text(row["original_timestamp"]),
                text(row["sent_at"]),
                text(row["received_at"]),
                row["payload"],
            )
            for row in rows
        ]
    else:
        params = [tuple(row[column] for column in COLUMNS) for row in rows]  # type: ignore[literal-required]
    result = conn.exec_driver_sql(insert_sql(dialect), params)
    return int(result.rowcount)


def count_events(conn: Connection, *, source_id: int | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(events)
    if source_id is not None:
        query = query.where(events.c.source_id == source_id)
    return int(conn.execute(query).scalar_one())


def head_position(conn: Connection) -> int:
    """The highest `seq` in the log (0 when empty)."""
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.seq), 0))).scalar_one())


def list_events(
    conn: Connection,
    *,
    after_seq: int = 0,
    limit: int = 1000,
    source_id: int | None = None,
    message_id: str | None = None,
) -> list[dict[str, Any]]:
    """Events in log order after `after_seq`, each with its decoded `payload`."""
    query = sa.select(events).where(events.c.seq > after_seq).order_by(events.c.seq).limit(limit)
    if source_id is not None:
        query = query.where(events.c.source_id == source_id)
    if message_id is not None:
        query = query.where(events.c.message_id == message_id)
    rows = []
    for row in conn.execute(query).mappings():
        item = dict(row)
        item["payload"] = orjson.loads(item["payload"])
        rows.append(item)
    return rows


# How far back from the head `tail_events` looks: the rows it may read per call, whatever the
# log's size. At the 20,000 events/s ingest target that is the last quarter second, and a
# live view polling twice a second then sees a sample; at the rates one watches a source by
# eye (up to ~10,000 events/s over all sources) it sees everything.
TAIL_WINDOW = 5_000


@dataclass(frozen=True, slots=True)
class Tail:
    """What `tail_events` found: the source's events (oldest first), the position it read up
    to (the head then: pass it back as `after_position`), and whether it may have skipped
    some (more events than the window or `limit` since `after_position`)."""

    events: list[dict[str, Any]]
    position: int
    skipped: bool


def tail_events(
    conn: Connection,
    *,
    source_id: int,
    after_position: int | None,
    limit: int = 50,
    window: int = TAIL_WINDOW,
) -> Tail:
    """The newest events of one source after `after_position` (None: the newest there are),
    reading at most `window` rows of the log.

    The log has no index by source and time (one would cost every append), so this reads a
    range of the primary key, `(max(head - window, after_position), head]`, newest first,
    and filters by source: bounded work at any log size. The filter is written `source_id
    + 0` so that neither SQLite's planner nor PostgreSQL's picks the (source_id, message_id)
    index instead, which would walk all of a busy source's events.
    """
    head = head_position(conn)
    floor = max(head - window, 0)
    skipped = after_position is not None and after_position < floor
    low = floor if after_position is None else max(floor, after_position)
    if head <= low:
        return Tail([], max(head, after_position or 0), False)
    query = (
        sa.select(events)
        .where(events.c.seq > low, events.c.seq <= head, events.c.source_id + 0 == source_id)
        .order_by(events.c.seq.desc())
        .limit(limit + 1)
    )
    rows = list(conn.execute(query).mappings())
    found = []
    for row in reversed(rows[:limit]):
        item = dict(row)
        item["payload"] = orjson.loads(item["payload"])
        found.append(item)
    more = len(rows) > limit and after_position is not None
    return Tail(found, head, skipped or more)
