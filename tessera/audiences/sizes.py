"""Counts the store keeps about audiences so that pages read them instead of counting
rows: each audience's size, and its entries and exits per UTC day. Both move with every
entry and exit in the transaction that writes them.

They are derived state like the members and the change stream they count: rebuild
empties all of them, and the re-derivation counts again. An audience with no size row has
no members; a day without a row had no change.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.audiences.models import (
    audience_daily_changes,
    audience_size_snapshots,
    audience_sizes,
)
from tessera.store.upsert import bind_time


def count_members(
    conn: Connection,
    *,
    exits: Iterable[tuple[str, str, str]],
    entries: Iterable[tuple[str, str, str]],
    now: datetime,
) -> None:
    """Count the (audience, profile, cause) `entries` and `exits` whose member rows and
    change stream rows the caller has just written at `now`."""
    deltas: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # audience → [in, out]
    for audience_id, _, _ in entries:
        deltas[audience_id][0] += 1
    for audience_id, _, _ in exits:
        deltas[audience_id][1] += 1
    if not deltas:
        return
    # In audience order, so two writers on PostgreSQL lock the rows in the same order.
    changed = sorted(deltas.items())
    sqlite = conn.dialect.name == "sqlite"
    mark = "?" if sqlite else "%s"
    moment = bind_time(conn, now)
    day = now.astimezone(UTC).date()
    sizes = [(aid, came - left, moment) for aid, (came, left) in changed if came != left]
    if sizes:
        conn.exec_driver_sql(
            "INSERT INTO audience_sizes (audience_id, members, updated_at) "
            f"VALUES ({mark}, {mark}, {mark}) ON CONFLICT (audience_id) DO UPDATE SET "
            "members = audience_sizes.members + excluded.members, "
            "updated_at = excluded.updated_at",
            sizes,
        )
    conn.exec_driver_sql(
        "INSERT INTO audience_daily_changes (audience_id, day, entered, exited) "
        f"VALUES ({mark}, {mark}, {mark}, {mark}) ON CONFLICT (audience_id, day) DO UPDATE SET "
        "entered = audience_daily_changes.entered + excluded.entered, "
        "exited = audience_daily_changes.exited + excluded.exited",
        [(aid, day.isoformat() if sqlite else day, came, left) for aid, (came, left) in changed],
    )


def sizes_of(conn: Connection, audience_ids: list[str] | None = None) -> dict[str, int]:
    """Current members of `audience_ids` (all audiences when None); absent ones have 0."""
    query = sa.select(audience_sizes.c.audience_id, audience_sizes.c.members)
    if audience_ids is not None:
        if not audience_ids:
            return {}
        query = query.where(audience_sizes.c.audience_id.in_(audience_ids))
    return {audience_id: int(members) for audience_id, members in conn.execute(query)}


def forget_audience(conn: Connection, *, audience_id: str) -> None:
    """A deleted audience's counts and its snapshots go with it."""
    conn.execute(audience_sizes.delete().where(audience_sizes.c.audience_id == audience_id))
    conn.execute(
        audience_daily_changes.delete().where(audience_daily_changes.c.audience_id == audience_id)
    )
    conn.execute(
        audience_size_snapshots.delete().where(audience_size_snapshots.c.audience_id == audience_id)
    )
