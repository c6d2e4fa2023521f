"""A destination's delivery log (keyset pages, by status) and its dead letters with their
reasons, replayed one, some or all (asked first, audited, the delivery worker woken)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from tessera.activation import manage, service
from tessera.activation.activity import dead_letter_reasons
from tessera.api.deps import ConnectionDep, client_ip
from tessera.errors import BadRequest
from tessera.web.frame import NavItem, redirect
from tessera.web.views.destinations import (
    Csrf,
    Form,
    Reader,
    Writer,
    detail_context,
    render,
    waking,
)

router = APIRouter(prefix="/destinations", include_in_schema=False)
NAV: list[NavItem] = []
PAGE = 50
CALLS = {"page": "Page view", "screen": "Screen view", "identify": "Identify", "group": "Group"}
STATES = [
    ("", "Any status"),
    ("delivered", "Delivered"),
    ("pending", "Waiting or retrying"),
    ("dead", "Dead letters"),
    ("blocked", "Blocked by consent"),
]


def subject(message: dict[str, Any]) -> str:
    """What a message is about, in a few words: the event's name, the audience, the traits."""
    payload = message["payload"] if isinstance(message["payload"], dict) else {}
    kind = str(message["kind"])
    if kind == "event":
        kind_name = str(payload.get("type") or "event")
        name = str(payload.get("event") or payload.get("name") or "")
        if kind_name == "track" and name:
            return name
        label = CALLS.get(kind_name, kind_name.capitalize())
        return f"{label}: {name}" if name else label
    if kind.startswith("audience."):
        audience = payload.get("audience") or {}
        verb = "Entered" if kind.endswith("entered") else "Left"
        return f"{verb} {audience.get('name') or audience.get('id') or 'an audience'}"
    traits = payload.get("traits")
    if isinstance(traits, dict) and traits:
        return "Changed " + ", ".join(sorted(traits)[:4])
    return kind


def _page(
    request: Request,
    conn: Any,
    user: Any,
    destination_id: str,
    *,
    state: str | None,
    tab: str,
) -> dict[str, Any]:
    cursor = request.query_params.get("cursor") or None
    context = detail_context(conn, user, destination_id, tab)
    try:
        found = service.list_messages(
            conn,
            destination_id=destination_id,
            state=state,
            cursor=cursor,
            limit=PAGE,
            may_read_pii=user.may("pii:read"),
        )
    except BadRequest:  # a cursor edited by hand: start from the top
        found = service.list_messages(
            conn,
            destination_id=destination_id,
            state=state,
            cursor=None,
            limit=PAGE,
            may_read_pii=user.may("pii:read"),
        )
    items = [{**item, "subject": subject(item)} for item in found["items"]]
    next_href = None
    if found["next_cursor"]:
        kept = {"state": state} if state and tab == "log" else {}
        next_href = f"{request.url.path}?" + urlencode({**kept, "cursor": found["next_cursor"]})
    return {
        **context,
        "items": items,
        "next_href": next_href,
        "first_page": cursor is None,
        "masked": not user.may("pii:read"),
    }


@router.get("/{destination_id}/log")
def log_page(request: Request, destination_id: str, conn: ConnectionDep, user: Reader) -> Response:
    state = request.query_params.get("state") or None
    if state not in {value for value, _ in STATES if value}:
        state = None
    context = _page(request, conn, user, destination_id, state=state, tab="log")
    retention = request.app.state.settings.delivery_log_retention_hours
    return render(
        request,
        "destinations/log.html",
        {**context, "state": state or "", "states": STATES, "retention_hours": retention},
    )


@router.get("/{destination_id}/dead-letters")
def dead_letters_page(
    request: Request, destination_id: str, conn: ConnectionDep, user: Reader
) -> Response:
    context = _page(request, conn, user, destination_id, state="dead", tab="dead")
    reasons = dead_letter_reasons(conn, destination_id=destination_id)
    return render(request, "destinations/dead_letters.html", {**context, "reasons": reasons})


def _ids(values: list[Any]) -> list[int]:
    ids = []
    for value in values:
        if isinstance(value, str) and value.isdigit() and len(value) < 19:
            ids.append(int(value))
    return ids


@router.post("/{destination_id}/dead-letters/replay", dependencies=[Csrf])
def replay(
    request: Request, destination_id: str, *, conn: ConnectionDep, user: Writer, form: Form
) -> Response:
    """Replay the ticked dead letters (`ids`), one (`id`), or every one (`all`)."""
    everything = form.get("all") == "true"
    ids = None if everything else _ids(form.getlist("ids"))
    back = f"/destinations/{destination_id}/dead-letters"
    if ids == []:
        return redirect(back, flash="Tick the dead letters to replay first.", kind="error")
    settings = request.app.state.settings
    result = manage.replay_dead_letters(
        conn,
        actor=user.principal.actor,
        ip=client_ip(request),
        destination_id=destination_id,
        ids=ids,
        max_age=timedelta(seconds=settings.delivery_max_age_seconds),
    )
    replayed, skipped = result["replayed"], result["skipped"]
    if replayed == 0:
        text = "Nothing to replay: they were replayed already or are no longer dead letters."
        return redirect(back, flash=text, kind="error")
    text = f"{replayed:,} dead letter{'s' if replayed != 1 else ''} queued again; they go now."
    if skipped:
        text += f" {skipped:,} had been replayed already."
    return waking(redirect(back, flash=text), request)
