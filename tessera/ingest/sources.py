"""Sources and their write keys: create, list, enable, disable, issue a new key, and look a
source up by its key.

A write key is stored as its SHA-256, never as itself, and shown once: when the source is
created or given a new key. Hashed rather than encrypted (store/secrets.py) because the
tracking API looks a source up by the key it is sent, on every uncached request: a hash is
an indexed equality, while encrypted values (random per encryption) could only be found by
decrypting them all. A key is 192 random bits, so a fast hash suffices, as for API tokens;
and a copy of the database then yields no key that can send events (which could plant
identifiers and merge profiles). Whoever loses a key issues a new one (`rotate_write_key`).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tessera.errors import BadRequest, Conflict, NotFound
from tessera.ingest.activity import SourceActivity, activity_by_source
from tessera.ingest.models import sources

MAX_NAME_LENGTH = 200
PREFIX_LENGTH = 6


@dataclass(frozen=True, slots=True)
class Source:
    id: int
    name: str
    write_key_prefix: str  # the key's first characters, to tell keys apart
    enabled: bool
    created_at: datetime
    disabled_at: datetime | None


@dataclass(frozen=True, slots=True)
class NewSource(Source):
    """A source with its write key: only what creates a key (or a new one) returns this."""

    write_key: str


def _source(row: sa.Row[tuple[object, ...]] | sa.RowMapping) -> Source:
    mapping = row._mapping if isinstance(row, sa.Row) else row
    return Source(
        id=mapping["id"],
        name=mapping["name"],
        write_key_prefix=mapping["write_key_prefix"] or "",
        enabled=mapping["enabled"],
        created_at=mapping["created_at"],
        disabled_at=mapping["disabled_at"],
    )


def new_write_key() -> str:
    return secrets.token_urlsafe(24)


def hash_write_key(write_key: str) -> str:
    return hashlib.sha256(write_key.encode()).hexdigest()


def _check_name(conn: Connection, name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise BadRequest(f"a source name needs 1 to {MAX_NAME_LENGTH} characters, got {name!r}")
    if conn.execute(sa.select(sources.c.id).where(sources.c.name == name)).first():
        raise Conflict(f"a source named {name!r} already exists")
    return name


def create_source(conn: Connection, *, name: str) -> NewSource:
    """A new enabled source; its write key exists in this return value only."""
    name = _check_name(conn, name)
    now = datetime.now(UTC)
    key = new_write_key()
    prefix = key[:PREFIX_LENGTH]
    source_id = conn.execute(
        sources.insert()
        .values(
            name=name,
            write_key_hash=hash_write_key(key),
            write_key_prefix=prefix,
            enabled=True,
            created_at=now,
        )
        .returning(sources.c.id)
    ).scalar_one()
    return NewSource(source_id, name, prefix, True, now, None, key)


def list_sources(conn: Connection) -> list[Source]:
    return [_source(row) for row in conn.execute(sa.select(sources).order_by(sources.c.id))]


def get_source(
    conn: Connection, *, source_id: int | None = None, name: str | None = None
) -> Source:
    """The source with this id, or with this name; NotFound otherwise."""
    if (source_id is None) == (name is None):
        raise TypeError("get_source takes one of source_id and name")
    column, value = (sources.c.id, source_id) if name is None else (sources.c.name, name)
    row = conn.execute(sa.select(sources).where(column == value)).first()
    if row is None:
        if name is not None:
            raise NotFound(f"no source is named {name!r}; `tessera source list` shows them")
        raise NotFound(f"no source has id {source_id}")
    return _source(row)


def get_source_by_write_key(conn: Connection, *, write_key: str) -> Source | None:
    row = conn.execute(
        sa.select(sources).where(sources.c.write_key_hash == hash_write_key(write_key))
    ).first()
    return None if row is None else _source(row)


def set_source_enabled(
    conn: Connection, *, enabled: bool, source_id: int | None = None, name: str | None = None
) -> Source:
    """Enable or disable the source (by id or name). A disabled source's write key gets
    403 from the tracking API; its events stay in the log."""
    source = get_source(conn, source_id=source_id, name=name)
    if source.enabled != enabled:
        conn.execute(
            sources.update()
            .where(sources.c.id == source.id)
            .values(enabled=enabled, disabled_at=None if enabled else datetime.now(UTC))
        )
    return get_source(conn, source_id=source.id)


def rotate_write_key(
    conn: Connection, *, source_id: int | None = None, name: str | None = None
) -> NewSource:
    """Give the source a new write key; the old one stops working at once in this process
    and within `write_key_cache_seconds` in others."""
    source = get_source(conn, source_id=source_id, name=name)
    key = new_write_key()
    prefix = key[:PREFIX_LENGTH]
    conn.execute(
        sources.update()
        .where(sources.c.id == source.id)
        .values(write_key_hash=hash_write_key(key), write_key_prefix=prefix)
    )
    return NewSource(
        source.id, source.name, prefix, source.enabled, source.created_at, source.disabled_at, key
    )


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

    def forget_source(self, source_id: int) -> None:
        """Drop what is cached for this source (disabled, or given a new key here), so this
        process sees the change at once. Keys cached as unknown stay: a new key is new."""
        with self._lock:
            for key in [k for k, (_, s) in self._entries.items() if s and s.id == source_id]:
                del self._entries[key]


def summary(source: Source, activity: SourceActivity | None) -> dict[str, Any]:
    """A source as the sources page and API show it: with today's counts and when it was
    last heard from (never its key)."""
    activity = activity or SourceActivity()
    return {
        "id": source.id,
        "name": source.name,
        "enabled": source.enabled,
        "created_at": source.created_at,
        "disabled_at": source.disabled_at,
        "write_key_prefix": source.write_key_prefix,
        "events_today": activity.accepted_today,
        "refused_today": activity.refused_today,
        "last_event_at": activity.last_accepted_at,
        "last_refused_at": activity.last_refused_at,
    }


def list_source_summaries(conn: Connection) -> list[dict[str, Any]]:
    """Every source with its activity: two queries, neither of which reads the log."""
    activity = activity_by_source(conn)
    return [summary(source, activity.get(source.id)) for source in list_sources(conn)]


def get_source_summary(conn: Connection, *, source_id: int) -> dict[str, Any]:
    source = get_source(conn, source_id=source_id)
    return summary(source, activity_by_source(conn, source_id=source_id).get(source_id))
