"""Managing sources on someone's behalf, each change audited and seen at once by this
process's write key cache: the one implementation the sources API and the Sources pages
both call (ingest/sources.py holds the plain store operations the CLI uses)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.audit.service import record
from tessera.ingest import sources
from tessera.ingest.sources import NewSource, Source, WriteKeyCache


def _forget_on_commit(conn: Connection, write_keys: WriteKeyCache, source_id: int) -> None:
    """Make the write key cache drop the source once the change commits: before that, a
    tracking request could cache the old state again."""
    sa.event.listen(conn, "commit", lambda _conn: write_keys.forget_source(source_id))


def create_source(conn: Connection, *, actor: str, ip: str | None, name: str) -> NewSource:
    """A new enabled source; its write key is in the return value only (and never in the
    audit log, which keeps its prefix)."""
    source = sources.create_source(conn, name=name)
    record(
        conn,
        actor=actor,
        action="source.create",
        target=f"source:{source.name}",
        ip=ip,
        details={"source_id": source.id, "write_key_prefix": source.write_key_prefix},
    )
    return source


def set_source_enabled(
    conn: Connection,
    *,
    actor: str,
    ip: str | None,
    source_id: int,
    enabled: bool,
    write_keys: WriteKeyCache,
) -> Source:
    """Enable or disable; audited only when it changes something. A disabled source's key
    is refused from the commit on by this process (others: within the cache's lifetime)."""
    before = sources.get_source(conn, source_id=source_id)
    source = sources.set_source_enabled(conn, source_id=source_id, enabled=enabled)
    if before.enabled != source.enabled:
        record(
            conn,
            actor=actor,
            action="source.enable" if source.enabled else "source.disable",
            target=f"source:{source.name}",
            ip=ip,
            details={"source_id": source.id},
        )
        _forget_on_commit(conn, write_keys, source_id)
    return source


def rotate_write_key(
    conn: Connection, *, actor: str, ip: str | None, source_id: int, write_keys: WriteKeyCache
) -> NewSource:
    """A new write key for the source (in the return value only); the old one stops working
    at the commit here, within the cache's lifetime in other processes."""
    source = sources.rotate_write_key(conn, source_id=source_id)
    record(
        conn,
        actor=actor,
        action="source.rotate_key",
        target=f"source:{source.name}",
        ip=ip,
        details={"source_id": source.id, "write_key_prefix": source.write_key_prefix},
    )
    _forget_on_commit(conn, write_keys, source_id)
    return source
