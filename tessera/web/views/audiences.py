"""Audiences: the list (size, status, a week's trend), one audience (its definition in words,
size over time, entries and exits, members, exports, the destinations it feeds) and its
deletion. The builder that creates and edits them is `audience_builder.py`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Form, Request
from sqlalchemy.engine import Connection
from starlette.responses import Response

from tessera.activation import exports
from tessera.activation.files import FORMATS
from tessera.activation.models import destinations
from tessera.activation.subscriptions import audiences_referenced
from tessera.api.deps import ConnectionDep, client_ip
from tessera.audiences import admin, service
from tessera.audiences.catalog import references
from tessera.audiences.describe import describe_audience
from tessera.audiences.models import audiences
from tessera.audiences.overview import audience_overview
from tessera.audiences.trends import daily_changes, size_trend
from tessera.errors import BadRequest, Conflict, HTTPError, NotFound
from tessera.profiles.masking import mask_traits
from tessera.profiles.views import get_profiles
from tessera.web import saved_views
from tessera.web.frame import Frame, NavItem, redirect
from tessera.web.session import WebUser, check_csrf, page

router = APIRouter(prefix="/audiences", include_in_schema=False)
NAV = [NavItem("Audiences", "/audiences", "audiences:read", "Customers", 30, "audience")]
Reader = Annotated[WebUser, Depends(page("audiences:read"))]
Writer = Annotated[WebUser, Depends(page("audiences:write"))]
Exporter = Annotated[WebUser, Depends(page("exports:create"))]
Csrf = Depends(check_csrf)
PAGE = 50
MEMBERS_PAGE = 25
TREND_DAYS = 30
# Export jobs still moving: the exports block asks again until none is.
MOVING = (exports.QUEUED, exports.RUNNING)


def _render(request: Request, template: str, context: dict[str, Any], **kw: Any) -> Response:
    frame: Frame = request.app.state.frame
    return frame.render(request, template, context, **kw)


def message(exc: HTTPError) -> str:
    """An error's message as a sentence, without the JSON path a definition error starts with."""
    text = exc.message
    path = exc.fields.get("path")
    if isinstance(path, str) and text.startswith(f"{path}: "):
        text = text[len(path) + 2 :]
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def now_of(request: Request) -> datetime:
    clock = request.app.state.pipeline.clock
    moment: datetime = clock()
    return moment


# -- people, as a page shows them -------------------------------------------------------


def people_labels(conn: Connection, ids: list[str], user: WebUser) -> dict[str, dict[str, str]]:
    """A name and an email for each profile id, masked for roles without pii:read as the
    API masks them; an id without either shows as itself."""
    found = get_profiles(conn, ids) if ids else {}
    labels = {}
    for pid in ids:
        body = found.get(pid, {})
        traits = body.get("traits", {})
        if not user.may("pii:read"):
            traits = mask_traits(traits) or {}
        name = traits.get("name") or " ".join(
            str(part) for part in (traits.get("first_name"), traits.get("last_name")) if part
        )
        email = traits.get("email")
        if not email:
            emails = [i["value"] for i in body.get("identities", []) if i["type"] == "email"]
            email = emails[0] if emails and user.may("pii:read") else ""
        labels[pid] = {"name": str(name or ""), "email": str(email or "")}
    return labels


# -- the list ---------------------------------------------------------------------------


def sparkline(points: list[dict[str, Any]], width: int = 96, height: int = 28) -> dict[str, Any]:
    """SVG polyline coordinates of a size trend, and words for screen readers."""
    sizes = [int(point["size"]) for point in points]
    if len(sizes) < 2:
        return {"points": "", "label": "Not enough history for a trend yet"}
    low, high = min(sizes), max(sizes)
    span = (high - low) or 1
    step = width / (len(sizes) - 1)
    coords = " ".join(
        f"{index * step:.1f},{height - 2 - (size - low) / span * (height - 4):.1f}"
        for index, size in enumerate(sizes)
    )
    change = sizes[-1] - sizes[0]
    words = "no change" if change == 0 else f"{'up' if change > 0 else 'down'} {abs(change):,}"
    return {"points": coords, "label": f"{len(sizes)} days: {sizes[0]:,} to {sizes[-1]:,}, {words}"}


SORTS = {
    "newest": ("Newest first", lambda a: (a["created_at"], a["id"]), True),
    "name": ("Name", lambda a: (a["name"].casefold(), a["id"]), False),
    "size": ("Largest first", lambda a: (a["size"], a["id"]), True),
    "updated": ("Recently changed", lambda a: (a["updated_at"], a["id"]), True),
}
STATUSES = {"": "Any status", "live": "Live", "building": "Building"}


@router.get("")
def list_page(request: Request, conn: ConnectionDep, user: Reader) -> Response:
    query = request.query_params
    search = query.get("q", "").strip()
    status = query.get("status", "")
    sort = query.get("sort", "") if query.get("sort", "") in SORTS else "newest"
    after = query.get("after", "")
    found = audience_overview(conn, now=now_of(request))
    total = len(found)
    if search:
        needle = search.casefold()
        found = [a for a in found if needle in a["name"].casefold()]
    if status in ("live", "building"):
        found = [a for a in found if (a["phase"] == "ready") == (status == "live")]
    _, key, descending = SORTS[sort]
    found.sort(key=key, reverse=descending)
    # The cursor is the last id shown: ids are unique, and the whole list is at hand (the
    # overview reads every audience in a fixed number of queries; audiences are hundreds).
    if after:
        ids = [a["id"] for a in found]
        found = found[ids.index(after) + 1 :] if after in ids else []
    shown = found[:PAGE]
    filters = {"q": search, "status": status if status in STATUSES else "", "sort": sort}
    kept = {name: value for name, value in filters.items() if value and value != "newest"}
    next_href = None
    if len(found) > PAGE:
        next_href = "/audiences?" + urlencode({**kept, "after": shown[-1]["id"]})
    for audience in shown:
        audience["spark"] = sparkline(audience["trend"])
    return _render(
        request,
        "audiences/list.html",
        {
            "audiences": shown,
            "total": total,
            "filters": filters,
            "filtered": bool(kept),
            "statuses": list(STATUSES.items()),
            "sorts": [(name, label) for name, (label, _, _) in SORTS.items()],
            "next_href": next_href,
            "moving": any(a["phase"] != "ready" for a in shown),
            "self_href": str(request.url.path)
            + (f"?{request.url.query}" if request.url.query else ""),
            "may_write": user.may("audiences:write"),
            "views": saved_views.list_views(conn, page="/audiences", user_id=user.principal.id),
            "query": saved_views.clean_query(request.url.query),
        },
        block="table",
    )


# -- one audience -----------------------------------------------------------------------


def _audience_names(conn: Connection) -> dict[str, str]:
    return dict(conn.execute(sa.select(audiences.c.id, audiences.c.name)).all())


def feeding(conn: Connection, audience_id: str) -> list[dict[str, Any]]:
    """The destinations whose subscriptions name the audience (destinations are few: people
    create them one by one)."""
    rows = conn.execute(
        sa.select(destinations.c.id, destinations.c.name, destinations.c.type,
                  destinations.c.enabled, destinations.c.subscriptions)
        .order_by(destinations.c.name)
    )  # fmt: skip
    return [
        {"id": row.id, "name": row.name, "type": row.type, "enabled": bool(row.enabled)}
        for row in rows
        if audience_id in audiences_referenced(orjson.loads(row.subscriptions))
    ]


def _members(
    conn: Connection, audience_id: str, cursor: str | None, user: WebUser
) -> dict[str, Any]:
    if cursor and not cursor.startswith("prf_"):
        raise BadRequest(f"cursor {cursor[:40]!r} is not a profile id this page gave out")
    items, last = service.list_members(
        conn, audience_id=audience_id, cursor=cursor or None, limit=MEMBERS_PAGE
    )
    labels = people_labels(conn, [item["profile_id"] for item in items], user)
    for item in items:
        item.update(labels[item["profile_id"]])
    next_href = f"/audiences/{audience_id}?{urlencode({'members_after': last})}" if last else None
    return {"rows": items, "next_href": next_href, "paged": bool(cursor)}


def _status(audience: dict[str, Any], overview: dict[str, Any] | None) -> dict[str, Any]:
    phase = (
        overview["phase"]
        if overview
        else ("ready" if audience["status"] == "ready" else "building")
    )
    progress = overview["progress"] if overview else audience["build"]["progress"]
    return {"phase": phase, "progress": progress, "percent": round(progress * 100)}


def _charts(conn: Connection, audience_id: str, now: datetime) -> dict[str, Any]:
    points = size_trend(conn, audience_id=audience_id, since=now - timedelta(days=TREND_DAYS))
    days = daily_changes(conn, audience_id=audience_id, days=TREND_DAYS, now=now)
    return {
        "trend_labels": [point["at"].astimezone(UTC).strftime("%d %b %H:00") for point in points],
        "trend_sizes": [point["size"] for point in points],
        "day_labels": [day["day"].strftime("%d %b") for day in days],
        "entered": [day["entered"] for day in days],
        "exited": [-day["exited"] for day in days],
        "entered_total": sum(day["entered"] for day in days),
        "exited_total": sum(day["exited"] for day in days),
    }


@router.get("/{audience_id}")
def detail_page(request: Request, audience_id: str, conn: ConnectionDep, user: Reader) -> Response:
    audience = service.get_audience(conn, audience_id=audience_id)
    now = now_of(request)
    overview = next(
        (item for item in audience_overview(conn, now=now) if item["id"] == audience_id), None
    )
    jobs = exports.list_exports(conn, audience_id=audience_id, limit=5)
    names = _audience_names(conn)
    context = {
        "audience": audience,
        "status": _status(audience, overview),
        "words": describe_audience(audience["definition"], audience_names=names),
        "definition_json": orjson.dumps(
            audience["definition"], option=orjson.OPT_INDENT_2
        ).decode(),
        "members": _members(conn, audience_id, request.query_params.get("members_after"), user),
        "charts": _charts(conn, audience_id, now),
        "exports": jobs,
        "exports_moving": any(job["status"] in MOVING for job in jobs),
        "formats": FORMATS,
        "destinations": feeding(conn, audience_id),
        "used_by": [
            {"id": other["id"], "name": other["name"]}
            for other in service.list_audiences(conn)
            if audience_id in references(other["definition"])
        ],
        "may_write": user.may("audiences:write"),
        "may_export": user.may("exports:create"),
        "may_download": user.may("exports:create") and user.may("pii:read"),
    }
    target = request.headers.get("hx-target", "")
    block = {
        "audience-status": "status",
        "audience-exports": "exports",
        "audience-members": "members",
    }
    return _render(request, "audiences/detail.html", context, block=block.get(target))


@router.post("/{audience_id}/exports", dependencies=[Csrf])
def export_audience(
    request: Request,
    audience_id: str,
    conn: ConnectionDep,
    user: Exporter,
    format: Annotated[str, Form()] = "csv",
) -> Response:
    try:
        job = exports.request_export(
            conn,
            audience_id=audience_id,
            fmt=format,
            actor=user.principal.actor,
            ip=client_ip(request),
        )
    except BadRequest as exc:
        return redirect(f"/audiences/{audience_id}#exports", flash=message(exc), kind="error")
    return redirect(
        f"/audiences/{audience_id}#exports",
        flash=f"The {job['format'].upper()} export is queued; its file appears below when ready.",
    )


@router.post("/{audience_id}/delete", dependencies=[Csrf])
def delete_audience(
    request: Request, audience_id: str, conn: ConnectionDep, user: Writer
) -> Response:
    name = service.get_audience(conn, audience_id=audience_id)["name"]
    try:
        admin.delete_audience(
            conn, actor=user.principal.actor, ip=client_ip(request), audience_id=audience_id
        )
    except (Conflict, NotFound) as exc:
        return redirect(f"/audiences/{audience_id}", flash=message(exc), kind="error")
    return redirect("/audiences", flash=f"The audience “{name}” is deleted; its members left it.")


def SCREENSHOTS(conn: Connection) -> list[tuple[str, str]]:
    """One audience of the demo data (the largest), and the builder editing it."""
    found = service.list_audiences(conn)
    shots = [("audiences-new", "/audiences/new")]
    if found:
        largest = max(found, key=lambda a: a["size"])
        shots += [
            ("audience-detail", f"/audiences/{largest['id']}"),
            ("audience-builder", f"/audiences/{largest['id']}/edit"),
        ]
    return shots
