"""One person's 360° page at /people/{ref}: who they are, each trait with where it came
from, the identity graph and the merges that built it (with Unmerge), computed traits,
audiences, consent, accounts, and a live timeline of their events.

`ref` is what the API takes: a profile id or TYPE:VALUE; anything but the surviving id
redirects to it, so the page has one address. Every read goes through `profiles/service.py`,
the API's own functions, so analysts see personal data masked exactly as the API masks it.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Form, Query, Request
from sqlalchemy.engine import Connection
from starlette.responses import RedirectResponse, Response

from tessera.api.deps import MAX_ID, ConnectionDep, client_ip
from tessera.errors import BadRequest, NotFound
from tessera.identity.config import IdentityRules
from tessera.identity.models import identities, profile_merges
from tessera.processor import Pipeline
from tessera.profiles import service, timeline, views
from tessera.profiles.models import profiles
from tessera.web.frame import Frame, NavItem, redirect
from tessera.web.session import WebUser, check_csrf, page
from tessera.web.views import profile_display as display
from tessera.web.views.profile_graph import layout

# Reached from search results, links and its URL; the People list owns the sidebar entry.
router = APIRouter(prefix="/people", include_in_schema=False)
NAV: list[NavItem] = []
Reader = Annotated[WebUser, Depends(page("profiles:read"))]
Writer = Annotated[WebUser, Depends(page("profiles:write"))]
PAGE_SIZE = 30
TEMPLATE = "profile/profile.html"
TextQuery = Annotated[str, Query(max_length=200)]


def _frame(request: Request) -> Frame:
    frame: Frame = request.app.state.frame
    return frame


def _resolve(conn: Connection, request: Request, ref: str, user: WebUser) -> str:
    rules: IdentityRules = request.app.state.identity_rules
    return service.resolve_for(conn, ref, rules, role=user.role)


def _filters(kind: str, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """The timeline's filters as given, and an error for a type we do not know."""
    filters = {"type": kind.strip(), "name": name.strip()}
    errors = {}
    if filters["type"] and filters["type"] not in display.EVENT_TYPES:
        errors["type"] = "Pick a type from the list."
        filters["type"] = ""
    return filters, errors


def _timeline(
    conn: Connection,
    profile_id: str,
    user: WebUser,
    filters: dict[str, str],
    cursor: str | None,
) -> dict[str, Any]:
    """What the timeline's blocks need: a page of events, the link to the next one, and
    (on the first page) where the live poll starts."""
    found = service.list_events_for(
        conn,
        profile_id,
        role=user.role,
        types=[filters["type"]] if filters["type"] else None,
        names=[filters["name"]] if filters["name"] else None,
        cursor=cursor,
        limit=PAGE_SIZE,
    )
    kept = {key: value for key, value in filters.items() if value}
    base = f"/people/{profile_id}"
    more = None
    if found["next_cursor"]:
        more = f"{base}?{urlencode({**kept, 'cursor': found['next_cursor']})}"
    poll = None
    if cursor is None:
        after = timeline.latest_event_seq(conn, profile_id)
        poll = f"{base}/timeline/new?{urlencode({**kept, 'after': after})}"
    return {
        "events": [display.event(item) for item in found["items"]],
        "more_href": more,
        "poll_href": poll,
        "filters": filters,
        "filtered": bool(kept),
        "paged": cursor is not None,
        "profile_id": profile_id,
    }


@router.get("/{ref}")
def profile_page(
    ref: str,
    *,
    request: Request,
    conn: ConnectionDep,
    user: Reader,
    type: TextQuery = "",
    name: TextQuery = "",
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    unmerged: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    profile_id = _resolve(conn, request, ref, user)
    if profile_id != ref:
        # A merged-away id or TYPE:VALUE: one address per person (and no email in it).
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"/people/{profile_id}{query}", status_code=302)
    filters, errors = _filters(type, name)
    context = _timeline(conn, profile_id, user, filters, cursor or None)
    target = request.headers.get("hx-target")
    if target in ("timeline", "timeline-more"):
        # The next page for the infinite scroll, or the card after a filter changed.
        block = "timeline_more" if target == "timeline-more" else "timeline"
        context.update(errors=errors, names=timeline.event_names(conn, profile_id))
        return _frame(request).render(request, TEMPLATE, context, block=block)
    memberships = getattr(request.app.state, "profile_audiences", None)
    profile = service.profile_for(conn, profile_id, role=user.role, memberships=memberships)
    graph = service.identity_graph_for(conn, profile_id, role=user.role)
    context.update(
        errors=errors,
        names=timeline.event_names(conn, profile_id),
        profile=profile,
        head=display.header(profile),
        traits=display.traits(profile, views.trait_origins(conn, profile_id)),
        drawing=layout(graph, profile_id),
        identifiers=graph["identifiers"],
        merges=[display.merge(item) for item in reversed(graph["merges"])],
        may_unmerge=user.may("profiles:write"),
        split=_split(conn, request, user, profile_id, unmerged),
    )
    return _frame(request).render(request, TEMPLATE, context)


def _split(
    conn: Connection, request: Request, user: WebUser, profile_id: str, restored: str | None
) -> list[dict[str, Any]] | None:
    """After an unmerge: the two profiles it left, each with its header, to link to."""
    if not restored or restored == profile_id:
        return None
    try:
        restored_id = _resolve(conn, request, restored, user)
        pair = [
            service.profile_for(conn, pid, role=user.role, memberships=None)
            for pid in (profile_id, restored_id)
        ]
    except (NotFound, BadRequest):
        return None  # a hand-edited address: show the page without the notice
    return [display.header(body) for body in pair] if restored_id != profile_id else None


@router.get("/{ref}/timeline/new")
def new_events(
    ref: str,
    *,
    request: Request,
    conn: ConnectionDep,
    user: Reader,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)],
    type: TextQuery = "",
    name: TextQuery = "",
) -> Response:
    """The live timeline's poll: the events that arrived since position `after`, above a
    new poller that asks after them. 204 (htmx swaps nothing) when none came.

    Why a poll and not server-sent events: the processor commits in another process (or
    another server behind a load balancer), so nothing tells this one that an event was
    attributed; a stream would query the store on a timer anyway, while also holding a
    connection and a thread per open page. A poll every 1.5 s is one range read on
    `ix_event_profiles_profile_id_seq` that returns nothing most of the time, keeps no state
    on the server, survives restarts, and needs no htmx extension."""
    profile_id = _resolve(conn, request, ref, user)
    filters, _ = _filters(type, name)
    found = service.list_new_events_for(
        conn,
        profile_id,
        role=user.role,
        after_seq=after,
        types=[filters["type"]] if filters["type"] else None,
        names=[filters["name"]] if filters["name"] else None,
    )
    if found["latest_seq"] == after:
        return Response(status_code=204)
    kept = {key: value for key, value in filters.items() if value}
    poll = f"/people/{profile_id}/timeline/new?{urlencode({**kept, 'after': found['latest_seq']})}"
    context = {
        "poll_href": poll,
        "new_events": [display.event(item) for item in found["items"]],
    }
    return _frame(request).render(request, "profile/live.html", context)


@router.post("/{ref}/unmerge", dependencies=[Depends(check_csrf)])
def unmerge(
    ref: str,
    request: Request,
    conn: ConnectionDep,
    user: Writer,
    merge_id: Annotated[int, Form(ge=1, le=MAX_ID)],
) -> Response:
    """Undo a wrong merge with the API's audited unmerge, then show both profiles."""
    pipeline: Pipeline = request.app.state.pipeline
    profile_id = _resolve(conn, request, ref, user)
    try:
        done = service.unmerge_profile(
            conn,
            pipeline,
            profile_id=profile_id,
            merge_id=merge_id,
            actor=user.principal.actor,
            ip=client_ip(request),
        )
    except NotFound:
        # Someone undid it first, or the page was stale: say so on the page itself.
        return redirect(
            f"/people/{profile_id}",
            flash="That merge is no longer part of this profile; it may have been undone "
            "already. The merge history below is up to date.",
            kind="error",
        )
    replayed = done["events_replayed"]
    return redirect(
        f"/people/{profile_id}?{urlencode({'unmerged': done['restored_id']})}",
        flash=(
            f"Unmerged: {done['restored_id']} is a profile of its own again. "
            f"{replayed:,} {'events were' if replayed != 1 else 'event was'} replayed to "
            "derive both again."
        ),
    )


def SCREENSHOTS(conn: Connection) -> list[tuple[str, str, int]]:
    """An identified person with merges and the most events, at desktop and phone width."""
    merged = (
        sa.select(profiles.c.id)
        .select_from(profile_merges.join(profiles, profiles.c.id == profile_merges.c.survivor_id))
        .where(
            profiles.c.merged_into.is_(None),
            sa.exists().where(
                identities.c.profile_id == profiles.c.id, identities.c.type == "email"
            ),
        )
        .order_by(profiles.c.event_count.desc(), profiles.c.id)
        .limit(1)
    )
    busiest = (
        sa.select(profiles.c.id)
        .where(profiles.c.merged_into.is_(None))
        .order_by(profiles.c.event_count.desc(), profiles.c.id)
        .limit(1)
    )
    profile_id = conn.execute(merged).scalar() or conn.execute(busiest).scalar()
    if profile_id is None:
        return []
    path = f"/people/{profile_id}"
    return [("person", path, 1280), ("person-phone", path, 390)]
