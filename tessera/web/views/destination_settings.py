"""A destination's settings (its name, the config form generated from its plugin's schema,
consent, on/off, delete), what it receives (subscriptions) and its field mapping. Editors
post back for their buttons (add a rule, remove a row) without saving; Save goes through the
API's audited update. Readers without destinations:write see the same in words."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from sqlalchemy.engine import Connection
from starlette.responses import Response

from tessera.activation import manage, service
from tessera.activation.plugins import secret_fields
from tessera.api.deps import ConnectionDep, KeyringDep, client_ip
from tessera.errors import BadRequest, Conflict, InvalidDefinition
from tessera.web import destination_forms as forms
from tessera.web.frame import NavItem, redirect
from tessera.web.schema_form import field_errors, form_fields, read_form, shown_values, walk
from tessera.web.session import WebUser
from tessera.web.views.destinations import (
    Csrf,
    Form,
    Reader,
    Writer,
    audience_names,
    detail_context,
    render,
    sentence,
)

router = APIRouter(prefix="/destinations", include_in_schema=False)
NAV: list[NavItem] = []


def _action(form: Any) -> str:
    action = form.get("editor")
    return action if isinstance(action, str) else ""


# ---------- settings ----------


def _settings_page(
    request: Request,
    conn: Connection,
    user: WebUser,
    destination_id: str,
    *,
    form: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    context = detail_context(conn, user, destination_id, "settings")
    destination, kind = context["destination"], context["kind"]
    fields = form_fields(kind.schema, prefix="config.") if kind else []
    stored = {
        item.name
        for item in walk(fields)
        if item.kind == "secret" and destination["config"].get(item.key) is not None
    }
    values = form or {
        "name": destination["name"],
        "consent": ", ".join(destination["consent_categories"]),
        "shown": shown_values(fields, destination["config"]),
    }
    readable = [
        (item.label, "stored" if item.name in stored else values["shown"].get(item.name, ""))
        for item in walk(fields)
        if item.kind != "group"
    ]
    return render(
        request,
        "destinations/settings.html",
        {
            **context,
            "fields": fields,
            "stored": stored,
            "values": values,
            "readable": readable,
            "errors": errors or {},
        },
        status=status,
    )


@router.get("/{destination_id}/settings")
def settings_page(
    request: Request, destination_id: str, conn: ConnectionDep, user: Reader
) -> Response:
    return _settings_page(request, conn, user, destination_id)


@router.post("/{destination_id}/settings", dependencies=[Csrf])
def save_settings(
    request: Request,
    destination_id: str,
    *,
    conn: ConnectionDep,
    keyring: KeyringDep,
    user: Writer,
    form: Form,
) -> Response:
    context = detail_context(conn, user, destination_id, "settings")
    destination, kind = context["destination"], context["kind"]
    if kind is None:
        raise BadRequest(
            f"the plugin {destination['type']!r} is not installed, so its settings cannot be "
            "changed here; install it again"
        )
    fields = form_fields(kind.schema, prefix="config.")
    hidden = secret_fields(kind.plugin.config_model)
    stored = [name for name in hidden if destination["config"].get(name) is not None]
    read = read_form(fields, form, stored_secrets=stored, keep_secret=service.MASK)
    name = str(form.get("name") or "").strip()
    consent = str(form.get("consent") or "")
    errors = dict(read.errors)
    if not name:
        errors["name"] = "Give it a name; it is how people find it."
    try:
        kind.plugin.config_model.model_validate(read.values)
    except ValidationError as exc:
        for key, message in field_errors(exc, fields).items():
            errors.setdefault(key, message)
    if not errors:
        try:
            manage.update_destination(
                conn,
                actor=user.principal.actor,
                ip=client_ip(request),
                keyring=keyring,
                destination_id=destination_id,
                changes={
                    "name": name,
                    "config": read.values,
                    "consent_categories": forms.consent_list(consent),
                },
            )
        except InvalidDefinition as exc:
            errors[forms.error_key(exc)] = forms.error_text(exc)
        except Conflict:
            errors["name"] = f"A destination named “{name}” exists already; choose another name."
        except BadRequest as exc:
            errors[""] = sentence(exc)
    if errors:
        values = {"name": name, "consent": consent, "shown": read.shown}
        return _settings_page(
            request, conn, user, destination_id, form=values, errors=errors, status=422
        )
    return redirect(f"/destinations/{destination_id}/settings", flash="Settings saved.")


@router.post("/{destination_id}/delete", dependencies=[Csrf])
def delete(request: Request, destination_id: str, conn: ConnectionDep, user: Writer) -> Response:
    found = service.get_destination(conn, destination_id=destination_id)
    manage.delete_destination(
        conn, actor=user.principal.actor, ip=client_ip(request), destination_id=destination_id
    )
    return redirect(
        "/destinations", flash=f"“{found['name']}” is deleted, with its queue and dead letters."
    )


# ---------- subscriptions ----------


def _subscriptions_page(
    request: Request,
    conn: Connection,
    user: WebUser,
    destination_id: str,
    *,
    rows: list[forms.SubscriptionRow] | None = None,
    focus: int | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
    block: str | None = None,
) -> Response:
    context = detail_context(conn, user, destination_id, "subscriptions")
    destination = context["destination"]
    names = audience_names(conn)
    return render(
        request,
        "destinations/subscriptions.html",
        {
            **context,
            "rows": rows
            if rows is not None
            else forms.subscription_rows(destination["subscriptions"]),
            "errors": errors or {},
            "focus": focus,
            "audiences": [{"id": key, "name": value} for key, value in names.items()],
            "event_types": forms.EVENT_TYPE_LABELS,
            "operators": forms.OPERATORS,
            "receives": forms.describe_subscriptions(destination["subscriptions"], names),
            "editor_action": f"/destinations/{destination_id}/subscriptions",
        },
        status=status,
        block=block,
    )


@router.get("/{destination_id}/subscriptions")
def subscriptions_page(
    request: Request, destination_id: str, conn: ConnectionDep, user: Reader
) -> Response:
    return _subscriptions_page(request, conn, user, destination_id)


@router.post("/{destination_id}/subscriptions", dependencies=[Csrf])
def save_subscriptions(
    request: Request,
    destination_id: str,
    *,
    conn: ConnectionDep,
    keyring: KeyringDep,
    user: Writer,
    form: Form,
) -> Response:
    rows = forms.read_subscription_rows(form, form.keys())
    action = _action(form)
    if action:
        rows = forms.apply_subscription_action(rows, action)
        return _subscriptions_page(
            request,
            conn,
            user,
            destination_id,
            rows=rows,
            focus=forms.added_rule(rows, action),
            block="subscriptions_editor",
        )
    errors: dict[str, str] = {}
    document = forms.subscriptions_document(rows, errors)
    if not errors:
        try:
            manage.update_destination(
                conn,
                actor=user.principal.actor,
                ip=client_ip(request),
                keyring=keyring,
                destination_id=destination_id,
                changes={"subscriptions": document},
            )
        except InvalidDefinition as exc:
            errors[forms.error_key(exc)] = forms.error_text(exc)
    if errors:
        return _subscriptions_page(
            request, conn, user, destination_id, rows=rows, errors=errors, status=422
        )
    text = "Saved. New messages follow these rules from now on."
    if not document:
        text = "Saved. It receives nothing until you add a rule."
    return redirect(f"/destinations/{destination_id}/subscriptions", flash=text)


# ---------- mapping ----------


def _mapping_page(
    request: Request,
    conn: Connection,
    user: WebUser,
    destination_id: str,
    *,
    rows: list[forms.MappingRow] | None = None,
    only_mapped: bool | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
    block: str | None = None,
) -> Response:
    context = detail_context(conn, user, destination_id, "mapping")
    stored_rows, stored_only = forms.mapping_rows(context["destination"]["mapping"])
    return render(
        request,
        "destinations/mapping.html",
        {
            **context,
            "rows": rows if rows is not None else stored_rows,
            "only_mapped": stored_only if only_mapped is None else only_mapped,
            "errors": errors or {},
            "hashes": forms.HASH_LABELS,
            "suggestions": forms.SOURCE_SUGGESTIONS,
            "summary": forms.describe_mapping(context["destination"]["mapping"]),
            "editor_action": f"/destinations/{destination_id}/mapping",
        },
        status=status,
        block=block,
    )


@router.get("/{destination_id}/mapping")
def mapping_page(
    request: Request, destination_id: str, conn: ConnectionDep, user: Reader
) -> Response:
    return _mapping_page(request, conn, user, destination_id)


@router.post("/{destination_id}/mapping", dependencies=[Csrf])
def save_mapping(
    request: Request,
    destination_id: str,
    *,
    conn: ConnectionDep,
    keyring: KeyringDep,
    user: Writer,
    form: Form,
) -> Response:
    rows, only_mapped = forms.read_mapping_rows(form, form.keys())
    action = _action(form)
    if action:
        rows = forms.apply_mapping_action(rows, action)
        return _mapping_page(
            request,
            conn,
            user,
            destination_id,
            rows=rows,
            only_mapped=only_mapped,
            block="mapping_editor",
        )
    errors: dict[str, str] = {}
    try:
        manage.update_destination(
            conn,
            actor=user.principal.actor,
            ip=client_ip(request),
            keyring=keyring,
            destination_id=destination_id,
            changes={"mapping": forms.mapping_document(rows, only_mapped)},
        )
    except InvalidDefinition as exc:
        errors[forms.error_key(exc)] = forms.error_text(exc)
        return _mapping_page(
            request,
            conn,
            user,
            destination_id,
            rows=rows,
            only_mapped=only_mapped,
            errors=errors,
            status=422,
        )
    return redirect(f"/destinations/{destination_id}/mapping", flash="Mapping saved.")
