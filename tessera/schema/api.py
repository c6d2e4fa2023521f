"""GET /api/v1/schema/...: what Tessera has seen (event types, properties, traits, context
fields, events per minute); GET /api/v1/dashboard: the Home page's figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from tessera.api.deps import ConnectionDep, Principal, require
from tessera.schema import service
from tessera.schema.dashboard import dashboard_summary
from tessera.schema.schemas import (
    ContextFields,
    Dashboard,
    EventProperties,
    EventsPerMinute,
    EventTypePage,
    Traits,
)

router = APIRouter(prefix="/api/v1", tags=["schema"])
Reader = Annotated[Principal, Depends(require("schema:read"))]
DashboardReader = Annotated[Principal, Depends(require("dashboard:read"))]
EventTypeName = Literal["track", "page", "screen", "identify", "group", "alias"]


@router.get("/schema/events", response_model=EventTypePage, summary="List the events seen")
def list_event_types(
    conn: ConnectionDep,
    _: Reader,
    *,
    search: Annotated[
        str | None, Query(max_length=255, description="Part of a name or type, any case.")
    ] = None,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    return service.list_event_types(conn, search=search, limit=limit, after=cursor)


@router.get(
    "/schema/events/properties",
    response_model=EventProperties,
    summary="An event's properties with their observed types",
)
def get_event_properties(
    conn: ConnectionDep,
    _: Reader,
    *,
    type: Annotated[EventTypeName, Query(description="The call's type.")] = "track",
    name: Annotated[
        str | None, Query(max_length=255, description="A track call's event name.")
    ] = None,
) -> dict[str, Any]:
    return service.get_event_properties(conn, name=name, event_type=type)


@router.get("/schema/traits", response_model=Traits, summary="Profile traits with their types")
def list_traits(conn: ConnectionDep, _: Reader) -> dict[str, Any]:
    return {"traits": service.list_traits(conn)}


@router.get(
    "/schema/context", response_model=ContextFields, summary="Context fields with their types"
)
def list_context_fields(conn: ConnectionDep, _: Reader, request: Request) -> dict[str, Any]:
    sample = request.app.state.settings.schema_context_sample
    return {"fields": service.list_context_fields(conn), "sample": sample}


@router.get(
    "/schema/events-per-minute",
    response_model=EventsPerMinute,
    summary="Events received per minute and source",
)
def events_per_minute(
    conn: ConnectionDep,
    _: Reader,
    *,
    since: Annotated[
        datetime | None, Query(description="Default: 24 hours before `until`.")
    ] = None,
    until: Annotated[datetime | None, Query(description="Default: now.")] = None,
    source_id: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
) -> dict[str, Any]:
    end = until or datetime.now(UTC)
    start = since or end - timedelta(hours=24)
    return service.events_per_minute(conn, since=start, until=end, source_id=source_id)


@router.get("/dashboard", response_model=Dashboard, summary="The Home dashboard's figures")
def get_dashboard(conn: ConnectionDep, principal: DashboardReader) -> dict[str, Any]:
    return dashboard_summary(
        conn, now=datetime.now(UTC), include_delivery=principal.may("destinations:read")
    )
