"""Computed traits: the list (what each computes, backfill progress, the audiences that use
it), one trait with its form, and creating, changing and deleting them with the same audited
services as the API. The form's event filter is the builder's island (static/audiences.js).
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from sqlalchemy.engine import Connection
from starlette.responses import Response

from tessera.api.deps import ConnectionDep, client_ip
from tessera.audiences import admin, service
from tessera.audiences.describe import describe_computed_trait
from tessera.audiences.overview import computed_trait_overview
from tessera.conditions import COMPARISON_OPS
from tessera.errors import BadRequest, Conflict, HTTPError, InvalidDefinition, NotFound
from tessera.profiles.computed import EVENT_TYPES, KINDS, PROPERTY_KINDS
from tessera.web.frame import Frame, NavItem, redirect
from tessera.web.session import WebUser, check_csrf, page
from tessera.web.views.audience_builder import attempt, seen_events
from tessera.web.views.audiences import message

router = APIRouter(prefix="/computed-traits", include_in_schema=False)
NAV = [NavItem("Computed traits", "/computed-traits", "audiences:read", "Customers", 35, "trait")]
Reader = Annotated[WebUser, Depends(page("audiences:read"))]
Writer = Annotated[WebUser, Depends(page("audiences:write"))]
Csrf = Depends(check_csrf)
PAGE = 50
KIND_LABELS = {
    "count": "Count: how many events",
    "sum": "Sum of a property",
    "avg": "Average of a property",
    "min": "Lowest value of a property",
    "max": "Highest value of a property",
    "first": "First value of a property",
    "last": "Latest value of a property",
    "most_frequent": "Most frequent value of a property",
    "unique_list": "Distinct values of a property (a list)",
    "first_time": "Time of the first event",
    "last_time": "Time of the latest event",
}
EVENT_TYPE_LABELS = {
    "": "Any call",
    "track": "Track events (by name)",
    "page": "Page views",
    "screen": "Screen views",
    "identify": "Identify calls (their traits)",
    "group": "Group calls (account traits)",
}
# Where a definition error's path points, the form field that shows it.
FIELDS = (
    ("$.name", "name"),
    ("$.kind", "kind"),
    ("$.event.name", "event_name"),
    ("$.event.type", "event_type"),
    ("$.event.where", "where"),
    ("$.event", "event_name"),
    ("$.property", "property"),
    ("$.window", "window"),
    ("$.limit", "limit"),
)
FORM_KEYS = (
    "name", "kind", "event_type", "event_name", "property", "window_unit", "window_amount",
    "limit", "where",
)  # fmt: skip


def _render(request: Request, template: str, context: dict[str, Any], **kw: Any) -> Response:
    frame: Frame = request.app.state.frame
    return frame.render(request, template, context, **kw)


# -- the list ---------------------------------------------------------------------------


@router.get("")
def list_page(request: Request, conn: ConnectionDep, user: Reader) -> Response:
    after = request.query_params.get("after", "")
    found = computed_trait_overview(conn)
    definitions = {t["name"]: t["definition"] for t in service.list_computed_traits(conn)}
    for trait in found:
        trait["words"] = describe_computed_trait(definitions.get(trait["name"], {}))
    if after:  # keyset on the name, the list's order
        found = [trait for trait in found if trait["name"] > after]
    shown = found[:PAGE]
    next_href = None
    if len(found) > PAGE:
        next_href = "/computed-traits?" + urlencode({"after": shown[-1]["name"]})
    return _render(
        request,
        "computed_traits/list.html",
        {
            "traits": shown,
            "next_href": next_href,
            "moving": any(trait["status"] != "ready" for trait in shown),
            "self_href": str(request.url.path)
            + (f"?{request.url.query}" if request.url.query else ""),
            "may_write": user.may("audiences:write"),
            "paged": bool(after),
        },
        block="table",
    )


# -- the form ---------------------------------------------------------------------------


def _form_of(definition: dict[str, Any]) -> dict[str, str]:
    """The form's fields for a stored definition."""
    event = definition.get("event") or {}
    window = definition.get("window") or {}
    unit = next(iter(window), "")
    return {
        "name": definition.get("name", ""),
        "kind": definition.get("kind", "count"),
        "event_type": event.get("type", ""),
        "event_name": event.get("name", ""),
        "property": definition.get("property", ""),
        "window_unit": unit,
        "window_amount": str(window.get(unit, "30")) if unit else "30",
        "limit": str(definition.get("limit", "10")),
        "where": json.dumps(event["where"]) if "where" in event else "",
    }


def _document(form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The definition the form describes, or the errors of fields it cannot read."""
    errors: dict[str, str] = {}
    kind = form["kind"]
    document: dict[str, Any] = {"name": form["name"].strip(), "kind": kind}
    event: dict[str, Any] = {}
    if form["event_name"].strip():
        event["name"] = form["event_name"].strip()
    if form["event_type"]:
        event["type"] = form["event_type"]
    if form["where"].strip():
        try:
            event["where"] = json.loads(form["where"])
        except json.JSONDecodeError as exc:
            errors["where"] = f"The filter is not valid JSON ({exc.msg}, column {exc.colno})."
    if event:
        document["event"] = event
    if kind in PROPERTY_KINDS:
        document["property"] = form["property"].strip()
    if form["window_unit"]:
        amount = form["window_amount"].strip()
        if not amount.isdigit():
            errors["window"] = f"Give the window as a whole number of {form['window_unit']}."
        else:
            document["window"] = {form["window_unit"]: int(amount)}
    if kind == "unique_list" and form["limit"].strip():
        if not form["limit"].strip().isdigit():
            errors["limit"] = "Give the number of values to keep as a whole number, 1 to 100."
        else:
            document["limit"] = int(form["limit"].strip())
    return document, errors


def _field_errors(exc: HTTPError) -> tuple[dict[str, str], dict[str, str] | None]:
    """Which field a refused definition's error belongs to; a filter's error keeps its path
    inside the filter, for the filter editor."""
    text = message(exc)
    if not isinstance(exc, InvalidDefinition):
        return ({"name": text} if "named" in exc.message else {"general": text}), None
    path = exc.path
    for prefix, field in FIELDS:
        if path == prefix or path.startswith((prefix + ".", prefix + "[")):
            if field == "where":
                inner = "$" + path[len(prefix) :]
                return {"where": text}, {"message": text, "path": inner}
            return {field: text}, None
    return {"general": text}, None


def _form_page(
    request: Request,
    conn: Connection,
    *,
    trait: dict[str, Any] | None,
    form: dict[str, str],
    user: WebUser,
    errors: dict[str, str] | None = None,
    where_error: dict[str, str] | None = None,
    status: int = 200,
    block: str | None = None,
) -> Response:
    """The form (and, for a trait, its status); an htmx poll gets `block` only."""
    where: Any = None
    if form["where"].strip():
        try:
            where = json.loads(form["where"])
        except json.JSONDecodeError:
            where = None
    data = {
        "kind": form["kind"],
        "eventName": form["event_name"],
        "eventType": form["event_type"],
        "windowUnit": form["window_unit"],
        "where": where,
        "error": where_error,
        "propertyKinds": sorted(PROPERTY_KINDS),
        "propertiesUrl": "/audiences/catalogue/properties",
        "catalogue": {
            "events": seen_events(conn),
            "traits": [],
            "computed": [],
            "audiences": [],
            "consent": [],
        },
        "operators": {"filter": list(COMPARISON_OPS), "trait": list(COMPARISON_OPS),
                      "count": [], "time": [], "kinds": {}},
    }  # fmt: skip
    overview = None
    if trait is not None:
        overview = next(
            (item for item in computed_trait_overview(conn) if item["name"] == trait["name"]), None
        )
    return _render(
        request,
        "computed_traits/form.html",
        {
            "trait": trait,
            "overview": overview,
            "words": describe_computed_trait(trait["definition"]) if trait else "",
            "form": form,
            "errors": errors or {},
            "data": data,
            "kinds": [(kind, KIND_LABELS[kind]) for kind in KINDS],
            "event_types": [
                (kind, EVENT_TYPE_LABELS[kind])
                for kind in ("", *EVENT_TYPES)
                if kind in EVENT_TYPE_LABELS
            ],
            "may_write": user.may("audiences:write"),
        },
        status=status,
        block=block,
    )


def _blank() -> dict[str, str]:
    return {
        "name": "", "kind": "count", "event_type": "", "event_name": "", "property": "",
        "window_unit": "", "window_amount": "30", "limit": "10", "where": "",
    }  # fmt: skip


@router.get("/new")
def new_page(request: Request, conn: ConnectionDep, user: Writer) -> Response:
    return _form_page(request, conn, trait=None, form=_blank(), user=user)


@router.get("/{name}")
def trait_page(request: Request, name: str, conn: ConnectionDep, user: Reader) -> Response:
    trait = service.get_computed_trait(conn, name=name)
    if trait["implicit"]:
        raise NotFound(f"{name!r} belongs to an audience's event condition; see the audience")
    form = _form_of(trait["definition"])
    return _form_page(request, conn, trait=trait, form=form, user=user, block="status")


async def _posted(request: Request) -> dict[str, str]:
    posted = await request.form()
    return {key: str(posted.get(key, "") or "") for key in FORM_KEYS}


@router.post("", dependencies=[Csrf])
async def create_trait(request: Request, conn: ConnectionDep, user: Writer) -> Response:
    form = await _posted(request)
    return _save(request, conn, user, form, trait=None)


@router.post("/{name}", dependencies=[Csrf])
async def update_trait(request: Request, name: str, conn: ConnectionDep, user: Writer) -> Response:
    form = await _posted(request)
    form["name"] = name  # a computed trait keeps its name
    return _save(request, conn, user, form, trait=service.get_computed_trait(conn, name=name))


def _save(
    request: Request,
    conn: Connection,
    user: WebUser,
    form: dict[str, str],
    *,
    trait: dict[str, Any] | None,
) -> Response:
    document, errors = _document(form)
    where_error = None
    if not errors:
        try:
            with attempt(conn):
                if trait is None:
                    saved = admin.create_computed_trait(
                        conn, actor=user.principal.actor, ip=client_ip(request), document=document
                    )
                else:
                    saved = admin.update_computed_trait(
                        conn,
                        actor=user.principal.actor,
                        ip=client_ip(request),
                        name=trait["name"],
                        document=document,
                    )
        except (BadRequest, Conflict) as exc:
            errors, where_error = _field_errors(exc)
        else:
            verb = "defined" if trait is None else "saved"
            return redirect(
                f"/computed-traits/{saved['name']}",
                flash=f"{saved['name']} is {verb}; Tessera computes it from every event so far.",
            )
    return _form_page(
        request,
        conn,
        trait=trait,
        form=form,
        user=user,
        errors=errors,
        where_error=where_error,
        status=422,
    )


@router.post("/{name}/delete", dependencies=[Csrf])
def delete_trait(request: Request, name: str, conn: ConnectionDep, user: Writer) -> Response:
    try:
        admin.delete_computed_trait(
            conn, actor=user.principal.actor, ip=client_ip(request), name=name
        )
    except (BadRequest, Conflict) as exc:
        return redirect(f"/computed-traits/{name}", flash=message(exc), kind="error")
    return redirect("/computed-traits", flash=f"The computed trait {name} is deleted.")


def SCREENSHOTS(conn: Connection) -> list[tuple[str, str]]:
    """The form, and one computed trait of the demo data."""
    shots = [("computed-traits-new", "/computed-traits/new")]
    found = service.list_computed_traits(conn)
    if found:
        shots.append(("computed-trait", f"/computed-traits/{found[0]['name']}"))
    return shots
