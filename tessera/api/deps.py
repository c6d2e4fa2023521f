"""FastAPI dependencies of the management API: the store connection and the caller.

The caller is a `Principal`: an API token (`Authorization: Bearer`) or a signed-in user
(the session cookie). A state-changing request authenticated by the cookie must carry the
session's CSRF token in `X-CSRF-Token`; a token-authenticated one need not (a browser never
adds the Authorization header on its own).

Every /api/v1 route declares its permission where it is defined: `Depends(require("x"))`,
or `Depends(public)` for the few that need no one signed in (login, password reset).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.engine import Connection, Engine

from tessera.auth.permissions import PERMISSIONS, allowed
from tessera.auth.sessions import COOKIE_NAME, CSRF_HEADER, get_session
from tessera.auth.tokens import TOKEN_PREFIX, TokenCache
from tessera.errors import Forbidden, Unauthorized
from tessera.store.secrets import Keyring

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Ids are INTEGER columns (32-bit on PostgreSQL): anything beyond is refused with 422, never
# passed to the database.
MAX_ID = 2_147_483_647
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, whichever way they authenticated."""

    kind: str  # "token" or "user"
    id: int
    name: str  # the token's name or the user's email
    role: str

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}"

    def may(self, permission: str) -> bool:
        return allowed(self.role, permission)


def get_connection(request: Request) -> Iterator[Connection]:
    """A connection in a transaction, committed when the route returns normally."""
    engine: Engine = request.app.state.engine
    with engine.begin() as conn:
        yield conn


# "function" scope: the transaction commits before the response is sent. FastAPI's default
# ("request") runs the dependency's exit after the response has gone out, so a client could
# read before the write it was told of had committed, or get a 2xx for a failed commit.
ConnectionDep = Annotated[Connection, Depends(get_connection, scope="function")]


def get_keyring(request: Request) -> Keyring:
    """The keys stored secrets are encrypted with (`create_app` loads them)."""
    keyring: Keyring = request.app.state.keyring
    return keyring


KeyringDep = Annotated[Keyring, Depends(get_keyring)]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def current_principal(request: Request, conn: ConnectionDep) -> Principal:
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the management API takes `Authorization: Bearer <token>`")
        cache: TokenCache = request.app.state.api_tokens
        found = cache.authenticate(conn, token)
        if found is None:
            if not token.startswith(TOKEN_PREFIX):
                raise Unauthorized(
                    "that is not an API token (a write key only sends events); create one "
                    "with `tessera token create NAME --role ROLE`"
                )
            raise Unauthorized("the API token is unknown or revoked")
        return Principal("token", found.token_id, found.name, found.role)
    cookie = request.cookies.get(COOKIE_NAME)
    if cookie:
        session = get_session(conn, cookie)
        if session is None:
            raise Unauthorized("the session has expired or was ended; sign in again")
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
                raise Forbidden(
                    "this request needs the session's CSRF token in the X-CSRF-Token header"
                )
        return Principal("user", session.user_id, session.email, session.role)
    raise Unauthorized("sign in, or send an API token as `Authorization: Bearer <token>`")


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require(permission: str) -> Callable[[Principal], Principal]:
    """A dependency that lets through only callers whose role has `permission`."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}; add it to auth/permissions.py")

    def check(principal: CurrentPrincipal) -> Principal:
        if not principal.may(permission):
            raise Forbidden(f"role {principal.role!r} may not {permission.replace(':', ' ')}")
        return principal

    check.permission = permission  # type: ignore[attr-defined]
    return check


def public() -> None:
    """Marks a route that needs no one signed in (sign-in itself, password reset)."""


public.permission = "public"  # type: ignore[attr-defined]
