"""The processor's activation stage: writes every message a destination subscribed to into
the outbox, in the transaction that produced it (the batch's events and trait changes, and
the audience change stream), so a message exists exactly when its cause was committed.

Consent is not judged here but at delivery, so a withdrawal stops messages already queued.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.activation.models import activation_cursor, destinations
from tessera.activation.subscriptions import Subscriptions, parse_subscriptions
from tessera.audiences.models import audience_changes, audiences
from tessera.store.upsert import bind_time

CHANGES = "audience_changes"
NO_PERSON = "-"  # events no identifier could attribute still reach event subscribers


@dataclass
class ActivationCatalog:
    """The enabled destinations and what each subscribed to."""

    version: tuple[Any, ...]
    subscriptions: dict[str, Subscriptions] = field(default_factory=dict)

    @property
    def wants_events(self) -> bool:
        return any(sub.events for sub in self.subscriptions.values())

    @property
    def wants_traits(self) -> bool:
        return any(sub.traits is not None for sub in self.subscriptions.values())

    @property
    def wants_changes(self) -> bool:
        return any(sub.audiences for sub in self.subscriptions.values())


def catalog_version(conn: Connection) -> tuple[Any, ...]:
    row = conn.execute(sa.select(sa.func.count(), sa.func.max(destinations.c.updated_at))).one()
    return (int(row[0]), row[1])


def load_catalog(conn: Connection) -> ActivationCatalog:
    version = catalog_version(conn)
    known = {audience_id for (audience_id,) in conn.execute(sa.select(audiences.c.id))}
    catalog = ActivationCatalog(version)
    rows = conn.execute(
        sa.select(destinations.c.id, destinations.c.subscriptions).where(destinations.c.enabled)
    )
    for row in rows:
        # Stored subscriptions were validated when saved; an audience deleted since only
        # drops out of them.
        doc = orjson.loads(row.subscriptions)
        for item in doc:
            if item.get("type") == "audience":
                item["audiences"] = [a for a in item.get("audiences", []) if a in known]
        doc = [item for item in doc if item.get("type") != "audience" or item.get("audiences")]
        catalog.subscriptions[row.id] = parse_subscriptions(doc, known_audiences=known)
    return catalog


class Fanout:
    """The outbox rows of one transaction, written with one executemany."""

    def __init__(self, catalog: ActivationCatalog, *, now: datetime, max_age: timedelta) -> None:
        self.catalog = catalog
        self.now = now
        self.expires = now + max_age
        self.rows: list[tuple[str, str, str, str, str]] = []

    def event(
        self, *, person: str | None, message_id: str, payload: dict[str, Any], raw: str
    ) -> None:
        for destination_id, subs in self.catalog.subscriptions.items():
            if subs.events and subs.wants_event(payload):
                self.rows.append((destination_id, person or NO_PERSON, "event", message_id, raw))

    def traits(self, *, person: str, message_id: str, changed: dict[str, Any]) -> None:
        for destination_id, subs in self.catalog.subscriptions.items():
            wanted = subs.wanted_traits(changed)
            if wanted:
                body = orjson.dumps({"traits": wanted}, option=orjson.OPT_SORT_KEYS).decode()
                self.rows.append((destination_id, person, "traits.changed", message_id, body))

    def change(
        self,
        *,
        seq: int,
        person: str,
        audience: dict[str, Any],
        change: str,
        cause: str,
        at: datetime,
    ) -> None:
        body: str | None = None
        for destination_id, subs in self.catalog.subscriptions.items():
            if subs.wants_change(audience["id"], change):
                if body is None:
                    body = orjson.dumps(
                        {"audience": audience, "cause": cause, "at": at.isoformat()}
                    ).decode()
                self.rows.append((destination_id, person, f"audience.{change}", f"aud-{seq}", body))

    def flush(self, conn: Connection) -> int:
        if not self.rows:
            return 0
        mark = "?" if conn.dialect.name == "sqlite" else "%s"
        now = bind_time(conn, self.now)
        expires = bind_time(conn, self.expires)
        conn.exec_driver_sql(
            "INSERT INTO outbox (destination_id, person, kind, message_id, payload, created_at, "
            "expires_at, state, attempts, next_attempt_at, replays) VALUES "
            f"({mark}, {mark}, {mark}, {mark}, {mark}, {mark}, {mark}, 'pending', 0, {mark}, 0)",
            [(*row, now, expires, now) for row in self.rows],
        )
        written = len(self.rows)
        self.rows = []
        return written


def changes_position(conn: Connection) -> int:
    position = conn.execute(
        sa.select(activation_cursor.c.position).where(activation_cursor.c.name == CHANGES)
    ).scalar()
    return int(position or 0)


def changes_waiting(conn: Connection) -> bool:
    latest = conn.execute(sa.select(sa.func.max(audience_changes.c.seq))).scalar()
    return latest is not None and int(latest) > changes_position(conn)


def set_changes_position(conn: Connection, position: int) -> None:
    updated = conn.execute(
        activation_cursor.update()
        .where(activation_cursor.c.name == CHANGES)
        .values(position=position)
    )
    if updated.rowcount == 0:
        conn.execute(activation_cursor.insert().values(name=CHANGES, position=position))


def fan_out_changes(conn: Connection, fanout: Fanout | None, *, limit: int = 50_000) -> int:
    """Queue the audience entries and exits committed since the cursor; move the cursor.

    Every writer of `audience_changes` holds the processor's position row, as does the
    caller, so no change with a smaller seq can commit after this reads (none is skipped).
    With no `fanout` (a rebuild, or nothing subscribed) the cursor just moves on.
    """
    position = changes_position(conn)
    if fanout is None or not fanout.catalog.wants_changes:
        latest = conn.execute(sa.select(sa.func.max(audience_changes.c.seq))).scalar()
        if latest is not None and int(latest) > position:
            set_changes_position(conn, int(latest))
        return 0
    rows = list(
        conn.execute(
            sa.select(audience_changes)
            .where(audience_changes.c.seq > position)
            .order_by(audience_changes.c.seq)
            .limit(limit)
        )
    )
    if not rows:
        return 0
    names = _audience_names(conn, {row.audience_id for row in rows})
    for row in rows:
        audience = {"id": row.audience_id, "name": names.get(row.audience_id)}
        fanout.change(
            seq=row.seq,
            person=row.profile_id,
            audience=audience,
            change=row.change,
            cause=row.cause,
            at=row.at,
        )
    set_changes_position(conn, rows[-1].seq)
    return len(rows)


def _audience_names(conn: Connection, ids: Iterable[str]) -> dict[str, str]:
    query = sa.select(audiences.c.id, audiences.c.name).where(audiences.c.id.in_(sorted(ids)))
    return {row.id: row.name for row in conn.execute(query)}
