"""Server-side sessions for the web UI: the cookie holds a random id; the store holds its
hash, the user, a CSRF token and the expiry."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.auth.models import sessions, users

COOKIE_NAME = "tessera_session"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True, slots=True)
class Session:
    user_id: int
    email: str
    role: str
    csrf_token: str
    expires_at: datetime


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def create_session(
    conn: Connection, *, user_id: int, ttl: timedelta, ip: str | None
) -> tuple[str, Session]:
    """(cookie value, session). The cookie value exists only in the response."""
    now = datetime.now(UTC)
    cookie = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    conn.execute(
        sessions.insert().values(
            id_hash=_hash(cookie),
            user_id=user_id,
            csrf_token=csrf,
            created_at=now,
            expires_at=now + ttl,
            ip=ip,
        )
    )
    # Expired sessions are swept as new ones are made.
    conn.execute(sessions.delete().where(sessions.c.expires_at < now))
    user = conn.execute(sa.select(users.c.email, users.c.role).where(users.c.id == user_id)).one()
    return cookie, Session(user_id, user.email, user.role, csrf, now + ttl)


def get_session(conn: Connection, cookie: str) -> Session | None:
    row = conn.execute(
        sa.select(
            sessions.c.user_id,
            sessions.c.csrf_token,
            sessions.c.expires_at,
            users.c.email,
            users.c.role,
            users.c.active,
        )
        .select_from(sessions.join(users, users.c.id == sessions.c.user_id))
        .where(sessions.c.id_hash == _hash(cookie))
    ).first()
    if row is None or row.expires_at <= datetime.now(UTC) or not row.active:
        return None
    return Session(row.user_id, row.email, row.role, row.csrf_token, row.expires_at)


def delete_session(conn: Connection, cookie: str) -> None:
    conn.execute(sessions.delete().where(sessions.c.id_hash == _hash(cookie)))
