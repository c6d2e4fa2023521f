"""HTTP routes for what the audience list and detail pages chart: the list's overview,
an audience's size trend, and its entries and exits per day. Read-only and thin: the
queries are in `overview.py` and `trends.py`.

Included before `audiences_router`, so `/api/v1/audiences/overview` is not taken for an
audience id (ids are `aud_...`, so none is called that)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from tessera.api.deps import ConnectionDep, Principal, require
from tessera.audiences.overview import audience_overview
from tessera.audiences.schemas import AudienceOverviewOut, DailyChangesOut, SizeTrendOut
from tessera.audiences.sizes import sizes_of
from tessera.audiences.trends import KEEP_DAYS, daily_changes, size_trend

router = APIRouter(prefix="/api/v1/audiences", tags=["audiences"])
Reader = Annotated[Principal, Depends(require("audiences:read"))]


@router.get(
    "/overview", response_model=list[AudienceOverviewOut], summary="Audiences for the list page"
)
def overview(request: Request, conn: ConnectionDep, _: Reader) -> list[dict[str, Any]]:
    """Every audience with its size, phase and progress while it builds, and a week's size
    trend (a point a day, from the hourly snapshots)."""
    return audience_overview(conn, now=request.app.state.pipeline.clock())


@router.get(
    "/{audience_id}/trend", response_model=SizeTrendOut, summary="The audience's size over time"
)
def trend(
    audience_id: str,
    request: Request,
    conn: ConnectionDep,
    _: Reader,
    days: Annotated[int, Query(ge=1, le=KEEP_DAYS, description="How many days back.")] = 7,
) -> dict[str, Any]:
    """Hourly size snapshots (taken by the worker while `tessera serve` or `tessera worker`
    runs) of the last `days` days."""
    now = request.app.state.pipeline.clock()
    points = size_trend(conn, audience_id=audience_id, since=now - timedelta(days=days))
    size = sizes_of(conn, [audience_id]).get(audience_id, 0)
    return {"audience_id": audience_id, "size": size, "points": points}


@router.get(
    "/{audience_id}/changes",
    response_model=DailyChangesOut,
    summary="The audience's entries and exits per day",
)
def changes(
    audience_id: str,
    request: Request,
    conn: ConnectionDep,
    _: Reader,
    days: Annotated[
        int, Query(ge=1, le=400, description="How many days, today (UTC) included.")
    ] = 30,
) -> dict[str, Any]:
    """Entries and exits per UTC day; every day of the range is present, 0 when nothing
    happened."""
    found = daily_changes(
        conn, audience_id=audience_id, days=days, now=request.app.state.pipeline.clock()
    )
    return {"audience_id": audience_id, "days": found}
