"""FastAPI dependencies shared by the management API: the store session and the caller.

Every /api/v1 route declares its permission where it is defined, with `Depends(require(...))`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Connection, Engine

from tessera.api.tokens import TOKEN_PREFIX, Principal, authenticate
from tessera.errors import Forbidden, Unauthorized

# What each role may do; issue-level detail (ownership, PII masking) builds on this.
PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"profiles:read", "profiles:write"}),
    "marketer": frozenset({"profiles:read", "profiles:write"}),
    "sales": frozenset({"profiles:read"}),
    "support": frozenset({"profiles:read"}),
    "analyst": frozenset({"profiles:read"}),
}


def get_connection(request: Request) -> Iterator[Connection]:
    """A connection in a transaction, committed when the route returns normally."""
    engine: Engine = request.app.state.engine
    with engine.begin() as conn:
        yield conn


ConnectionDep = Annotated[Connection, Depends(get_connection)]


def current_principal(request: Request, conn: ConnectionDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("send an API token as `Authorization: Bearer <token>`")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the management API takes `Authorization: Bearer <token>`")
    token = token.strip()
    principal = authenticate(conn, token)
    if principal is None:
        if not token.startswith(TOKEN_PREFIX):
            raise Unauthorized(
                "that is not an API token (a write key only sends events); create one with "
                "`tessera token create NAME --role ROLE`"
            )
        raise Unauthorized("the API token is unknown or revoked")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require(permission: str) -> Callable[[Principal], Principal]:
    def check(principal: CurrentPrincipal) -> Principal:
        if permission not in PERMISSIONS.get(principal.role, frozenset()):
            raise Forbidden(f"role {principal.role!r} may not {permission.replace(':', ' ')}")
        return principal

    check.permission = permission  # type: ignore[attr-defined]
    return check
