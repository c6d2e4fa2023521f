"""Liveness (/healthz) and readiness (/readyz): the store reachable, the schema current."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import sqlalchemy as sa
from fastapi import APIRouter
from sqlalchemy.engine import Engine
from starlette.responses import JSONResponse, PlainTextResponse

from tessera.activation import service as activation_service
from tessera.eventlog.service import head_position
from tessera.eventlog.writer import EventLogWriter
from tessera.ingest.activity import IngestActivity
from tessera.processor import dropped_counts, health, lag
from tessera.processor.models import DERIVED, processor_state
from tessera.store import current_revision, head_revision
from tessera.worker_process import ProcessorHandle


def create_router(
    engine: Engine,
    writer: EventLogWriter,
    processor: ProcessorHandle | None,
    activity: IngestActivity,
) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def check() -> tuple[int, dict[str, Any]]:
        head = head_revision()
        body: dict[str, Any] = {"status": "ready", "schema": {"head": head}}
        try:
            with engine.connect() as conn:
                current = current_revision(conn)
                log_head = head_position(conn)
                behind = lag(conn) if current == head else None
                derived = lag(conn, name=DERIVED) if current == head else None
                state = health(conn) if current == head else None
                derived_state = health(conn, name=DERIVED) if current == head else None
        except sa.exc.SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            return 503, {"status": "unavailable", "database": f"unreachable: {reason}"}
        body["database"] = "ok"
        body["schema"]["current"] = current
        body["event_log"] = {"head_seq": log_head}
        body["ingest"] = {
            "queued_events": writer.queued_events,
            "committed_events": writer.stats.committed_events,
            "commits": writer.stats.commits,
            "rejected_overload_events": writer.stats.rejected_overload,
        }
        body["processor"] = {
            "running": processor is not None and processor.running,
            "position": behind.position if behind else None,
            "lag_events": behind.events if behind else None,
            "oldest_waiting_seconds": behind.oldest_age_seconds if behind else None,
            "failed_batches": state.failed_batches if state else None,
            "last_error": state.last_error if state else None,
            "last_error_at": state.last_error_at.isoformat()
            if state and state.last_error_at
            else None,
            # Computed traits and audiences: level with the main stage when inline.
            "derived": {
                "position": derived.position if derived else None,
                "lag_events": derived.events if derived else None,
                "oldest_waiting_seconds": derived.oldest_age_seconds if derived else None,
                "failed_batches": derived_state.failed_batches if derived_state else None,
                "last_error": derived_state.last_error if derived_state else None,
            },
        }
        if current != head:
            body["status"] = "migrations_pending"
            return 503, body
        return 200, body

    @router.get(
        "/readyz",
        summary="The store is reachable and its schema current",
        responses={503: {"description": "Not ready; the body says why."}},
    )
    async def readyz() -> JSONResponse:
        status, body = await anyio.to_thread.run_sync(check)
        return JSONResponse(body, status_code=status)

    def metrics_text() -> str:
        with engine.connect() as conn:
            behind = lag(conn)
            derived = lag(conn, name=DERIVED)
            state = health(conn)
            dropped = dropped_counts(conn)
            destinations = activation_service.metrics(conn)
            unattributed = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(processor_state.c.unattributed_events), 0))
            ).scalar_one()
        stats = writer.stats
        gauges: list[tuple[str, str, str, float]] = [
            (
                "tessera_ingest_committed_events_total",
                "counter",
                "Events committed to the log by this process.",
                stats.committed_events,
            ),
            (
                "tessera_ingest_commits_total",
                "counter",
                "Group commits by this process.",
                stats.commits,
            ),
            (
                "tessera_ingest_queued_events",
                "gauge",
                "Events waiting for their commit.",
                writer.queued_events,
            ),
            (
                "tessera_ingest_rejected_overload_events_total",
                "counter",
                "Events refused with 429 because the queue was full.",
                stats.rejected_overload,
            ),
            (
                "tessera_ingest_refusals_written_total",
                "counter",
                "Refused messages of known sources written to their live view by this process.",
                activity.stats.refusals_written,
            ),
            (
                "tessera_ingest_refusals_not_kept_total",
                "counter",
                "Refused messages counted but not kept (over the per-flush cap, or a failed "
                "flush).",
                activity.stats.refusals_not_kept,
            ),
            (
                "tessera_processor_position",
                "gauge",
                "The last log position the processor applied.",
                behind.position,
            ),
            (
                "tessera_processor_lag_events",
                "gauge",
                "Events in the log not yet applied.",
                behind.events,
            ),
            (
                "tessera_processor_oldest_waiting_seconds",
                "gauge",
                "Age of the oldest event not yet applied.",
                behind.oldest_age_seconds or 0.0,
            ),
            (
                "tessera_processor_derived_position",
                "gauge",
                "The last log position computed traits and audiences were applied to.",
                derived.position,
            ),
            (
                "tessera_processor_derived_lag_events",
                "gauge",
                "Events in the log not yet applied to computed traits and audiences.",
                derived.events,
            ),
            (
                "tessera_processor_derived_oldest_waiting_seconds",
                "gauge",
                "Age of the oldest event not yet applied to computed traits and audiences.",
                derived.oldest_age_seconds or 0.0,
            ),
            (
                "tessera_processor_unattributed_events_total",
                "counter",
                "Events with no usable identifier.",
                float(unattributed),
            ),
            (
                "tessera_processor_failed_batches_total",
                "counter",
                "Processor batches that failed and were retried.",
                state.failed_batches,
            ),
        ]
        lines = []
        for name, kind, help_text, value in gauges:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value:g}"]
        lines += _delivery_metrics(destinations)
        metric = "tessera_ingest_refused_unattributed_total"
        lines += [
            f"# HELP {metric} Tracking requests refused before a source was known (no, or an "
            "unknown, write key), by HTTP status; counted, never stored.",
            f"# TYPE {metric} counter",
        ]
        for status, count in sorted(activity.stats.unattributed.items()):
            lines.append(f'{metric}{{status="{status}"}} {count}')
        metric = "tessera_identity_dropped_identifiers_total"
        lines += [
            f"# HELP {metric} Identifiers the identity rules left unlinked, by reason.",
            f"# TYPE {metric} counter",
        ]
        for reason, count in dropped.items():
            lines.append(f'{metric}{{reason="{reason}"}} {count}')
        return "\n".join(lines) + "\n"

    @router.get(
        "/metrics",
        summary="Prometheus metrics: ingest, processor lag, delivery per destination",
        response_class=PlainTextResponse,
    )
    async def metrics() -> PlainTextResponse:
        text = await anyio.to_thread.run_sync(metrics_text)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return router


DELIVERY_COUNTERS = (
    ("sent", "Messages delivered."),
    ("failed", "Delivery attempts that failed (each is retried or becomes a dead letter)."),
    ("dead", "Messages that became dead letters."),
    ("blocked", "Messages not sent because the person lacks the destination's consent."),
    ("replayed", "Dead letters queued again."),
)
DELIVERY_GAUGES = (
    ("pending", "Messages waiting to be delivered."),
    ("retrying", "Waiting messages that failed at least once."),
    ("dead_letters", "Dead letters now (replayable)."),
    ("latency_ms_p95", "Queued to delivered, 95th percentile of the last 1,000, in ms."),
)


def _delivery_metrics(destinations: list[dict[str, Any]]) -> list[str]:
    """Per destination: counters since it was created, and what waits now."""
    lines: list[str] = []
    families = [
        (f"tessera_delivery_{name}_total", "counter", text, name)
        for name, text in DELIVERY_COUNTERS
    ] + [(f"tessera_delivery_{name}", "gauge", text, name) for name, text in DELIVERY_GAUGES]
    families.append(
        ("tessera_destination_paused", "gauge", "1 while a destination is paused.", "paused")
    )
    for metric, kind, text, key in families:
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}"]
        for item in destinations:
            value = item.get(key)
            if value is None:
                continue
            label = str(item["name"]).replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{metric}{{destination="{item["id"]}",name="{label}"}} {float(value):g}')
    return lines
