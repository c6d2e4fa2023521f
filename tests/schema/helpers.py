"""Events appended with a chosen arrival time, a pipeline with the schema stage on a fixed
clock, and the catalog read back whole."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tessera.eventlog import append_events
from tessera.ingest.messages import normalise_message
from tessera.processor import Pipeline
from tessera.schema.stage import SchemaStage
from tests.identity.helpers import pipeline, source_id

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
_ids = count()


def send(
    engine: Engine,
    messages: list[dict[str, Any]],
    *,
    at: datetime = NOW,
    source: str = "web",
    max_bytes: int = 32 * 1024,
) -> None:
    """Append `messages` as received at `at` from `source` (created if new)."""
    sid = source_id(engine, source)
    rows = [
        normalise_message(
            {"messageId": f"s{next(_ids)}", **message},
            source_id=sid,
            received_at=at,
            max_bytes=max_bytes,
        )
        for message in messages
    ]
    with engine.begin() as conn:
        append_events(conn, rows)


def schema_pipeline(
    *, now: datetime = NOW, retention_days: float = 7, context_sample: int = 1
) -> Pipeline:
    """The schema stage on a fixed clock, reading every event's context by default."""
    base = pipeline()
    stage = SchemaStage(
        minutes_retention=timedelta(days=retention_days), context_sample=context_sample
    )
    return Pipeline(base.config, clock=lambda: now, stages=[stage])


CATALOG = {
    "event_types": "SELECT name, type, count, first_seen, last_seen, dropped_paths "
    "FROM schema_event_types",
    "fields": "SELECT scope, event_name, event_type, path, json_type, count FROM schema_fields",
    "minutes": "SELECT minute, source_id, count FROM schema_event_minutes",
    "dropped": "SELECT reason, count FROM schema_dropped",
}


def catalog(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            name: sorted((tuple(row) for row in conn.execute(sa.text(sql))), key=repr)
            for name, sql in CATALOG.items()
        }
