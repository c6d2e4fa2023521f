"""API tokens for the management API: created once, shown once, stored as a hash.

A token is `tsk_` and 43 random URL-safe characters; its SHA-256 is what is stored (a slow
password hash would add nothing for 256 random bits). A write key is not a token.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.auth.models import api_tokens
from tessera.auth.permissions import ROLES
from tessera.errors import BadRequest, NotFound

TOKEN_PREFIX = "tsk_"
# Writing last_used_at on every request would make reads write; once a minute is enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token's id, name and role."""

    token_id: int
    name: str
    role: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(conn: Connection, *, name: str, role: str) -> tuple[str, Principal]:
    """A new token (the only time its text exists) and who it makes the caller."""
    if role not in ROLES:
        raise BadRequest(f"role {role!r} is not one of: {', '.join(ROLES)}")
    name = name.strip()
    if not name or len(name) > 200:
        raise BadRequest(f"a token name needs 1 to 200 characters, got {name!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = conn.execute(
        api_tokens.insert()
        .values(
            name=name,
            role=role,
            token_hash=hash_token(token),
            prefix=token[:8],
            created_at=datetime.now(UTC),
        )
        .returning(api_tokens.c.id)
    ).scalar_one()
    return token, Principal(token_id, name, role)


def authenticate(conn: Connection, token: str) -> Principal | None:
    row = conn.execute(
        sa.select(api_tokens).where(api_tokens.c.token_hash == hash_token(token))
    ).first()
    if row is None or row.revoked_at is not None:
        return None
    now = datetime.now(UTC)
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        conn.execute(api_tokens.update().where(api_tokens.c.id == row.id).values(last_used_at=now))
    return Principal(row.id, row.name, row.role)


def list_tokens(conn: Connection) -> list[dict[str, object]]:
    columns = [c for c in api_tokens.c if c.name != "token_hash"]
    return [
        dict(row._mapping) for row in conn.execute(sa.select(*columns).order_by(api_tokens.c.id))
    ]


def get_token(conn: Connection, *, token_id: int) -> dict[str, object]:
    columns = [c for c in api_tokens.c if c.name != "token_hash"]
    row = conn.execute(sa.select(*columns).where(api_tokens.c.id == token_id)).first()
    if row is None:
        raise NotFound(f"no token has id {token_id}")
    return dict(row._mapping)


def revoke_token(conn: Connection, *, token_id: int) -> None:
    done = conn.execute(
        api_tokens.update()
        .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    if done.rowcount == 0:
        raise NotFound(f"no active token has id {token_id}")
