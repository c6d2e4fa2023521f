"""Users of the web UI and API: create, find, change role, sign in, reset a password."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.engine import Connection

from tessera.auth.models import password_resets, sessions, users
from tessera.auth.passwords import check_password_rules, dummy_hash, hash_password, verify_password
from tessera.auth.permissions import ROLES
from tessera.errors import BadRequest, Conflict, NotFound


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    role: str
    active: bool
    created_at: datetime


def _user(row: Any) -> User:
    return User(row.id, row.email, row.role, row.active, row.created_at)


def normalise_email(email: str) -> str:
    try:
        return validate_email(email.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise BadRequest(f"{email[:100]!r} is not a valid email address: {exc}") from None


def check_role(role: str) -> str:
    if role not in ROLES:
        raise BadRequest(f"role {role!r} is not one of: {', '.join(ROLES)}")
    return role


def create_user(conn: Connection, *, email: str, password: str, role: str) -> User:
    address = normalise_email(email)
    check_role(role)
    check_password_rules(password)
    if conn.execute(sa.select(users.c.id).where(users.c.email == address)).first():
        raise Conflict(f"a user with email {address!r} already exists")
    now = datetime.now(UTC)
    user_id = conn.execute(
        users.insert()
        .values(
            email=address,
            password_hash=hash_password(password),
            role=role,
            active=True,
            created_at=now,
            password_changed_at=now,
        )
        .returning(users.c.id)
    ).scalar_one()
    return User(user_id, address, role, True, now)


def count_users(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one())


def list_users(conn: Connection) -> list[User]:
    return [_user(row) for row in conn.execute(sa.select(users).order_by(users.c.id))]


def get_user(conn: Connection, *, user_id: int) -> User:
    row = conn.execute(sa.select(users).where(users.c.id == user_id)).first()
    if row is None:
        raise NotFound(f"no user has id {user_id}")
    return _user(row)


def get_user_by_email(conn: Connection, *, email: str) -> User:
    row = conn.execute(sa.select(users).where(users.c.email == normalise_email(email))).first()
    if row is None:
        raise NotFound(f"no user has email {email.strip().lower()!r}")
    return _user(row)


def update_user(
    conn: Connection, *, user_id: int, role: str | None = None, active: bool | None = None
) -> User:
    values: dict[str, Any] = {}
    if role is not None:
        values["role"] = check_role(role)
    if active is not None:
        values["active"] = active
    get_user(conn, user_id=user_id)
    if values:
        conn.execute(users.update().where(users.c.id == user_id).values(**values))
        if active is False or role is not None:
            # A changed role or a disabled account takes effect at once: sign them out.
            conn.execute(sessions.delete().where(sessions.c.user_id == user_id))
    return get_user(conn, user_id=user_id)


def check_credentials(conn: Connection, *, email: str, password: str) -> User | None:
    """The active user with this email and password, or None. Costs the same either way."""
    try:
        address = normalise_email(email)
    except BadRequest:
        address = ""
    row = conn.execute(sa.select(users).where(users.c.email == address)).first()
    if row is None:
        verify_password(dummy_hash(), password)
        return None
    if not verify_password(row.password_hash, password) or not row.active:
        return None
    return _user(row)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_password_reset(conn: Connection, *, email: str, ttl: timedelta) -> str:
    """A one-time reset token for the user (printed by the CLI; stored hashed)."""
    user = get_user_by_email(conn, email=email)
    token = "rst_" + secrets.token_urlsafe(32)
    conn.execute(
        password_resets.insert().values(
            token_hash=_hash(token), user_id=user.id, expires_at=datetime.now(UTC) + ttl
        )
    )
    return token


def reset_password(conn: Connection, *, token: str, password: str) -> User:
    check_password_rules(password)
    now = datetime.now(UTC)
    row = conn.execute(
        sa.select(password_resets).where(password_resets.c.token_hash == _hash(token))
    ).first()
    if row is None or row.used_at is not None or row.expires_at < now:
        raise BadRequest("the reset token is unknown, used or expired; ask for a new one")
    conn.execute(
        password_resets.update()
        .where(password_resets.c.token_hash == row.token_hash)
        .values(used_at=now)
    )
    conn.execute(
        users.update()
        .where(users.c.id == row.user_id)
        .values(password_hash=hash_password(password), password_changed_at=now)
    )
    conn.execute(sessions.delete().where(sessions.c.user_id == row.user_id))
    return get_user(conn, user_id=row.user_id)
