"""Liveness (/healthz) and readiness (/readyz): the store reachable, the schema current."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio.to_thread
import sqlalchemy as sa
from fastapi import APIRouter
from sqlalchemy.engine import Engine
from starlette.responses import JSONResponse

from tessera.eventlog.service import head_position
from tessera.eventlog.writer import EventLogWriter
from tessera.processor import Processor, lag
from tessera.store import current_revision, head_revision


def create_router(engine: Engine, writer: EventLogWriter, processor: Processor | None) -> APIRouter:
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
            "failed_batches": processor.failures if processor else 0,
        }
        if current != head:
            body["status"] = "migrations_pending"
            return 503, body
        return 200, body

    run: Callable[[], tuple[int, dict[str, Any]]] = check

    @router.get(
        "/readyz",
        summary="The store is reachable and its schema current",
        responses={503: {"description": "Not ready; the body says why."}},
    )
    async def readyz() -> JSONResponse:
        status, body = await anyio.to_thread.run_sync(run)
        return JSONResponse(body, status_code=status)

    return router
