"""HTTP routes for signing in and out, API tokens and users (under /api/v1)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from tessera.api.deps import ConnectionDep, IdPath, Principal, client_ip, public, require
from tessera.auth import admin, sessions, signin, tokens, users
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

router = APIRouter(prefix="/api/v1", tags=["auth"])
Public = Depends(public)
TokenAdmin = Annotated[Principal, Depends(require("tokens:manage"))]
UserAdmin = Annotated[Principal, Depends(require("users:manage"))]
Self = Annotated[Principal, Depends(require("self"))]


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


@router.post("/auth/login", response_model=LoginOut, dependencies=[Public], summary="Sign in")
def login(
    body: LoginIn, request: Request, response: Response, conn: ConnectionDep
) -> dict[str, object]:
    """Start a session: sets the `tessera_session` cookie (Secure, HttpOnly, SameSite=Lax)
    and returns the CSRF token that state-changing requests must echo."""
    settings = _settings(request)
    cookie, session, user = signin.sign_in(
        conn,
        engine=request.app.state.engine,
        settings=settings,
        email=body.email,
        password=body.password,
        ip=client_ip(request),
    )
    signin.set_session_cookie(response, cookie, settings=settings)
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
    signin.sign_out(
        conn,
        response,
        cookie=request.cookies.get(sessions.COOKIE_NAME),
        actor=principal.actor,
        ip=client_ip(request),
    )


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
    signin.reset_password(
        conn,
        engine=request.app.state.engine,
        token=body.token,
        password=body.password,
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
    token, created = admin.create_token(
        conn, actor=principal.actor, ip=client_ip(request), name=body.name, role=body.role
    )
    return {**created, "token": token}


@router.delete(
    "/tokens/{token_id}", status_code=204, tags=["tokens"], summary="Revoke an API token"
)
def revoke_token(
    token_id: IdPath, request: Request, conn: ConnectionDep, principal: TokenAdmin
) -> None:
    admin.revoke_token(
        conn,
        actor=principal.actor,
        ip=client_ip(request),
        token_id=token_id,
        cache=request.app.state.api_tokens,
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
    user = admin.create_user(
        conn,
        actor=principal.actor,
        ip=client_ip(request),
        email=body.email,
        password=body.password,
        role=body.role,
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
    user = admin.update_user(
        conn,
        actor=principal.actor,
        ip=client_ip(request),
        user_id=user_id,
        role=body.role,
        active=body.active,
    )
    return _user_out(user)
