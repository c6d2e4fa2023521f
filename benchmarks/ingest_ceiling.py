"""Ingest benchmark's ceiling: the rows the server stored, inserted straight into a fresh
database with the server's pragmas and statement (sqlite3, and tessera's `append_events`)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness_server import run_tessera

from tessera.eventlog import service as eventlog_service

# The server's own columns and statement, so the ceiling inserts exactly what the writer does.
EVENT_COLUMNS = eventlog_service.COLUMNS
INSERT_SQL = eventlog_service.insert_sql("sqlite")


def _read_stored_rows(database: Path, like: str, limit: int) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        query = (
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE message_id LIKE ? "
            "ORDER BY seq LIMIT ?"
        )
        return db.execute(query, (like, limit)).fetchall()


def _fresh_database(workdir: Path, name: str, server_db: Path) -> Path:
    """A new database with the server's schema (via `tessera migrate`) and its sources."""
    database = workdir / name
    run_tessera(database, "migrate")
    with (
        contextlib.closing(sqlite3.connect(server_db)) as source,
        contextlib.closing(sqlite3.connect(database)) as target,
    ):
        rows = source.execute("SELECT * FROM sources").fetchall()
        marks = ", ".join("?" for _ in rows[0])
        target.executemany(f"INSERT INTO sources VALUES ({marks})", rows)
        target.commit()
    return database


def _chunks(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def ceiling_sqlite3(database: Path, rows: Sequence[tuple[Any, ...]], per_commit: int) -> float:
    """Rows/s of sqlite3 executemany with the server's pragmas and statement."""
    db = sqlite3.connect(database, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("PRAGMA foreign_keys=ON")
        started = time.perf_counter()
        for chunk in _chunks(rows, per_commit):
            db.execute("BEGIN")
            db.executemany(INSERT_SQL, chunk)
            db.execute("COMMIT")
        elapsed = time.perf_counter() - started
        stored = db.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        db.close()
    if stored != len(rows):
        raise RuntimeError(f"the ceiling stored {stored} rows of {len(rows)}")
    return len(rows) / elapsed


def ceiling_append_events(
    database: Path, rows: Sequence[tuple[Any, ...]], per_commit: int
) -> float:
    """Rows/s of tessera's own `append_events` (one executemany a transaction) on the rows."""
    from tessera.eventlog.service import NewEvent, append_events
    from tessera.store import create_store_engine

    def when(text: str | None) -> datetime | None:
        return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)

    events = [
        NewEvent(
            source_id=row[0],
            message_id=row[1],
            type=row[2],
            name=row[3],
            user_id=row[4],
            anonymous_id=row[5],
            timestamp=when(row[6]),  # type: ignore[typeddict-item]
            original_timestamp=when(row[7]),
            sent_at=when(row[8]),
            received_at=when(row[9]),  # type: ignore[typeddict-item]
            payload=row[10],
        )
        for row in rows
    ]
    engine = create_store_engine(f"sqlite:///{database}", sqlite_synchronous="FULL")
    try:
        with engine.begin() as conn:  # connect (pragmas) outside the timing
            pass
        started = time.perf_counter()
        for chunk in _chunks(events, per_commit):
            with engine.begin() as conn:
                append_events(conn, chunk)
        elapsed = time.perf_counter() - started
    finally:
        engine.dispose()
    return len(events) / elapsed


def measure_ceiling(workdir: Path, server_db: Path, like: str, limit: int) -> dict[str, Any]:
    rows = _read_stored_rows(server_db, like, limit)
    if not rows:
        raise RuntimeError("no stored batch rows to measure the ceiling with")
    sql_db = _fresh_database(workdir, "ceiling-sqlite3.db", server_db)
    core_db = _fresh_database(workdir, "ceiling-sqlalchemy.db", server_db)
    big_db = _fresh_database(workdir, "ceiling-sqlite3-1000.db", server_db)
    return {
        "rows": len(rows),
        "payload_bytes": sum(len(row[10]) for row in rows) // len(rows),
        "sqlite3_100": ceiling_sqlite3(sql_db, rows, 100),
        "sqlalchemy_100": ceiling_append_events(core_db, rows, 100),
        "sqlite3_1000": ceiling_sqlite3(big_db, rows, 1000),
    }
