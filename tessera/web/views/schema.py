"""The Schema pages: the events Tessera has seen with their counts and when each was last
seen, an event's properties with their observed types, and the traits and context fields
people filter on. All read from the catalog the processor keeps (tessera/schema)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from tessera.api.deps import ConnectionDep
from tessera.errors import BadRequest
from tessera.schema.service import (
    get_event_properties,
    list_context_fields,
    list_event_types,
    list_traits,
)
from tessera.web.frame import Frame, NavItem
from tessera.web.session import WebUser, page

router = APIRouter(prefix="/schema", include_in_schema=False)
NAV = [NavItem("Schema", "/schema", "schema:read", section="Data", order=30, icon="schema")]
Reader = Annotated[WebUser, Depends(page("schema:read"))]
TYPE_LABELS = {
    "track": "Track",
    "page": "Page",
    "screen": "Screen",
    "identify": "Identify",
    "group": "Group",
    "alias": "Alias",
}


def _render(request: Request, template: str, context: dict[str, object]) -> Response:
    frame: Frame = request.app.state.frame
    return frame.render(request, template, {"type_labels": TYPE_LABELS, **context})


@router.get("")
def events_page(request: Request, conn: ConnectionDep, _: Reader) -> Response:
    search = request.query_params.get("q", "").strip()[:100]
    after = request.query_params.get("after") or None
    try:
        found = list_event_types(conn, search=search or None, limit=50, after=after)
    except BadRequest:  # a cursor from a tampered link: start again
        found = list_event_types(conn, search=search or None, limit=50)
    next_href = None
    if found["next_cursor"]:
        next_href = "/schema?" + urlencode(
            {**({"q": search} if search else {}), "after": found["next_cursor"]}
        )
    return _render(
        request,
        "schema/events.html",
        {
            "events": found["items"],
            "left_out": {k: v for k, v in found["left_out"].items() if v},
            "search": search,
            "next_href": next_href,
            "tab": "events",
        },
    )


@router.get("/events/{event_type}")
def event_page(request: Request, conn: ConnectionDep, _: Reader, event_type: str) -> Response:
    name = request.query_params.get("name")
    event = get_event_properties(conn, name=name, event_type=event_type)
    return _render(request, "schema/event.html", {"event": event, "tab": "events"})


@router.get("/traits")
def traits_page(request: Request, conn: ConnectionDep, _: Reader) -> Response:
    return _render(
        request,
        "schema/fields.html",
        {
            "fields": list_traits(conn),
            "tab": "traits",
            "title": "Traits",
            "prefix": "",
            "empty": "No traits yet. They appear when identify calls carry traits, such as "
            "an email or a plan.",
        },
    )


@router.get("/context")
def context_page(request: Request, conn: ConnectionDep, _: Reader) -> Response:
    return _render(
        request,
        "schema/fields.html",
        {
            "fields": list_context_fields(conn),
            "tab": "context",
            "title": "Context fields",
            "prefix": "context.",
            "empty": "No context yet. SDKs send it with every call: the page, the campaign, "
            "the device.",
        },
    )
