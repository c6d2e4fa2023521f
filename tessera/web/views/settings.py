"""Settings: users and their roles, API tokens, the identity rules (read-only) and the
audit log. Each action calls the same audited service as the API (auth/admin.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import Response

from tessera.api.deps import ConnectionDep, IdPath, client_ip
from tessera.audit.service import list_entries
from tessera.auth import admin, tokens, users
from tessera.auth.passwords import MIN_LENGTH
from tessera.auth.permissions import ROLES
from tessera.config import Settings
from tessera.errors import BadRequest, Conflict, HTTPError
from tessera.identity.config import IdentityRules
from tessera.web import saved_views
from tessera.web.frame import Frame, NavItem, redirect
from tessera.web.session import WebUser, check_csrf, page

router = APIRouter(prefix="/settings", include_in_schema=False)
NAV = [
    NavItem("Users", "/settings/users", "users:manage", section="Settings", order=10, icon="users"),
    NavItem("API tokens", "/settings/tokens", "tokens:manage", "Settings", 20, "key"),
    NavItem("Identity rules", "/settings/identity", "profiles:read", "Settings", 30, "identity"),
    NavItem("Audit log", "/settings/audit", "audit:read", "Settings", 40, "audit"),
]
UserAdmin = Annotated[WebUser, Depends(page("users:manage"))]
TokenAdmin = Annotated[WebUser, Depends(page("tokens:manage"))]
Csrf = Depends(check_csrf)
ROLE_HELP = {
    "admin": "Everything, including users, tokens and the audit log",
    "marketer": "Audiences, destinations and sources",
    "sales": "Customers and, soon, the CRM",
    "support": "Customers and, soon, tickets",
    "analyst": "Reads everything, with personal data masked",
}


def _render(
    request: Request, template: str, context: dict[str, Any], status: int = 200
) -> Response:
    frame: Frame = request.app.state.frame
    return frame.render(request, template, context, status=status)


def _message(exc: HTTPError) -> str:
    text = exc.message
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


# ---------- users ----------


def _users_page(
    request: Request,
    conn: Any,
    *,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    reset: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    return _render(
        request,
        "settings/users.html",
        {
            "users": users.list_users(conn),
            "roles": [(role, f"{role.capitalize()}: {ROLE_HELP[role]}") for role in ROLES],
            "form": form or {"email": "", "role": "marketer"},
            "errors": errors or {},
            "reset": reset,
            "min_length": MIN_LENGTH,
        },
        status,
    )


@router.get("/users")
def users_page(request: Request, conn: ConnectionDep, _: UserAdmin) -> Response:
    return _users_page(request, conn)


@router.post("/users", dependencies=[Csrf])
def create_user(
    request: Request,
    *,
    conn: ConnectionDep,
    user: UserAdmin,
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "marketer",
) -> Response:
    form = {"email": email, "role": role}
    try:
        created = admin.create_user(
            conn,
            actor=user.principal.actor,
            ip=client_ip(request),
            email=email,
            password=password,
            role=role,
        )
    except (BadRequest, Conflict) as exc:
        field = "password" if "password" in exc.message else "email"
        return _users_page(request, conn, form=form, errors={field: _message(exc)}, status=422)
    return redirect("/settings/users", flash=f"{created.email} can now sign in as {created.role}.")


@router.post("/users/{user_id}", dependencies=[Csrf])
def update_user(
    request: Request,
    *,
    conn: ConnectionDep,
    user: UserAdmin,
    user_id: IdPath,
    role: Annotated[str | None, Form()] = None,
    active: Annotated[str | None, Form()] = None,
) -> Response:
    if user_id == user.principal.id and (active == "false" or (role and role != "admin")):
        return redirect(
            "/settings/users",
            flash="You cannot take away your own administrator access; ask another admin.",
            kind="error",
        )
    changed = admin.update_user(
        conn,
        actor=user.principal.actor,
        ip=client_ip(request),
        user_id=user_id,
        role=role or None,
        active=None if active is None else active == "true",
    )
    state = "can sign in" if changed.active else "is deactivated and signed out"
    return redirect("/settings/users", flash=f"{changed.email} is now {changed.role} and {state}.")


@router.post("/users/{user_id}/reset-link", dependencies=[Csrf])
def reset_link(request: Request, conn: ConnectionDep, user: UserAdmin, user_id: IdPath) -> Response:
    settings: Settings = request.app.state.settings
    target = users.get_user(conn, user_id=user_id)
    token = admin.create_reset_link_token(
        conn,
        actor=user.principal.actor,
        ip=client_ip(request),
        email=target.email,
        ttl=timedelta(minutes=settings.password_reset_minutes),
    )
    link = f"{str(request.base_url).rstrip('/')}/reset-password?{urlencode({'token': token})}"
    reset = {"email": target.email, "link": link, "minutes": f"{settings.password_reset_minutes:g}"}
    return _users_page(request, conn, reset=reset)


# ---------- API tokens ----------


def _tokens_page(
    request: Request,
    conn: Any,
    *,
    created: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    return _render(
        request,
        "settings/tokens.html",
        {
            "tokens": tokens.list_tokens(conn),
            "roles": [(role, role.capitalize()) for role in ROLES],
            "created": created,
            "errors": errors or {},
            "form": form or {"name": "", "role": "analyst"},
        },
        status,
    )


@router.get("/tokens")
def tokens_page(request: Request, conn: ConnectionDep, _: TokenAdmin) -> Response:
    return _tokens_page(request, conn)


@router.post("/tokens", dependencies=[Csrf])
def create_token(
    request: Request,
    conn: ConnectionDep,
    user: TokenAdmin,
    name: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "analyst",
) -> Response:
    try:
        token, created = admin.create_token(
            conn, actor=user.principal.actor, ip=client_ip(request), name=name, role=role
        )
    except BadRequest as exc:
        return _tokens_page(
            request,
            conn,
            errors={"name": _message(exc)},
            form={"name": name, "role": role},
            status=422,
        )
    return _tokens_page(request, conn, created={**created, "token": token})


@router.post("/tokens/{token_id}/revoke", dependencies=[Csrf])
def revoke_token(
    request: Request, conn: ConnectionDep, user: TokenAdmin, token_id: IdPath
) -> Response:
    found = tokens.get_token(conn, token_id=token_id)
    admin.revoke_token(
        conn,
        actor=user.principal.actor,
        ip=client_ip(request),
        token_id=token_id,
        cache=request.app.state.api_tokens,
    )
    return redirect("/settings/tokens", flash=f"The token {found['name']!r} no longer works.")


# ---------- identity rules ----------


@router.get("/identity")
def identity_page(
    request: Request, _: Annotated[WebUser, Depends(page("profiles:read"))]
) -> Response:
    rules: IdentityRules = request.app.state.identity_rules
    types = [
        {"rank": rank, "type": kind, "limit": rules.limits.get(kind, rules.default_limit)}
        for rank, kind in enumerate(rules.priority, start=1)
    ]
    return _render(
        request,
        "settings/identity.html",
        {"rules": rules, "types": types, "blocked": sorted(rules.blocked_values)},
    )


# ---------- audit log ----------

AUDIT_FILTERS = ("actor", "action", "outcome", "since")


@router.get("/audit")
def audit_page(
    request: Request, conn: ConnectionDep, user: Annotated[WebUser, Depends(page("audit:read"))]
) -> Response:
    query = request.query_params
    filters = {name: query.get(name, "").strip() for name in AUDIT_FILTERS}
    since = None
    error = None
    if filters["since"]:
        try:
            since = datetime.fromisoformat(filters["since"]).replace(tzinfo=UTC)
        except ValueError:
            error = "Pick a date from the calendar, like 2026-12-01."
    outcome = filters["outcome"] if filters["outcome"] in ("success", "failure") else None
    try:
        found = list_entries(
            conn,
            actor=filters["actor"] or None,
            action=filters["action"] or None,
            outcome=outcome,
            since=since,
            cursor=query.get("cursor") or None,
            limit=50,
        )
    except BadRequest:
        found = {"items": [], "next_cursor": None}
    next_href = None
    if found["next_cursor"]:
        kept = {k: v for k, v in filters.items() if v}
        next_href = "/settings/audit?" + urlencode({**kept, "cursor": found["next_cursor"]})
    return _render(
        request,
        "settings/audit.html",
        {
            "entries": found["items"],
            "filters": filters,
            "next_href": next_href,
            "error": error,
            "filtered": any(filters.values()),
            "views": saved_views.list_views(
                conn, page="/settings/audit", user_id=user.principal.id
            ),
            "query": saved_views.clean_query(request.url.query),
        },
    )
