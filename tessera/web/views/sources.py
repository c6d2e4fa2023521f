"""Sources: the list with today's activity, creating one (its write key and snippets shown
once), disabling, enabling and re-keying, and the live debugger of one source.

Every change goes through `ingest/sources_admin.py`, the audited services the sources API
calls. The debugger opens on the source's newest events and refusals (`live.recent`, a
bounded read) and follows the API's own stream (`/api/v1/sources/{id}/live`) from the
cursor that read ended at: the stream takes the session cookie on a GET, and only roles
with `sources:manage` (admin, marketer: both read personal data) see either.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from sqlalchemy.engine import Connection
from starlette.responses import Response

from tessera.api.deps import ConnectionDep, IdPath, client_ip
from tessera.errors import BadRequest, Conflict
from tessera.ingest import live, sources, sources_admin
from tessera.ingest.snippets import curl, snippets
from tessera.ingest.sources import MAX_NAME_LENGTH, NewSource
from tessera.ingest.sources_api import base_url
from tessera.web.frame import Frame, NavItem, redirect
from tessera.web.session import WebUser, check_csrf, page

router = APIRouter(prefix="/sources", include_in_schema=False)
NAV = [NavItem("Sources", "/sources", "sources:manage", section="Data", order=10, icon="source")]
Manager = Annotated[WebUser, Depends(page("sources:manage"))]
Csrf = Depends(check_csrf)
PAGE_SIZE = 50
RECENT = 25  # rows the debugger opens with
# A page showing a write key must not be kept by the browser or a proxy.
NO_STORE = {"Cache-Control": "no-store"}
SNIPPET_TABS = (
    ("curl", "curl"),
    ("python", "Python"),
    ("node", "Node.js"),
    ("analytics_js", "analytics.js"),
)


def _render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    frame: Frame = request.app.state.frame
    return frame.render(request, template, context, status=status, headers=headers)


# ---------- the list ----------


def _list_page(
    request: Request,
    conn: Connection,
    *,
    after: int | None = None,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    found = sources.list_source_summaries(conn, after_id=after, limit=PAGE_SIZE + 1)
    shown = found[:PAGE_SIZE]
    for item in shown:
        heard = [t for t in (item["last_event_at"], item["last_refused_at"]) if t is not None]
        item["last_heard_at"] = max(heard) if heard else None
    next_href = f"/sources?after={shown[-1]['id']}" if len(found) > PAGE_SIZE else None
    return _render(
        request,
        "sources/list.html",
        {
            "sources": shown,
            "next_href": next_href,
            "first_page": after is None,
            "form": form or {"name": ""},
            "errors": errors or {},
            "max_name": MAX_NAME_LENGTH,
        },
        status=status,
    )


@router.get("")
def list_page(
    request: Request,
    conn: ConnectionDep,
    _: Manager,
    after: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
) -> Response:
    return _list_page(request, conn, after=after)


def _name_error(exc: BadRequest | Conflict, name: str) -> str:
    if isinstance(exc, Conflict):
        return f"Another source is already named “{name.strip()}”. Pick a name of its own."
    if not name.strip():
        return "Give the source a name, such as “Web shop” or “iOS app”."
    return f"Keep the name under {MAX_NAME_LENGTH} characters."


@router.post("", dependencies=[Csrf])
def create(
    request: Request,
    conn: ConnectionDep,
    user: Manager,
    name: Annotated[str, Form()] = "",
) -> Response:
    try:
        source = sources_admin.create_source(
            conn, actor=user.principal.actor, ip=client_ip(request), name=name
        )
    except (BadRequest, Conflict) as exc:
        errors = {"name": _name_error(exc, name)}
        return _list_page(request, conn, form={"name": name}, errors=errors, status=422)
    return _source_page(request, conn, source.id, key=source)


# ---------- one source ----------


def _pretty(value: Any) -> str:
    """JSON as the debugger shows it: indented, keys in the order they came (as the
    browser's JSON.stringify shows the rows that stream in)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _pretty_excerpt(text: str | None) -> str:
    if not text:
        return "(nothing could be read from the request)"
    try:
        return _pretty(json.loads(text))
    except ValueError:
        return text  # cut short, or not JSON at all: as it came


def _row(kind: str, item: dict[str, Any]) -> dict[str, Any]:
    if kind == "event":
        return {**item, "kind": kind, "pretty": _pretty(item["payload"])}
    return {**item, "kind": kind, "pretty": _pretty_excerpt(item["excerpt"])}


def _source_page(
    request: Request,
    conn: Connection,
    source_id: int,
    *,
    key: NewSource | None = None,
    rotated: bool = False,
) -> Response:
    """The source and its debugger; with `key`, the one page that shows that write key."""
    summary = sources.get_source_summary(conn, source_id=source_id)
    recent = live.recent(conn, source_id=source_id, limit=RECENT)
    base = base_url(request)
    shown_key = None
    if key is not None:
        made = snippets(base, key.write_key).as_dict()
        shown_key = {
            "write_key": key.write_key,
            "snippets": [(name, label, made[name]) for name, label in SNIPPET_TABS],
        }
    return _render(
        request,
        "sources/source.html",
        {
            "source": summary,
            "rows": [_row(kind, item) for kind, item in recent.items],
            "cursor": str(recent.cursor),
            "stream_url": f"/api/v1/sources/{source_id}/live",
            "curl_with_variable": curl(base, None),
            "endpoint": base + "/v1",
            "key": shown_key,
            "rotated": rotated,
        },
        headers=NO_STORE if key is not None else None,
    )


@router.get("/{source_id}")
def source_page(request: Request, conn: ConnectionDep, _: Manager, source_id: IdPath) -> Response:
    return _source_page(request, conn, source_id)


def _set_enabled(
    request: Request, conn: Connection, user: WebUser, source_id: int, on: bool
) -> str:
    source = sources_admin.set_source_enabled(
        conn,
        actor=user.principal.actor,
        ip=client_ip(request),
        source_id=source_id,
        enabled=on,
        write_keys=request.app.state.write_keys,
    )
    return source.name


@router.post("/{source_id}/disable", dependencies=[Csrf])
def disable(request: Request, conn: ConnectionDep, user: Manager, source_id: IdPath) -> Response:
    name = _set_enabled(request, conn, user, source_id, False)
    return redirect(
        f"/sources/{source_id}",
        flash=f"“{name}” is disabled: its events are refused until you enable it again.",
    )


@router.post("/{source_id}/enable", dependencies=[Csrf])
def enable(request: Request, conn: ConnectionDep, user: Manager, source_id: IdPath) -> Response:
    name = _set_enabled(request, conn, user, source_id, True)
    return redirect(f"/sources/{source_id}", flash=f"“{name}” is enabled: it accepts events again.")


@router.post("/{source_id}/write-key", dependencies=[Csrf])
def rotate_key(request: Request, conn: ConnectionDep, user: Manager, source_id: IdPath) -> Response:
    source = sources_admin.rotate_write_key(
        conn,
        actor=user.principal.actor,
        ip=client_ip(request),
        source_id=source_id,
        write_keys=request.app.state.write_keys,
    )
    return _source_page(request, conn, source_id, key=source, rotated=True)


def SCREENSHOTS(conn: Connection) -> list[tuple[str, str]]:
    """The demo's source (the one with events), or else the first."""
    found = sources.list_sources(conn)
    demo = next((s for s in found if s.name == "demo"), found[0] if found else None)
    return [] if demo is None else [("source", f"/sources/{demo.id}")]
