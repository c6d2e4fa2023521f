"""API tokens for the management API: created once, shown once, stored as a hash.

A token is `tsk_` and 43 random URL-safe characters; its SHA-256 is what is stored (a slow
password hash would add nothing for 256 random bits). A write key is not a token.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
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
# How long a token revoked through this process stays out of `TokenCache`: far longer than
# its revoking transaction takes to commit.
FORGOTTEN_SECONDS = 60.0


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


class TokenCache:
    """Valid tokens' principals, kept for `ttl` seconds so that an API client's requests do
    not each cost a query (and, once a minute, a write).

    Keyed by the token's hash, like the store. Only tokens that authenticated are kept: a
    refused token costs its query every time, as before, and cannot fill the cache. Revoking
    through this process (`forget`, which the revoke route calls) takes effect at once; a
    revocation made elsewhere (`tessera token revoke`, another server) within `ttl`
    (`TESSERA_API_TOKEN_CACHE_SECONDS`). A `ttl` of 0 turns the cache off.
    """

    def __init__(self, *, ttl: float, max_entries: int = 10_000) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        # token id → until when it is not cached again after `forget`.
        self._forgotten: dict[int, float] = {}
        self._lock = threading.Lock()

    def cached(self, token: str) -> Principal | None:
        """The token's principal if it authenticated less than `ttl` ago; no store access."""
        entry = self._entries.get(hash_token(token))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def authenticate(self, conn: Connection, token: str) -> Principal | None:
        """`authenticate`, answered from the cache when it can be."""
        found = self.cached(token)
        if found is not None:
            return found
        expires = time.monotonic() + self._ttl
        found = authenticate(conn, token)
        if found is None or self._ttl <= 0:
            return found
        with self._lock:
            if self._forgotten.get(found.token_id, 0.0) < time.monotonic():
                if len(self._entries) >= self._max_entries:
                    self._entries.clear()
                self._entries[hash_token(token)] = (expires, found)
        return found

    def forget(self, token_id: int) -> None:
        """Drop a token being revoked, and keep it out of the cache for a while: the revoking
        transaction commits after this call, and until then a request can still read the
        token as valid; uncached, its next request after the commit is refused."""
        now = time.monotonic()
        with self._lock:
            self._forgotten = {key: until for key, until in self._forgotten.items() if until > now}
            self._forgotten[token_id] = now + FORGOTTEN_SECONDS
            self._entries = {
                key: entry for key, entry in self._entries.items() if entry[1].token_id != token_id
            }


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
