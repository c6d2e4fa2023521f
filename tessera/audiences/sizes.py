"""Audience sizes as the store keeps them: a count per audience moved by every entry and
exit in the transaction that writes them, so pages read a size instead of counting members.

`audience_sizes` is derived state like the members it counts: rebuild empties both, and
the re-derivation counts again. An audience with no row has no members.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.audiences.models import audience_size_snapshots, audience_sizes


def count_members(
    conn: Connection,
    *,
    exits: Iterable[tuple[str, str, str]],
    entries: Iterable[tuple[str, str, str]],
    now: datetime | str,
) -> None:
    """Move the sizes by the (audience, profile, cause) `entries` and `exits` whose member
    rows the caller has just written. `now` is a driver parameter (`bind_time`)."""
    deltas: dict[str, int] = defaultdict(int)
    for audience_id, _, _ in exits:
        deltas[audience_id] -= 1
    for audience_id, _, _ in entries:
        deltas[audience_id] += 1
    # In audience order, so two writers on PostgreSQL lock the rows in the same order.
    rows = [(aid, delta, now) for aid, delta in sorted(deltas.items()) if delta]
    if not rows:
        return
    mark = "?" if conn.dialect.name == "sqlite" else "%s"
    conn.exec_driver_sql(
        "INSERT INTO audience_sizes (audience_id, members, updated_at) "
        f"VALUES ({mark}, {mark}, {mark}) ON CONFLICT (audience_id) DO UPDATE SET "
        "members = audience_sizes.members + excluded.members, updated_at = excluded.updated_at",
        rows,
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
    """A deleted audience's size and its snapshots go with it."""
    conn.execute(audience_sizes.delete().where(audience_sizes.c.audience_id == audience_id))
    conn.execute(
        audience_size_snapshots.delete().where(audience_size_snapshots.c.audience_id == audience_id)
    )
