"""Sources and their write keys: create, list, enable, disable, and look up by key.

A write key identifies a source to the tracking API. Like Segment's, it is not a secret
(browser pages embed it), so it is stored as is and can be shown again.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tessera.errors import BadRequest, Conflict, NotFound
from tessera.ingest.models import sources

MAX_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class Source:
    id: int
    name: str
    write_key: str
    enabled: bool
    created_at: datetime
    disabled_at: datetime | None


def _source(row: sa.Row[tuple[object, ...]] | sa.RowMapping) -> Source:
    mapping = row._mapping if isinstance(row, sa.Row) else row
    return Source(**{column: mapping[column] for column in Source.__slots__})


def new_write_key() -> str:
    return secrets.token_urlsafe(24)


def create_source(conn: Connection, *, name: str) -> Source:
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise BadRequest(f"a source name needs 1 to {MAX_NAME_LENGTH} characters, got {name!r}")
    if conn.execute(sa.select(sources.c.id).where(sources.c.name == name)).first():
        raise Conflict(f"a source named {name!r} already exists")
    now = datetime.now(UTC)
    key = new_write_key()
    source_id = conn.execute(
        sources.insert()
        .values(name=name, write_key=key, enabled=True, created_at=now)
        .returning(sources.c.id)
    ).scalar_one()
    return Source(source_id, name, key, True, now, None)


def list_sources(conn: Connection) -> list[Source]:
    return [_source(row) for row in conn.execute(sa.select(sources).order_by(sources.c.id))]


def get_source(conn: Connection, *, name: str) -> Source:
    row = conn.execute(sa.select(sources).where(sources.c.name == name)).first()
    if row is None:
        raise NotFound(f"no source is named {name!r}; `tessera source list` shows them")
    return _source(row)


def get_source_by_write_key(conn: Connection, *, write_key: str) -> Source | None:
    row = conn.execute(sa.select(sources).where(sources.c.write_key == write_key)).first()
    return None if row is None else _source(row)


def set_source_enabled(conn: Connection, *, name: str, enabled: bool) -> Source:
    source = get_source(conn, name=name)
    conn.execute(
        sources.update()
        .where(sources.c.id == source.id)
        .values(enabled=enabled, disabled_at=None if enabled else datetime.now(UTC))
    )
    return get_source(conn, name=name)


class WriteKeyCache:
    """Write key → Source, cached for `ttl` seconds so the hot path rarely touches the store.

    Unknown keys are cached too (as None), and the cache is bounded, so a flood of random
    keys costs one query each at most and cannot grow memory without limit.
    """

    def __init__(self, engine: Engine, *, ttl: float, max_entries: int = 10_000) -> None:
        self._engine = engine
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, Source | None]] = {}
        self._lock = threading.Lock()

    def cached(self, write_key: str) -> tuple[bool, Source | None]:
        """(hit, source) without touching the store."""
        entry = self._entries.get(write_key)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def load(self, write_key: str) -> Source | None:
        """Look `write_key` up in the store (blocking) and cache the answer."""
        with self._engine.connect() as conn:
            source = get_source_by_write_key(conn, write_key=write_key)
        with self._lock:
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[write_key] = (time.monotonic() + self._ttl, source)
        return source
