"""Destinations: the list with each one's health, the catalogue of installed types, the
create form generated from a plugin's config schema, and a destination's overview (figures,
hourly charts, test connection, resume). The delivery log and dead letters are in
`destination_delivery.py`, settings, subscriptions and mapping in `destination_settings.py`;
the helpers all three share are here. Every action calls the API's audited services.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from sqlalchemy.engine import Connection
from starlette.background import BackgroundTask
from starlette.datastructures import FormData
from starlette.responses import Response

from tessera.activation import manage, service
from tessera.activation.activity import hourly_activity, summarise
from tessera.activation.plugins import DestinationType, destination_types
from tessera.api.deps import ConnectionDep, KeyringDep, client_ip
from tessera.errors import BadRequest, Conflict, HTTPError, InvalidDefinition, NotFound
from tessera.web import destination_forms as forms
from tessera.web.frame import Frame, NavItem, redirect
from tessera.web.schema_form import field_errors, form_fields, read_form, shown_values
from tessera.web.session import WebUser, check_csrf, page

router = APIRouter(prefix="/destinations", include_in_schema=False)
NAV = [
    NavItem("Destinations", "/destinations", "destinations:read", "Activation", 20, "destination")
]
Reader = Annotated[WebUser, Depends(page("destinations:read"))]
Writer = Annotated[WebUser, Depends(page("destinations:write"))]
Csrf = Depends(check_csrf)
RANGES = {"24h": (24, "Last 24 hours"), "7d": (24 * 7, "Last 7 days")}
SENT, FAILED, DEAD = "#16a37f", "#d6336c", "#8a5a00"


async def posted_form(request: Request) -> FormData:
    """The posted form (read once; `check_csrf` has read it already)."""
    return await request.form()


Form = Annotated[FormData, Depends(posted_form)]


# ---------- shared by the destination pages ----------


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    block: str | None = None,
) -> Response:
    frame: Frame = request.app.state.frame
    return frame.render(request, template, context, status=status, block=block)


def sentence(exc: HTTPError) -> str:
    text = exc.message
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def kind_of(type_name: str) -> DestinationType:
    """An installed destination type, or the 404 page naming the installed ones."""
    types = destination_types()
    if type_name not in types:
        raise NotFound(
            f"there is no destination type {type_name!r}; installed: {', '.join(types) or 'none'}"
        )
    return types[type_name]


def audience_names(conn: Connection) -> dict[str, str]:
    return {item["id"]: item["name"] for item in service.audience_choices(conn)}


def detail_context(
    conn: Connection, user: WebUser, destination_id: str, tab: str
) -> dict[str, Any]:
    """What every tab of a destination shows in its header."""
    types = destination_types()
    destination = service.get_destination(conn, destination_id=destination_id, types=types)
    kind = types.get(destination["type"])
    return {
        "destination": destination,
        "kind": kind,
        "type_title": kind.plugin.title if kind else destination["type"],
        "tab": tab,
        "can_edit": user.may("destinations:write"),
    }


def waking(response: Response, request: Request) -> Response:
    """Wake the delivery worker once the response is out (after the commit)."""
    response.background = BackgroundTask(manage.wake_delivery, request.app.state)
    return response


def chart_points(points: list[dict[str, Any]]) -> dict[str, Any]:
    """An hourly series as chart data: ISO labels (shown in the reader's time zone), and
    latency in seconds when some hour's mean reaches two (ms below)."""
    latency = [point["latency_ms_mean"] for point in points]
    seconds = max((value for value in latency if value is not None), default=0) >= 2000
    return {
        "labels": [point["hour"].isoformat().replace("+00:00", "Z") for point in points],
        "sent": [point["sent"] for point in points],
        "failed": [point["failed"] for point in points],
        "latency": [
            round(value / 1000, 2) if seconds and value is not None else value for value in latency
        ],
        "latency_unit": "s" if seconds else "ms",
    }


# ---------- the list and the catalogue ----------


@router.get("")
def list_page(request: Request, conn: ConnectionDep, user: Reader) -> Response:
    types = destination_types()
    found = service.list_destinations(conn, types=types)
    series = hourly_activity(
        conn, destination_ids=[d["id"] for d in found], hours=24, now=datetime.now(UTC)
    )
    rows = []
    for destination in found:
        points = series.get(destination["id"], [])
        kind = types.get(destination["type"])
        rows.append(
            {
                **destination,
                "type_title": kind.plugin.title if kind else destination["type"],
                "day": summarise(points),
                "chart": chart_points(points),
            }
        )
    return render(
        request,
        "destinations/list.html",
        {"rows": rows, "can_edit": user.may("destinations:write"), "colors": [SENT, FAILED]},
    )


@router.get("/new")
def catalogue_page(request: Request, _: Writer) -> Response:
    types = [
        {"name": kind.name, "title": kind.plugin.title, "description": kind.plugin.description}
        for kind in destination_types().values()
    ]
    return render(request, "destinations/catalogue.html", {"types": types})


# ---------- create ----------


def _create_page(
    request: Request,
    conn: Connection,
    kind: DestinationType,
    *,
    name: str = "",
    shown: dict[str, Any] | None = None,
    rows: list[forms.SubscriptionRow] | None = None,
    focus: int | None = None,
    consent: str = "",
    errors: dict[str, str] | None = None,
    status: int = 200,
    block: str | None = None,
) -> Response:
    fields = form_fields(kind.schema, prefix="config.")
    return render(
        request,
        "destinations/create.html",
        {
            "kind": kind,
            "fields": fields,
            "shown": shown if shown is not None else shown_values(fields, None),
            "name": name,
            "rows": rows or [],
            "consent": consent,
            "focus": focus,
            "errors": errors or {},
            "audiences": service.audience_choices(conn),
            "event_types": forms.EVENT_TYPE_LABELS,
            "operators": forms.OPERATORS,
            "editor_action": f"/destinations/new/{kind.name}",
        },
        status=status,
        block=block,
    )


@router.get("/new/{type_name}")
def create_page(request: Request, type_name: str, conn: ConnectionDep, _: Writer) -> Response:
    return _create_page(request, conn, kind_of(type_name))


@router.post("/new/{type_name}", dependencies=[Csrf])
def create_destination(
    request: Request,
    type_name: str,
    *,
    conn: ConnectionDep,
    keyring: KeyringDep,
    user: Writer,
    form: Form,
) -> Response:
    kind = kind_of(type_name)
    fields = form_fields(kind.schema, prefix="config.")
    rows = forms.read_subscription_rows(form, form.keys())
    read = read_form(fields, form)
    name = str(form.get("name") or "").strip()
    consent = str(form.get("consent") or "")
    action = form.get("editor")
    if isinstance(action, str) and action:
        rows = forms.apply_subscription_action(rows, action)
        return _create_page(
            request,
            conn,
            kind,
            name=name,
            shown=read.shown,
            rows=rows,
            focus=forms.added_rule(rows, action),
            consent=consent,
            block="subscriptions_editor",
        )
    errors = dict(read.errors)
    if not name:
        errors["name"] = "Give it a name you will recognise, like “Orders webhook”."
    try:
        kind.plugin.config_model.model_validate(read.values)
    except ValidationError as exc:
        for key, message in field_errors(exc, fields).items():
            errors.setdefault(key, message)
    document = forms.subscriptions_document(rows, errors)
    if not errors:
        try:
            created = manage.create_destination(
                conn,
                actor=user.principal.actor,
                ip=client_ip(request),
                keyring=keyring,
                name=name,
                type=kind.name,
                config=read.values,
                subscriptions=document,
                mapping={},
                consent_categories=forms.consent_list(consent),
                enabled=True,
            )
        except InvalidDefinition as exc:
            errors[forms.error_key(exc)] = forms.error_text(exc)
        except Conflict:
            errors["name"] = f"A destination named “{name}” exists already; choose another name."
        except BadRequest as exc:
            errors[""] = sentence(exc)
    if errors:
        return _create_page(
            request,
            conn,
            kind,
            name=name,
            shown=read.shown,
            rows=rows,
            consent=consent,
            errors=errors,
            status=422,
        )
    next_step = "Test its connection" if document else "Choose what it receives"
    return redirect(
        f"/destinations/{created['id']}", flash=f"“{name}” is set up. {next_step} below."
    )


# ---------- one destination: the overview ----------


def _overview(
    request: Request,
    conn: Connection,
    user: WebUser,
    destination_id: str,
    *,
    check: dict[str, Any] | None = None,
) -> Response:
    context = detail_context(conn, user, destination_id, "overview")
    chosen = request.query_params.get("range", "24h")
    hours, range_label = RANGES.get(chosen, RANGES["24h"])
    points = hourly_activity(
        conn, destination_ids=[destination_id], hours=hours, now=datetime.now(UTC)
    )[destination_id]
    window = summarise(points)
    attempts = window["sent"] + window["failed"]
    names = audience_names(conn)
    destination = context["destination"]
    return render(
        request,
        "destinations/overview.html",
        {
            **context,
            "range": chosen if chosen in RANGES else "24h",
            "ranges": [(key, label) for key, (_, label) in RANGES.items()],
            "range_label": range_label,
            "window": window,
            "success_rate": window["sent"] / attempts if attempts else None,
            "chart": chart_points(points),
            "colors": {"sent": SENT, "failed": FAILED, "dead": DEAD},
            "receives": forms.describe_subscriptions(destination["subscriptions"], names),
            "mapping_summary": forms.describe_mapping(destination["mapping"]),
            "check": check,
        },
    )


@router.get("/{destination_id}")
def overview_page(
    request: Request, destination_id: str, conn: ConnectionDep, user: Reader
) -> Response:
    return _overview(request, conn, user, destination_id)


@router.post("/{destination_id}/test", dependencies=[Csrf])
async def test_connection(
    request: Request,
    destination_id: str,
    *,
    conn: ConnectionDep,
    keyring: KeyringDep,
    user: Writer,
) -> Response:
    """Try the connection (htmx: the result replaces the button's result area)."""
    found = await service.check_connection(conn, destination_id=destination_id, keyring=keyring)
    check = {"ok": found.ok, "detail": found.detail, "at": datetime.now(UTC)}
    if request.headers.get("hx-request") == "true":
        return render(request, "destinations/check.html", {"check": check})
    return _overview(request, conn, user, destination_id, check=check)


@router.post("/{destination_id}/resume", dependencies=[Csrf])
def resume(request: Request, destination_id: str, conn: ConnectionDep, user: Writer) -> Response:
    found = manage.resume_destination(
        conn, actor=user.principal.actor, ip=client_ip(request), destination_id=destination_id
    )
    response = redirect(
        f"/destinations/{destination_id}",
        flash=f"“{found['name']}” is sending again; what waited goes now.",
    )
    return waking(response, request)


@router.post("/{destination_id}/enabled", dependencies=[Csrf])
def set_enabled(
    request: Request,
    destination_id: str,
    *,
    conn: ConnectionDep,
    keyring: KeyringDep,
    user: Writer,
    form: Form,
) -> Response:
    enabled = form.get("enabled") == "true"
    found = manage.update_destination(
        conn,
        actor=user.principal.actor,
        ip=client_ip(request),
        keyring=keyring,
        destination_id=destination_id,
        changes={"enabled": enabled},
    )
    text = (
        f"“{found['name']}” is on: new messages are queued for it again."
        if enabled
        else f"“{found['name']}” is off: nothing is queued for it or sent until you turn it on."
    )
    return waking(redirect(f"/destinations/{destination_id}", flash=text), request)


def SCREENSHOTS(conn: Connection) -> list[tuple[str, str]]:
    """A destination's pages on demo data: the busiest destination (one is set up first
    when the demo has none, see `screenshot_setup`)."""
    from tessera.web.destination_screens import screenshot_setup

    destination_id = screenshot_setup(conn)
    if destination_id is None:
        return []
    return [
        ("destination-new", "/destinations/new"),
        ("destination-new-webhook", "/destinations/new/webhook"),
        ("destination-overview", f"/destinations/{destination_id}"),
        ("destination-log", f"/destinations/{destination_id}/log"),
        ("destination-dead-letters", f"/destinations/{destination_id}/dead-letters"),
        ("destination-settings", f"/destinations/{destination_id}/settings"),
        ("destination-subscriptions", f"/destinations/{destination_id}/subscriptions"),
        ("destination-mapping", f"/destinations/{destination_id}/mapping"),
    ]
