"""The home page: the sign-in form for a visitor, the dashboard for a signed-in person:
events per minute by source, profiles and the share identified, merges today, the largest
audiences, delivery health and the processor's lag, each read from small kept tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from tessera.api.deps import ConnectionDep, public
from tessera.schema.dashboard import dashboard_summary
from tessera.web.frame import Frame, NavItem
from tessera.web.session import OptionalUser
from tessera.web.views.signin import login_form

router = APIRouter(include_in_schema=False)
NAV = [NavItem("Home", "/", "dashboard:read", section="Customers", order=0, icon="home")]
BUCKET_MINUTES = 15  # 96 points for a day: readable, and each still a real count


def events_chart(series: dict[str, Any]) -> dict[str, Any]:
    """The per-minute series summed into 15-minute buckets, one line per source that sent
    anything (the quiet ones would only draw flat lines at zero)."""
    start: datetime = series["start"]
    sources = [source for source in series["sources"] if source["total"]]
    size = len(series["sources"][0]["counts"]) if series["sources"] else 0
    buckets = (size + BUCKET_MINUTES - 1) // BUCKET_MINUTES
    labels = [(start.timestamp() + index * BUCKET_MINUTES * 60) for index in range(buckets)]
    return {
        "labels": [
            datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")
            for moment in labels
        ],
        "datasets": [
            {
                "label": source["name"] or f"source {source['source_id']}",
                "data": [
                    sum(source["counts"][i : i + BUCKET_MINUTES])
                    for i in range(0, size, BUCKET_MINUTES)
                ],
            }
            for source in sources
        ],
        "total": sum(source["total"] for source in series["sources"]),
        "per_minute_now": sum(
            source["counts"][-1] for source in series["sources"] if source["counts"]
        ),
    }


@router.get("/", dependencies=[Depends(public)])
def home(request: Request, conn: ConnectionDep, user: OptionalUser) -> Response:
    if user is None:
        return login_form(request)
    now = datetime.now(UTC)
    summary = dashboard_summary(conn, now=now, include_delivery=user.may("destinations:read"))
    frame: Frame = request.app.state.frame
    return frame.render(
        request,
        "home/home.html",
        {"summary": summary, "events": events_chart(summary["events_per_minute"]), "now": now},
    )
