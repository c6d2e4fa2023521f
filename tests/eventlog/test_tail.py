"""`tail_events`: a source's newest events, found by reading a bounded range of the log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tessera.eventlog import NewEvent, append_events
from tessera.eventlog.service import tail_events
from tessera.ingest.sources import create_source


def _event(source_id: int, name: str) -> NewEvent:
    now = datetime.now(UTC)
    return NewEvent(
        source_id=source_id,
        message_id=str(uuid.uuid4()),
        type="track",
        name=name,
        user_id="u",
        anonymous_id=None,
        timestamp=now,
        original_timestamp=None,
        sent_at=None,
        received_at=now,
        payload=orjson.dumps({"type": "track", "event": name, "userId": "u"}).decode(),
    )


def _log(engine: Engine, names: list[tuple[str, str]]) -> dict[str, int]:
    """Append events (source name, event name) in order; return the sources' ids."""
    with engine.begin() as conn:
        ids = {
            name: create_source(conn, name=name).id for name in dict.fromkeys(s for s, _ in names)
        }
        append_events(conn, [_event(ids[source], name) for source, name in names])
    return ids


def test_the_tail_is_the_sources_newest_events_within_the_window(engine: Engine) -> None:
    # web's events at positions 1-10, app's interleaved from 11 to 30.
    order = [("web", f"w{i}") for i in range(10)]
    order += [("app" if i % 2 else "web", f"x{i}") for i in range(20)]
    ids = _log(engine, order)
    with engine.connect() as conn:
        newest = tail_events(conn, source_id=ids["web"], after_position=None, limit=3, window=8)
        assert [e["name"] for e in newest.events] == ["x14", "x16", "x18"]
        assert newest.position == 30 and not newest.skipped
        assert newest.events[0]["payload"]["event"] == "x14"

        # Following along: what came after a position, oldest first; nothing new, nothing.
        after = tail_events(conn, source_id=ids["app"], after_position=26, limit=10, window=8)
        assert [e["name"] for e in after.events] == ["x17", "x19"]
        again = tail_events(conn, source_id=ids["app"], after_position=30, limit=10, window=8)
        assert again.events == [] and again.position == 30 and not again.skipped

        # A reader far behind is told that it may have missed some: the window is all it
        # reads, whatever the log holds before it.
        behind = tail_events(conn, source_id=ids["web"], after_position=2, limit=50, window=8)
        assert [e["name"] for e in behind.events] == ["x12", "x14", "x16", "x18"]
        assert behind.skipped
        # As is one that more came for than it asked for.
        crowded = tail_events(conn, source_id=ids["web"], after_position=22, limit=2, window=8)
        assert [e["name"] for e in crowded.events] == ["x16", "x18"] and crowded.skipped


def test_an_empty_log_has_an_empty_tail(engine: Engine) -> None:
    with engine.begin() as conn:
        source = create_source(conn, name="quiet")
    with engine.connect() as conn:
        tail = tail_events(conn, source_id=source.id, after_position=None, limit=10)
    assert tail.events == [] and tail.position == 0 and not tail.skipped


def test_the_tail_reads_the_log_by_its_primary_key(engine: Engine) -> None:
    """The bound holds because the range is a primary-key range: the plan must not walk the
    (source_id, message_id) index instead, which holds every event of a busy source."""
    ids = _log(engine, [("web", "a"), ("app", "b")])
    captured: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        statement, parameters = args[2], args[3]
        if "FROM events" in statement and "ORDER BY" in statement:
            captured.append((statement, parameters))

    with engine.begin() as conn:
        sa.event.listen(conn, "before_cursor_execute", capture)
        tail_events(conn, source_id=ids["web"], after_position=0, limit=5)
        sa.event.remove(conn, "before_cursor_execute", capture)
        [(statement, parameters)] = captured
        if conn.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            plan = " ".join(str(row[-1]) for row in rows)
            assert "INTEGER PRIMARY KEY" in plan, plan
        else:
            # A two-row table is read whole; without that choice, the planner shows its index.
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters)
            plan = " ".join(str(row[0]) for row in rows)
            assert "pk_events" in plan, plan
        # SQLite names the unique (source_id, message_id) index `sqlite_autoindex_events_1`.
        assert "uq_events_source_id_message_id" not in plan and "autoindex" not in plan, plan
