"""Audience sizes over time: the worker job that snapshots every audience's size once an
hour, the size trend those snapshots give, and entries and exits per day from the change
stream.

Snapshots read the kept sizes (`sizes.py`), so an hour's round costs one small query,
whatever the audiences' sizes. They are observations, not derived state: rebuild keeps
them (a rebuild's dip in size is what happened). Entries and exits per day read the kept
daily counts of the change stream (`sizes.py`); rebuild empties the stream and them, so
after a rebuild its day shows every member entering.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from tessera.audiences.models import (
    audience_daily_changes,
    audience_size_snapshots,
    audience_sizes,
    audiences,
)
from tessera.errors import NotFound

if TYPE_CHECKING:
    from tessera.config import Settings

snapshots = audience_size_snapshots

# Within an hour whose snapshots are taken, the job looks again this often (real time):
# an audience created meanwhile gets its first point within seconds, not at the next hour.
# A look that finds every row taken is one read, in a transaction that writes nothing.
LOOK_AGAIN_SECONDS = 5.0
KEEP_DAYS = 400  # snapshots older than this are deleted (the trend API reads at most 400)


def hour_of(moment: datetime) -> datetime:
    """The UTC hour `moment` falls in."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def take_snapshots(conn: Connection, *, now: datetime) -> int:
    """Record the current size of every audience that has no snapshot for `now`'s hour;
    return how many were recorded. Idempotent per (audience, hour): a second call in the
    hour, or another worker's at the same time, writes nothing."""
    hour = hour_of(now)
    taken = sa.exists().where(snapshots.c.audience_id == audiences.c.id, snapshots.c.hour == hour)
    rows = [
        {"audience_id": audience_id, "hour": hour, "members": int(members), "taken_at": now}
        for audience_id, members in conn.execute(
            sa.select(audiences.c.id, sa.func.coalesce(audience_sizes.c.members, 0))
            .select_from(
                audiences.outerjoin(audience_sizes, audience_sizes.c.audience_id == audiences.c.id)
            )
            .where(~taken)
            .order_by(audiences.c.id)
        )
    ]
    if not rows:
        return 0
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(insert(snapshots).on_conflict_do_nothing(), rows)
    # Once an hour (a new hour's first round), the oldest go: the API reads KEEP_DAYS back.
    conn.execute(snapshots.delete().where(snapshots.c.hour < hour - timedelta(days=KEEP_DAYS)))
    return len(rows)


class SizeSnapshots:
    """The worker job (`tessera.worker_jobs`): once an hour, every audience's size. Between
    rounds a turn of the loop costs a comparison, not a query."""

    name = "audience_size_snapshots"

    def __init__(self, *, look_again_seconds: float = LOOK_AGAIN_SECONDS) -> None:
        self.look_again_seconds = look_again_seconds
        self._hour: datetime | None = None  # the hour whose round this process has done
        self._look_again_at = 0.0  # time.monotonic() of the next look within that hour

    def run(self, engine: Engine, *, now: datetime) -> int:
        hour = hour_of(now)
        if hour == self._hour and time.monotonic() < self._look_again_at:
            return 0
        with engine.begin() as conn:
            taken = take_snapshots(conn, now=now)
        self._hour = hour
        self._look_again_at = time.monotonic() + self.look_again_seconds
        return taken


def size_snapshots(settings: Settings) -> SizeSnapshots:
    """The entry point's factory: `tessera serve` and `tessera worker` load it."""
    return SizeSnapshots()


def _check_audience(conn: Connection, audience_id: str) -> None:
    found = conn.execute(sa.select(audiences.c.id).where(audiences.c.id == audience_id)).first()
    if found is None:
        raise NotFound(f"there is no audience {audience_id!r}; GET /api/v1/audiences lists them")


def size_trend(
    conn: Connection, *, audience_id: str, since: datetime, until: datetime | None = None
) -> list[dict[str, Any]]:
    """The audience's hourly snapshots from `since` (up to `until`), oldest first:
    `{"at": hour, "size": members}`. An hour the worker did not run has no point."""
    _check_audience(conn, audience_id)
    query = (
        sa.select(snapshots.c.hour, snapshots.c.members)
        .where(snapshots.c.audience_id == audience_id, snapshots.c.hour >= hour_of(since))
        .order_by(snapshots.c.hour)
    )
    if until is not None:
        query = query.where(snapshots.c.hour <= until)
    return [{"at": hour, "size": int(members)} for hour, members in conn.execute(query)]


def recent_snapshots(
    conn: Connection, *, audience_ids: list[str], since: datetime
) -> dict[str, list[tuple[datetime, int]]]:
    """The audiences' snapshots from `since`, oldest first, in one query (list pages): a
    range of the primary key per audience, however long the history is."""
    found: dict[str, list[tuple[datetime, int]]] = {}
    if not audience_ids:
        return found
    for audience_id, hour, members in conn.execute(
        sa.select(snapshots.c.audience_id, snapshots.c.hour, snapshots.c.members)
        .where(snapshots.c.audience_id.in_(audience_ids), snapshots.c.hour >= hour_of(since))
        .order_by(snapshots.c.audience_id, snapshots.c.hour)
    ):
        found.setdefault(audience_id, []).append((hour, int(members)))
    return found


def daily_changes(
    conn: Connection, *, audience_id: str, days: int, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Entries and exits of the audience per UTC day, for the `days` days up to and
    including `now`'s (default: the wall clock's), oldest first, every day present (0 when
    nothing happened): at most `days` rows of the kept daily counts."""
    if days < 1:
        raise ValueError(f"days is at least 1, not {days}")
    _check_audience(conn, audience_id)
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    counts = {
        row.day: (int(row.entered), int(row.exited))
        for row in conn.execute(
            sa.select(
                audience_daily_changes.c.day,
                audience_daily_changes.c.entered,
                audience_daily_changes.c.exited,
            ).where(
                audience_daily_changes.c.audience_id == audience_id,
                audience_daily_changes.c.day >= first,
                audience_daily_changes.c.day <= today,
            )
        )
    }
    out = []
    for offset in range(days):
        day: date = first + timedelta(days=offset)
        entered, exited = counts.get(day, (0, 0))
        out.append({"day": day, "entered": entered, "exited": exited})
    return out
