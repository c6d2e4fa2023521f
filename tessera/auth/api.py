"""HTTP routes for signing in and out, API tokens and users (under /api/v1)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.engine import Engine

from tessera.api.deps import ConnectionDep, IdPath, Principal, client_ip, public, require
from tessera.audit.service import record, record_failure
from tessera.auth import sessions, throttle, tokens, users
from tessera.auth.permissions import PERMISSIONS
from tessera.auth.schemas import (
    LoginIn,
    LoginOut,
    MeOut,
    ResetIn,
    TokenCreated,
    TokenIn,
    TokenOut,
    UserIn,
    UserOut,
    UserPatch,
)
from tessera.config import Settings
from tessera.errors import Unauthorized

router = APIRouter(prefix="/api/v1", tags=["auth"])
Public = Depends(public)
TokenAdmin = Annotated[Principal, Depends(require("tokens:manage"))]
UserAdmin = Annotated[Principal, Depends(require("users:manage"))]
Self = Annotated[Principal, Depends(require("self"))]


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _rules(settings: Settings) -> throttle.ThrottleRules:
    return throttle.ThrottleRules(
        max_per_account=settings.login_max_failures_per_account,
        max_per_ip=settings.login_max_failures_per_ip,
        window=timedelta(minutes=settings.login_window_minutes),
        lockout=timedelta(minutes=settings.login_lockout_minutes),
    )


@router.post("/auth/login", response_model=LoginOut, dependencies=[Public], summary="Sign in")
def login(
    body: LoginIn, request: Request, response: Response, conn: ConnectionDep
) -> dict[str, object]:
    """Start a session: sets the `tessera_session` cookie (Secure, HttpOnly, SameSite=Lax)
    and returns the CSRF token that state-changing requests must echo."""
    settings = _settings(request)
    engine: Engine = request.app.state.engine
    ip = client_ip(request)
    throttle.check(conn, email=body.email, ip=ip)
    user = users.check_credentials(conn, email=body.email, password=body.password)
    if user is None:
        with engine.begin() as own:  # kept even though this request's transaction rolls back
            throttle.record_failure(own, email=body.email, ip=ip, rules=_rules(settings))
        record_failure(
            engine, actor="anonymous", action="auth.login", target=body.email[:255], ip=ip
        )
        raise Unauthorized("the email or the password is wrong")
    throttle.clear(conn, email=user.email)
    ttl = timedelta(hours=settings.session_ttl_hours)
    cookie, session = sessions.create_session(conn, user_id=user.id, ttl=ttl, ip=ip)
    response.set_cookie(
        sessions.COOKIE_NAME,
        cookie,
        max_age=int(ttl.total_seconds()),
        secure=settings.session_cookie_secure,
        httponly=True,
        samesite="lax",
        path="/",
    )
    record(conn, actor=f"user:{user.email}", action="auth.login", target=user.email, ip=ip)
    return {
        "user": _user_out(user),
        "csrf_token": session.csrf_token,
        "expires_at": session.expires_at,
    }


def _user_out(user: users.User) -> dict[str, object]:
    return {
        "id": user.id,
        "email": user.email,
        "role": user.role,
        "active": user.active,
        "created_at": user.created_at,
    }


@router.post("/auth/logout", status_code=204, summary="Sign out")
def logout(request: Request, response: Response, conn: ConnectionDep, principal: Self) -> None:
    cookie = request.cookies.get(sessions.COOKIE_NAME)
    if cookie:
        sessions.delete_session(conn, cookie)
    response.delete_cookie(sessions.COOKIE_NAME, path="/")
    record(conn, actor=principal.actor, action="auth.logout", ip=client_ip(request))


@router.get("/auth/me", response_model=MeOut, summary="Who am I")
def me(principal: Self) -> dict[str, object]:
    return {
        "kind": principal.kind,
        "id": principal.id,
        "name": principal.name,
        "role": principal.role,
        "permissions": sorted(p for p in PERMISSIONS if principal.may(p)),
    }


@router.post(
    "/auth/reset-password", status_code=204, dependencies=[Public], summary="Reset a password"
)
def reset_password(body: ResetIn, request: Request, conn: ConnectionDep) -> None:
    """With a one-time token from `tessera user reset-password EMAIL`; ends every session."""
    engine: Engine = request.app.state.engine
    try:
        user = users.reset_password(conn, token=body.token, password=body.password)
    except Exception:
        record_failure(
            engine, actor="anonymous", action="auth.reset_password", ip=client_ip(request)
        )
        raise
    record(
        conn,
        actor=f"user:{user.email}",
        action="auth.reset_password",
        target=user.email,
        ip=client_ip(request),
    )


@router.get("/tokens", response_model=list[TokenOut], tags=["tokens"], summary="List API tokens")
def list_tokens(conn: ConnectionDep, _: TokenAdmin) -> list[dict[str, object]]:
    return tokens.list_tokens(conn)


@router.post(
    "/tokens",
    response_model=TokenCreated,
    status_code=201,
    tags=["tokens"],
    summary="Create an API token",
)
def create_token(
    body: TokenIn, request: Request, conn: ConnectionDep, principal: TokenAdmin
) -> dict[str, object]:
    """The token is in this response only; it is stored hashed."""
    token, created = tokens.create_token(conn, name=body.name, role=body.role)
    record(
        conn,
        actor=principal.actor,
        action="token.create",
        target=f"token:{created.name}",
        ip=client_ip(request),
        details={"token_id": created.token_id, "role": created.role},
    )
    return {**tokens.get_token(conn, token_id=created.token_id), "token": token}


@router.delete(
    "/tokens/{token_id}", status_code=204, tags=["tokens"], summary="Revoke an API token"
)
def revoke_token(
    token_id: IdPath, request: Request, conn: ConnectionDep, principal: TokenAdmin
) -> None:
    tokens.revoke_token(conn, token_id=token_id)
    cache: tokens.TokenCache = request.app.state.api_tokens
    cache.forget(token_id)
    record(
        conn,
        actor=principal.actor,
        action="token.revoke",
        target=f"token_id:{token_id}",
        ip=client_ip(request),
    )


@router.get("/users", response_model=list[UserOut], tags=["users"], summary="List users")
def list_users(conn: ConnectionDep, _: UserAdmin) -> list[dict[str, object]]:
    return [_user_out(user) for user in users.list_users(conn)]


@router.post(
    "/users", response_model=UserOut, status_code=201, tags=["users"], summary="Create a user"
)
def create_user(
    body: UserIn, request: Request, conn: ConnectionDep, principal: UserAdmin
) -> dict[str, object]:
    user = users.create_user(conn, email=body.email, password=body.password, role=body.role)
    record(
        conn,
        actor=principal.actor,
        action="user.create",
        target=user.email,
        ip=client_ip(request),
        details={"role": user.role},
    )
    return _user_out(user)


@router.patch(
    "/users/{user_id}",
    response_model=UserOut,
    tags=["users"],
    summary="Change a user's role or state",
)
def update_user(
    user_id: IdPath, body: UserPatch, request: Request, conn: ConnectionDep, principal: UserAdmin
) -> dict[str, object]:
    before = users.get_user(conn, user_id=user_id)
    user = users.update_user(conn, user_id=user_id, role=body.role, active=body.active)
    changes = {
        field: {"from": getattr(before, field), "to": getattr(user, field)}
        for field in ("role", "active")
        if getattr(before, field) != getattr(user, field)
    }
    action = "user.role_change" if "role" in changes else "user.update"
    record(
        conn,
        actor=principal.actor,
        action=action,
        target=user.email,
        ip=client_ip(request),
        details=changes,
    )
    return _user_out(user)
