"""The recount worker job: profiles, identified profiles and audience sizes counted again
in bounded steps, and per-minute counts past their retention pruned.

Why a recount and not counters kept per batch: whether a profile is identified changes
with merges (an absorbed profile's identifiers move to its survivor), unmerges and
erasure, and the batch stage runs after identity has written, so it cannot see what a
profile was before the batch without a shadow copy of a flag per profile. A pass in
steps of `PROFILE_STEP` profiles (an index range each, ~20 ms at 1M profiles) is exact as
of its end for what it has passed, holds no lock for long, and costs about 1% of a core:
the next pass starts `PASS_COST_SHARE` times its own duration later (at least
`MIN_INTERVAL`, at most the setting). Readers show when the count was taken.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tessera.audiences.models import audience_members, audiences
from tessera.identity.models import identities
from tessera.profiles.models import profiles
from tessera.schema.models import (
    minute_of,
    schema_audience_sizes,
    schema_event_minutes,
    schema_recounts,
)
from tessera.store.upsert import upsert

if TYPE_CHECKING:
    from tessera.config import Settings

PROFILES, AUDIENCES = "profiles", "audiences"
# The identifier types that make a profile "identified" (anonymous ids, devices do not).
IDENTIFYING = ("email", "user_id", "phone")
PROFILE_STEP = 10_000
MEMBER_STEP = 50_000
PASS_COST_SHARE = 100
MIN_INTERVAL = timedelta(seconds=10)
# Per-minute rows pruned per step: the oldest hour at most; looked for once a minute.
PRUNE_SPAN = 60
PRUNE_EVERY = timedelta(minutes=1)


class _Lost(Exception):
    """Another worker moved the recount on meanwhile (SQLite's compare-and-set)."""


Step = Callable[[Connection, Any, datetime], tuple[dict[str, Any], int, bool]]


class RecountJob:
    """The worker job (`tessera.worker_jobs` entry `schema_recount`)."""

    name = "schema_recount"

    def __init__(
        self,
        *,
        max_interval: timedelta,
        minutes_retention: timedelta,
        profile_step: int = PROFILE_STEP,
        member_step: int = MEMBER_STEP,
    ) -> None:
        self.max_interval = max_interval
        self.minutes_retention = minutes_retention
        self.profile_step = profile_step
        self.member_step = member_step
        # When there is nothing to look at before (the loop runs the job after every
        # batch; an idle recount then costs no transaction). Another worker only ever
        # moves a pass later, so waiting on this process's view loses nothing.
        self._not_before: dict[str, datetime] = {}

    def run(self, engine: Engine, *, now: datetime) -> int:
        done = self._prune(engine, now)
        done += self._step(engine, PROFILES, now, self._count_profiles)
        done += self._step(engine, AUDIENCES, now, self._count_audiences)
        return done

    def _due(self, name: str, now: datetime) -> bool:
        not_before = self._not_before.get(name)
        return not_before is None or now >= not_before

    def _prune(self, engine: Engine, now: datetime) -> int:
        if not self._due("prune", now):
            return 0
        table = schema_event_minutes
        cutoff = minute_of(now - self.minutes_retention)
        with engine.begin() as conn:
            oldest = conn.execute(sa.select(sa.func.min(table.c.minute))).scalar()
            if oldest is None or oldest >= cutoff:
                self._not_before["prune"] = now + PRUNE_EVERY
                return 0
            bound = min(cutoff, oldest + PRUNE_SPAN)
            deleted = conn.execute(table.delete().where(table.c.minute < bound)).rowcount
        return max(1, int(deleted or 0))

    def _step(self, engine: Engine, name: str, now: datetime, work: Step) -> int:
        """One bounded step of recount `name`: start a pass when one is due, count the
        next chunk, finish the pass when the chunk was the last."""
        if not self._due(name, now):
            return 0
        try:
            with engine.begin() as conn:
                row = _claim(conn, name)
                if row is None:
                    return 0  # another worker holds it
                state = SimpleNamespace(**row._asdict())
                values: dict[str, Any] = {}
                if state.cursor is None:
                    if state.next_pass_at is not None and now < state.next_pass_at:
                        self._not_before[name] = state.next_pass_at
                        return 0
                    values = {
                        "cursor": "",
                        "audience_id": None,
                        "partial_total": 0,
                        "partial_identified": 0,
                        "pass_started_at": now,
                        "busy_seconds": 0.0,
                    }
                    state.__dict__.update(values)
                started = time.monotonic()
                changes, done, finished = work(conn, state, now)
                values.update(changes)
                busy = state.busy_seconds + time.monotonic() - started
                values["busy_seconds"] = busy
                if finished:
                    wait = max(MIN_INTERVAL, busy * PASS_COST_SHARE * _SECOND)
                    wait = min(wait, self.max_interval)
                    self._not_before[name] = now + wait
                    values.update(
                        cursor=None, counted_at=now, pass_seconds=busy, next_pass_at=now + wait
                    )
                moved = conn.execute(
                    schema_recounts.update()
                    .where(
                        schema_recounts.c.name == name,
                        schema_recounts.c.version == state.version,
                    )
                    .values(version=state.version + 1, **values)
                ).rowcount
                if moved != 1:
                    raise _Lost
        except _Lost:
            return 0
        return max(1, done)

    def _count_profiles(
        self, conn: Connection, state: Any, now: datetime
    ) -> tuple[dict[str, Any], int, bool]:
        page = (
            sa.select(profiles.c.id, profiles.c.merged_into)
            .where(profiles.c.id > state.cursor)
            .order_by(profiles.c.id)
            .limit(self.profile_step)
            .subquery()
        )
        live = page.c.merged_into.is_(None)
        identified = sa.exists().where(
            identities.c.profile_id == page.c.id, identities.c.type.in_(IDENTIFYING)
        )
        row = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.max(page.c.id),
                sa.func.coalesce(sa.func.sum(sa.case((live, 1), else_=0)), 0),
                sa.func.coalesce(sa.func.sum(sa.case((sa.and_(live, identified), 1), else_=0)), 0),
            )
        ).one()
        seen, last, total, known = int(row[0]), row[1], int(row[2]), int(row[3])
        changes: dict[str, Any] = {
            "cursor": last if last is not None else state.cursor,
            "partial_total": state.partial_total + total,
            "partial_identified": state.partial_identified + known,
        }
        finished = seen < self.profile_step
        if finished:
            changes.update(total=changes["partial_total"], identified=changes["partial_identified"])
        return changes, seen, finished

    def _count_audiences(
        self, conn: Connection, state: Any, now: datetime
    ) -> tuple[dict[str, Any], int, bool]:
        """A chunk of the current audience's members; an audience whose count ends here
        gets its size, and the next audience (by id) is taken up."""
        audience = state.audience_id
        if audience is None:  # the pass starts
            audience = _next_audience(conn, after="")
            if audience is None:
                conn.execute(schema_audience_sizes.delete())
                return {}, 0, True
        page = (
            sa.select(audience_members.c.profile_id)
            .where(
                audience_members.c.audience_id == audience,
                audience_members.c.profile_id > state.cursor,
            )
            .order_by(audience_members.c.profile_id)
            .limit(self.member_step)
            .subquery()
        )
        seen, last = conn.execute(sa.select(sa.func.count(), sa.func.max(page.c.profile_id))).one()
        seen, size = int(seen), state.partial_total + int(seen)
        if seen == self.member_step:
            return {"audience_id": audience, "cursor": last, "partial_total": size}, seen, False
        upsert(
            conn,
            schema_audience_sizes,
            [{"audience_id": audience, "size": size, "counted_at": now}],
            keys=("audience_id",),
        )
        following = _next_audience(conn, after=audience)
        if following is not None:
            return {"audience_id": following, "cursor": "", "partial_total": 0}, max(1, seen), False
        # The pass is over: sizes of audiences deleted since are forgotten.
        conn.execute(
            schema_audience_sizes.delete().where(
                schema_audience_sizes.c.audience_id.not_in(sa.select(audiences.c.id))
            )
        )
        return {"audience_id": None, "partial_total": 0}, max(1, seen), True


_SECOND = timedelta(seconds=1)


def _claim(conn: Connection, name: str) -> Any:
    """The recount's row, locked for this step (on PostgreSQL, skipped while another
    worker holds it); created on first use."""
    query = (
        sa.select(schema_recounts)
        .where(schema_recounts.c.name == name)
        .with_for_update(skip_locked=True)
    )
    row = conn.execute(query).first()
    if row is not None:
        return row
    upsert(conn, schema_recounts, [{"name": name}], keys=("name",))  # the rest: defaults
    return conn.execute(query).first()


def _next_audience(conn: Connection, *, after: str) -> str | None:
    query = sa.select(sa.func.min(audiences.c.id)).where(audiences.c.id > after)
    found: str | None = conn.execute(query).scalar()
    return found


def create_job(settings: Settings) -> RecountJob:
    """The entry point's factory."""
    return RecountJob(
        max_interval=timedelta(seconds=settings.schema_recount_max_interval_seconds),
        minutes_retention=timedelta(days=settings.schema_minutes_retention_days),
    )
