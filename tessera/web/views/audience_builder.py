"""The audience builder: create and edit an audience with the visual builder (an Alpine
island, static/audiences.js) or its JSON, a live preview of who would be in it, and the
pickers' catalogue of what Tessera has seen.

The island posts the same JSON document the API takes; the preview calls the same service
as `POST /api/v1/audiences/preview`, and saving the same audited service as the API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Connection
from starlette.responses import Response

from tessera.activation.models import destinations
from tessera.api.deps import ConnectionDep, client_ip
from tessera.audiences import admin, service
from tessera.audiences.catalog import references
from tessera.audiences.language import COUNT_OPS, KIND_OPERATORS, OPERATORS
from tessera.audiences.models import audiences
from tessera.audiences.preview import preview_audience
from tessera.audiences.schemas import MAX_DESCRIPTION, PreviewIn
from tessera.conditions import COMPARISON_OPS
from tessera.errors import BadRequest, Conflict, HTTPError, InvalidDefinition, NotFound
from tessera.schema.service import get_event_properties, list_event_types, list_traits
from tessera.web.frame import Frame, NavItem, redirect
from tessera.web.session import WebUser, check_csrf, page
from tessera.web.views.audiences import message, now_of, people_labels

router = APIRouter(prefix="/audiences", include_in_schema=False)
NAV: list[NavItem] = []
Reader = Annotated[WebUser, Depends(page("audiences:read"))]
Writer = Annotated[WebUser, Depends(page("audiences:write"))]
Csrf = Depends(check_csrf)
SAMPLE = 12
PICKER_EVENTS = 1000  # the pickers list this many event names (the catalogue keeps 10,000)


@contextmanager
def attempt(conn: Connection) -> Iterator[None]:
    """A save that may be refused, in a savepoint on PostgreSQL: a refusal there (a name
    taken by a concurrent insert) aborts the transaction, and the page that shows the
    error still has to read. SQLite leaves the transaction usable, and pysqlite's
    savepoints would commit the outer transaction early."""
    if conn.dialect.name == "postgresql":
        with conn.begin_nested():
            yield
    else:
        yield


COMMON_CONSENT = ("marketing", "analytics", "advertising", "email", "sms", "personalization")


# -- what the pickers offer --------------------------------------------------------------


def _consent_categories(conn: Connection) -> list[str]:
    """Categories people already use in audiences and destinations, and the usual ones;
    read from definitions (a few rows), never from the profiles' consent."""
    found = set(COMMON_CONSENT)
    for (definition,) in conn.execute(sa.select(audiences.c.definition)):
        found |= references(orjson.loads(definition), "consent")
    for (categories,) in conn.execute(sa.select(destinations.c.consent_categories)):
        found |= {c for c in orjson.loads(categories) if isinstance(c, str)}
    return sorted(found)


def _first_type(field: dict[str, Any]) -> str:
    """The type seen most on a path (the schema lists them most seen first)."""
    types = field.get("types") or []
    return str(types[0]["type"]) if types else ""


def seen_events(conn: Connection) -> list[dict[str, Any]]:
    """Track event names Tessera has seen (event conditions match track events by name),
    most frequent first, from the schema catalogue (bounded; never the event log)."""
    found = list_event_types(conn, limit=PICKER_EVENTS)["items"]
    named = [item for item in found if item["type"] == "track" and item["name"]]
    named.sort(key=lambda item: (-item["count"], item["name"]))
    return [{"name": item["name"], "hint": f"{item['count']:,} seen"} for item in named]


def seen_properties(conn: Connection, *, event: str, event_type: str) -> list[dict[str, str]]:
    """The property paths seen on an event (a track event by name, other calls by type),
    with the type seen most; none for an event Tessera has not seen."""
    try:
        found = get_event_properties(conn, name=event or None, event_type=event_type)
    except (NotFound, BadRequest):
        return []
    return [{"name": field["path"], "type": _first_type(field)} for field in found["properties"]]


def catalogue(conn: Connection, *, exclude_audience: str | None = None) -> dict[str, Any]:
    """What the builder's pickers list: computed traits with their kinds, the other
    audiences, consent categories, and the event and trait names Tessera has seen."""
    computed = [
        {"name": trait["name"], "kind": trait["definition"]["kind"]}
        for trait in service.list_computed_traits(conn)
    ]
    others = [
        {"id": row.id, "name": row.name}
        for row in conn.execute(
            sa.select(audiences.c.id, audiences.c.name).order_by(audiences.c.name)
        )
        if row.id != exclude_audience
    ]
    return {
        "events": seen_events(conn),
        "traits": [{"name": t["path"], "type": _first_type(t)} for t in list_traits(conn)],
        "computed": computed,
        "audiences": others,
        "consent": _consent_categories(conn),
    }


def builder_data(
    conn: Connection,
    *,
    definition: Any,
    audience_id: str | None,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything the island starts from, embedded in the page as JSON."""
    return {
        "definition": definition,
        "audienceId": audience_id,
        "error": error,
        "catalogue": catalogue(conn, exclude_audience=audience_id),
        "operators": {
            "trait": list(OPERATORS),
            "count": list(COUNT_OPS),
            "time": list(KIND_OPERATORS["first_time"]),
            "filter": list(COMPARISON_OPS),
            "kinds": {kind: list(ops) for kind, ops in KIND_OPERATORS.items()},
        },
        "previewUrl": "/audiences/preview",
        "propertiesUrl": "/audiences/catalogue/properties",
    }


# -- the builder page ----------------------------------------------------------------------


def _builder(
    request: Request,
    conn: Connection,
    *,
    audience: dict[str, Any] | None,
    form: dict[str, str],
    definition: Any,
    errors: dict[str, str] | None = None,
    definition_error: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    frame: Frame = request.app.state.frame
    audience_id = audience["id"] if audience else None
    data = builder_data(
        conn, definition=definition, audience_id=audience_id, error=definition_error
    )
    text = form.get("definition")
    if text is None:
        text = "" if definition is None else json.dumps(definition, indent=2, ensure_ascii=False)
    return frame.render(
        request,
        "audiences/builder.html",
        {
            "audience": audience,
            "form": {**form, "definition": text},
            "errors": errors or {},
            "definition_error": definition_error,
            "data": data,
        },
        status=status,
    )


@router.get("/new")
def new_page(request: Request, conn: ConnectionDep, _: Writer) -> Response:
    return _builder(
        request, conn, audience=None, form={"name": "", "description": ""}, definition=None
    )


@router.get("/{audience_id}/edit")
def edit_page(request: Request, audience_id: str, conn: ConnectionDep, _: Writer) -> Response:
    audience = service.get_audience(conn, audience_id=audience_id)
    form = {"name": audience["name"], "description": audience["description"]}
    return _builder(request, conn, audience=audience, form=form, definition=audience["definition"])


def _read_definition(text: str) -> tuple[Any, dict[str, str] | None]:
    """The posted definition, or the error to show: a JSON mistake with its line and
    column, in words."""
    if not text.strip():
        return None, {"message": "Add at least one condition: who should be in the audience?",
                      "path": "$"}  # fmt: skip
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, {
            "message": f"The JSON is not valid: {exc.msg} at line {exc.lineno}, column "
            f"{exc.colno}. Fix it in the JSON tab.",
            "path": "json",
        }


def _save_errors(exc: HTTPError) -> tuple[dict[str, str], dict[str, str] | None]:
    """Field errors (name, description) and the definition's error, from a refused save."""
    if isinstance(exc, InvalidDefinition):
        return {}, {"message": message(exc), "path": exc.path}
    if exc.fields.get("field") == "name" or "audience named" in exc.message:
        return {"name": message(exc)}, None
    return {}, {"message": message(exc), "path": "$"}


def _check_form(name: str, description: str) -> dict[str, str]:
    errors = {}
    if not name.strip():
        errors["name"] = "Give the audience a name, so people can find it in lists."
    elif len(name) > 200:
        errors["name"] = f"Keep the name to 200 characters; it has {len(name)}."
    if len(description) > MAX_DESCRIPTION:
        errors["description"] = (
            f"Keep the description to {MAX_DESCRIPTION:,} characters; it has {len(description):,}."
        )
    return errors


@router.post("", dependencies=[Csrf])
def create_audience(
    request: Request,
    *,
    conn: ConnectionDep,
    user: Writer,
    name: Annotated[str, Form()] = "",
    description: Annotated[str, Form()] = "",
    definition: Annotated[str, Form()] = "",
) -> Response:
    form = {"name": name, "description": description, "definition": definition}
    document, definition_error = _read_definition(definition)
    errors = _check_form(name, description)
    if not errors and definition_error is None:
        try:
            with attempt(conn):
                created = admin.create_audience(
                    conn,
                    actor=user.principal.actor,
                    ip=client_ip(request),
                    name=name.strip(),
                    description=description.strip(),
                    document=document,
                )
        except (BadRequest, Conflict) as exc:
            errors, definition_error = _save_errors(exc)
        else:
            return redirect(
                f"/audiences/{created['id']}",
                flash=f"The audience “{created['name']}” is saved; Tessera is finding its members.",
            )
    return _builder(
        request,
        conn,
        audience=None,
        form=form,
        definition=document,
        errors=errors,
        definition_error=definition_error,
        status=422,
    )


@router.post("/preview", dependencies=[Csrf])
def preview(request: Request, body: PreviewIn, conn: ConnectionDep, user: Reader) -> Response:
    """The draft's size and some of its people, or the first problem with its JSON path.
    Always 200: a draft being typed is not a failed request."""
    try:
        found = preview_audience(conn, document=body.definition, now=now_of(request))
    except InvalidDefinition as exc:
        return JSONResponse({"ok": False, "error": {"message": message(exc), "path": exc.path}})
    except BadRequest as exc:
        return JSONResponse({"ok": False, "error": {"message": message(exc), "path": "$"}})
    labels = people_labels(conn, found["sample"][:SAMPLE], user)
    return JSONResponse(
        {
            "ok": True,
            "size": found["size"],
            "exact": found["exact"],
            "margin": found.get("margin"),
            "profiles": found["profiles"],
            "sample": [{"id": pid, **labels[pid]} for pid in found["sample"][:SAMPLE]],
        }
    )


@router.get("/catalogue/properties")
def event_properties(
    conn: ConnectionDep,
    _: Reader,
    event: Annotated[str, Query(max_length=255)] = "",
    event_type: Annotated[str, Query(alias="type", max_length=16)] = "track",
) -> Response:
    """The properties seen on an event, with their types, for the `where` pickers."""
    found = seen_properties(conn, event=event, event_type=event_type)
    return JSONResponse({"event": event, "type": event_type, "properties": found})


@router.post("/{audience_id}", dependencies=[Csrf])
def update_audience(
    request: Request,
    *,
    audience_id: str,
    conn: ConnectionDep,
    user: Writer,
    name: Annotated[str, Form()] = "",
    description: Annotated[str, Form()] = "",
    definition: Annotated[str, Form()] = "",
) -> Response:
    audience = service.get_audience(conn, audience_id=audience_id)
    form = {"name": name, "description": description, "definition": definition}
    document, definition_error = _read_definition(definition)
    errors = _check_form(name, description)
    if not errors and definition_error is None:
        try:
            with attempt(conn):
                changed = admin.update_audience(
                    conn,
                    actor=user.principal.actor,
                    ip=client_ip(request),
                    audience_id=audience_id,
                    name=name.strip(),
                    description=description.strip(),
                    document=document,
                )
        except (BadRequest, Conflict) as exc:
            errors, definition_error = _save_errors(exc)
        else:
            rebuilding = changed["definition"] != audience["definition"]
            note = " Tessera is finding its members again." if rebuilding else ""
            return redirect(
                f"/audiences/{audience_id}", flash=f"“{changed['name']}” is saved.{note}"
            )
    return _builder(
        request,
        conn,
        audience=audience,
        form=form,
        definition=document,
        errors=errors,
        definition_error=definition_error,
        status=422,
    )
