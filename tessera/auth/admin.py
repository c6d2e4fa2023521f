"""Administering users and API tokens, each change audited: the one implementation the
API's routes and the Settings pages both call."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import Connection

from tessera.audit.service import record
from tessera.auth import tokens, users


def create_user(
    conn: Connection, *, actor: str, ip: str | None, email: str, password: str, role: str
) -> users.User:
    user = users.create_user(conn, email=email, password=password, role=role)
    record(
        conn, actor=actor, action="user.create", target=user.email, ip=ip, details={"role": role}
    )
    return user


def update_user(
    conn: Connection,
    *,
    actor: str,
    ip: str | None,
    user_id: int,
    role: str | None = None,
    active: bool | None = None,
) -> users.User:
    """Change the role or deactivate (which ends the user's sessions); the audit entry
    holds what changed, from and to."""
    before = users.get_user(conn, user_id=user_id)
    user = users.update_user(conn, user_id=user_id, role=role, active=active)
    changes = {
        field: {"from": getattr(before, field), "to": getattr(user, field)}
        for field in ("role", "active")
        if getattr(before, field) != getattr(user, field)
    }
    action = "user.role_change" if "role" in changes else "user.update"
    record(conn, actor=actor, action=action, target=user.email, ip=ip, details=changes)
    return user


def create_reset_link_token(
    conn: Connection, *, actor: str, ip: str | None, email: str, ttl: timedelta
) -> str:
    """A one-time password reset token for `email` (shown once to whoever asked)."""
    token = users.create_password_reset(conn, email=email, ttl=ttl)
    record(conn, actor=actor, action="auth.reset_requested", target=email.strip().lower(), ip=ip)
    return token


def create_token(
    conn: Connection, *, actor: str, ip: str | None, name: str, role: str
) -> tuple[str, dict[str, object]]:
    """(the token's text, shown only now; its stored description)."""
    token, created = tokens.create_token(conn, name=name, role=role)
    record(
        conn,
        actor=actor,
        action="token.create",
        target=f"token:{created.name}",
        ip=ip,
        details={"token_id": created.token_id, "role": created.role},
    )
    return token, tokens.get_token(conn, token_id=created.token_id)


def revoke_token(
    conn: Connection, *, actor: str, ip: str | None, token_id: int, cache: tokens.TokenCache
) -> None:
    tokens.revoke_token(conn, token_id=token_id)
    cache.forget(token_id)
    record(conn, actor=actor, action="token.revoke", target=f"token_id:{token_id}", ip=ip)
