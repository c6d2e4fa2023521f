"""HTTP routes for sources (/api/v1/sources): create one (its write key shown once, with
snippets), list, disable and enable, issue a new key; and the debugger's reads: the refused
messages, the newest events, and the live stream of both."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.engine import Connection, Engine

from tessera.api.deps import ConnectionDep, IdPath, Principal, client_ip, require
from tessera.audit.service import record
from tessera.config import Settings
from tessera.eventlog.service import tail_events
from tessera.ingest import live, sources
from tessera.ingest.activity import list_refusals
from tessera.ingest.schemas import (
    RefusalOut,
    SourceCreated,
    SourceIn,
    SourceOut,
    SourcePatch,
    TailOut,
)
from tessera.ingest.snippets import snippets

router = APIRouter(prefix="/api/v1", tags=["sources"])
Manager = Annotated[Principal, Depends(require("sources:manage"))]
MAX_POSITION = 2**63 - 1


def base_url(request: Request) -> str:
    """Where clients reach this server: TESSERA_PUBLIC_URL, or else the URL this request
    came to (a browser's, behind whatever proxy)."""
    settings: Settings = request.app.state.settings
    return (settings.public_url or str(request.base_url)).rstrip("/")


def _created(request: Request, conn: Connection, source: sources.NewSource) -> dict[str, Any]:
    return {
        **sources.get_source_summary(conn, source_id=source.id),
        "write_key": source.write_key,
        "snippets": snippets(base_url(request), source.write_key).as_dict(),
    }


def _forget_on_commit(request: Request, conn: Connection, source_id: int) -> None:
    """Make this process's write key cache drop the source once the change commits: before
    that, a tracking request could cache the old state again."""
    write_keys: sources.WriteKeyCache = request.app.state.write_keys
    sa.event.listen(conn, "commit", lambda _conn: write_keys.forget_source(source_id))


@router.get("/sources", response_model=list[SourceOut], summary="List sources")
def list_sources(conn: ConnectionDep, _: Manager) -> list[dict[str, Any]]:
    """Oldest first, each with today's counts and when it was last heard from."""
    return sources.list_source_summaries(conn)


@router.post("/sources", response_model=SourceCreated, status_code=201, summary="Create a source")
def create_source(
    body: SourceIn, request: Request, conn: ConnectionDep, principal: Manager
) -> dict[str, Any]:
    """The write key is in this response only (it is stored hashed), with snippets that
    send a first event with it."""
    source = sources.create_source(conn, name=body.name)
    record(
        conn,
        actor=principal.actor,
        action="source.create",
        target=f"source:{source.name}",
        ip=client_ip(request),
        details={"source_id": source.id, "write_key_prefix": source.write_key_prefix},
    )
    return _created(request, conn, source)


@router.get("/sources/{source_id}", response_model=SourceOut, summary="One source")
def get_source(source_id: IdPath, conn: ConnectionDep, _: Manager) -> dict[str, Any]:
    return sources.get_source_summary(conn, source_id=source_id)


@router.patch("/sources/{source_id}", response_model=SourceOut, summary="Disable or enable")
def update_source(
    source_id: IdPath, body: SourcePatch, request: Request, conn: ConnectionDep, principal: Manager
) -> dict[str, Any]:
    before = sources.get_source(conn, source_id=source_id)
    source = sources.set_source_enabled(conn, source_id=source_id, enabled=body.enabled)
    if before.enabled != source.enabled:
        record(
            conn,
            actor=principal.actor,
            action="source.enable" if source.enabled else "source.disable",
            target=f"source:{source.name}",
            ip=client_ip(request),
            details={"source_id": source.id},
        )
        _forget_on_commit(request, conn, source_id)
    return sources.get_source_summary(conn, source_id=source_id)


@router.post(
    "/sources/{source_id}/write-key",
    response_model=SourceCreated,
    summary="Issue a new write key",
)
def rotate_write_key(
    source_id: IdPath, request: Request, conn: ConnectionDep, principal: Manager
) -> dict[str, Any]:
    """The old key stops working (within TESSERA_WRITE_KEY_CACHE_SECONDS in other
    processes); the new one is in this response only."""
    source = sources.rotate_write_key(conn, source_id=source_id)
    record(
        conn,
        actor=principal.actor,
        action="source.rotate_key",
        target=f"source:{source.name}",
        ip=client_ip(request),
        details={"source_id": source.id, "write_key_prefix": source.write_key_prefix},
    )
    _forget_on_commit(request, conn, source_id)
    return _created(request, conn, source)


@router.get(
    "/sources/{source_id}/refusals",
    response_model=list[RefusalOut],
    summary="Messages refused from a source",
)
def source_refusals(
    source_id: IdPath,
    conn: ConnectionDep,
    _: Manager,
    after_id: Annotated[
        int | None, Query(ge=0, le=MAX_POSITION, description="Only those after this id.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Oldest first: the newest `limit`, or those after `after_id`. The newest
    TESSERA_SOURCE_REFUSALS_KEPT of each source are kept."""
    sources.get_source(conn, source_id=source_id)
    rows = list_refusals(conn, source_id=source_id, after_id=after_id, limit=limit)
    return [live.refusal_out(row) for row in rows]


@router.get(
    "/sources/{source_id}/events",
    response_model=TailOut,
    summary="The newest events of a source",
)
def source_events(
    source_id: IdPath,
    conn: ConnectionDep,
    _: Manager,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_POSITION, description="A `position` given before.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> dict[str, Any]:
    """Among the last 5,000 positions of the log (and after `after`): a bounded read at any
    log size, for a debugger, not an export."""
    sources.get_source(conn, source_id=source_id)
    tail = tail_events(conn, source_id=source_id, after_position=after, limit=limit)
    return {
        "events": [live.event_out(row) for row in tail.events],
        "position": tail.position,
        "skipped": tail.skipped,
    }


# Not in the OpenAPI document: a text/event-stream that does not end is not something it
# describes, nor something a schema fuzzer can read to the end. docs/sources.md has it.
@router.get("/sources/{source_id}/live", include_in_schema=False, summary="Live events")
def source_live(
    source_id: IdPath,
    request: Request,
    conn: ConnectionDep,
    _: Manager,
    after: Annotated[str | None, Query(max_length=64)] = None,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> StreamingResponse:
    """Server-sent events: `event` (a logged event), `refusal` (a refused message), `gap`
    (some events may have been passed over); resumes from `Last-Event-ID` or `?after=`."""
    sources.get_source(conn, source_id=source_id)
    given = last_event_id or after
    engine: Engine = request.app.state.engine
    cursor = live.start_cursor(
        engine, source_id=source_id, given=live.parse_cursor(given) if given else None
    )
    stream = live.live_stream(
        engine, source_id=source_id, cursor=cursor, stopping=request.app.state.stopping
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
