"""The delivery worker's reads and writes: destination leases, the next messages that may go
(per person in order), the profiles they are about, and the outcome of each send.

Order: a person's message may go only when no earlier message of theirs for the same
destination is still pending. Messages that failed (attempts > 0) are in a small partial
index, so finding the people held back by a retry never scans the whole backlog.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.activation.activity import add_hour, prune_hours
from tessera.activation.models import destination_counters, destination_state, destinations, outbox
from tessera.identity.models import identities
from tessera.profiles.models import profile_consent, profile_traits, profiles
from tessera.store.chunks import chunked
from tessera.store.types import UtcDateTime
from tessera.store.upsert import bind_time

PENDING, DELIVERED, DEAD, BLOCKED = "pending", "delivered", "dead", "blocked"
SCAN_ROWS = 2000


@dataclass
class Lease:
    destination_id: str
    name: str
    type: str
    config: dict[str, Any]
    subscriptions: list[Any]
    mapping: dict[str, Any]
    consent_categories: list[str]
    updated_at: datetime
    paused_at: datetime | None
    next_probe_at: datetime | None
    consecutive_failures: int
    last_delivery_at: datetime | None


@dataclass(slots=True)
class Pending:
    id: int
    person: str
    kind: str
    message_id: str
    payload: str
    created_at: datetime
    attempts: int
    expires_at: datetime


@dataclass
class Profile:
    id: str
    traits: dict[str, Any] = field(default_factory=dict)
    identities: dict[str, list[str]] = field(default_factory=dict)
    consent: dict[str, bool] = field(default_factory=dict)


def enabled_destinations(conn: Connection) -> list[str]:
    query = sa.select(destinations.c.id).where(destinations.c.enabled).order_by(destinations.c.id)
    return [destination_id for (destination_id,) in conn.execute(query)]


def acquire(
    conn: Connection, destination_id: str, *, owner: str, now: datetime, lease: timedelta
) -> Lease | None:
    """Take or renew this worker's lease on a destination; None if another worker holds it
    (or the destination is gone or off)."""
    state = destination_state.c
    exists = conn.execute(
        sa.select(state.destination_id).where(state.destination_id == destination_id)
    ).first()
    if exists is None:
        conn.execute(
            destination_state.insert().values(destination_id=destination_id, consecutive_failures=0)
        )
    taken = conn.execute(
        destination_state.update()
        .where(
            state.destination_id == destination_id,
            sa.or_(
                state.lease_owner.is_(None), state.lease_owner == owner, state.lease_until < now
            ),
        )
        .values(lease_owner=owner, lease_until=now + lease)
    )
    if taken.rowcount != 1:
        return None
    row = conn.execute(
        sa.select(destinations, destination_state)
        .join(destination_state, destination_state.c.destination_id == destinations.c.id)
        .where(destinations.c.id == destination_id, destinations.c.enabled)
    ).first()
    if row is None:
        return None
    return Lease(
        destination_id=destination_id,
        name=row.name,
        type=row.type,
        config=orjson.loads(row.config),
        subscriptions=orjson.loads(row.subscriptions),
        mapping=orjson.loads(row.mapping),
        consent_categories=orjson.loads(row.consent_categories),
        updated_at=row.updated_at,
        paused_at=row.paused_at,
        next_probe_at=row.next_probe_at,
        consecutive_failures=int(row.consecutive_failures or 0),
        last_delivery_at=row.last_delivery_at,
    )


def release(conn: Connection, destination_id: str, *, owner: str) -> None:
    conn.execute(
        destination_state.update()
        .where(
            destination_state.c.destination_id == destination_id,
            destination_state.c.lease_owner == owner,
        )
        .values(lease_owner=None, lease_until=None)
    )


def next_messages(
    conn: Connection, destination_id: str, *, now: datetime, limit: int
) -> list[Pending]:
    """Up to `limit` messages that may go now, in outbox order; a person whose earlier
    message waits for a retry has none of their later ones here."""
    held: dict[str, int] = {}  # person → their first message that is not due yet
    retrying = conn.execute(
        sa.select(outbox.c.person, sa.func.min(outbox.c.id))
        .where(
            outbox.c.destination_id == destination_id,
            outbox.c.state == PENDING,
            outbox.c.attempts > 0,
            outbox.c.next_attempt_at > now,
        )
        .group_by(outbox.c.person)
    )
    for person, first in retrying:
        held[person] = int(first)
    found: list[Pending] = []
    after = 0
    scanned = 0
    while len(found) < limit and scanned < 20 * limit:
        rows = list(
            conn.execute(
                sa.select(
                    outbox.c.id,
                    outbox.c.person,
                    outbox.c.kind,
                    outbox.c.message_id,
                    outbox.c.payload,
                    outbox.c.created_at,
                    outbox.c.attempts,
                    outbox.c.expires_at,
                    outbox.c.next_attempt_at,
                )
                .where(
                    outbox.c.destination_id == destination_id,
                    outbox.c.state == PENDING,
                    outbox.c.id > after,
                )
                .order_by(outbox.c.id)
                .limit(SCAN_ROWS)
            )
        )
        for row in rows:
            first = held.get(row.person)
            if first is not None and row.id >= first:
                continue
            if row.next_attempt_at > now:  # only retried rows are ever not due
                held[row.person] = row.id
                continue
            found.append(
                Pending(
                    row.id,
                    row.person,
                    row.kind,
                    row.message_id,
                    row.payload,
                    row.created_at,
                    int(row.attempts),
                    row.expires_at,
                )
            )
            if len(found) == limit:
                break
        scanned += len(rows)
        if len(rows) < SCAN_ROWS:
            break
        after = rows[-1].id
    return found


def load_profiles(conn: Connection, ids: Iterable[str]) -> dict[str, Profile]:
    """The profiles messages are about, as they are now: an absorbed id gives its
    survivor, so a message queued before a merge carries the merged profile."""
    wanted = sorted(set(ids))
    final: dict[str, str] = {}
    for chunk in chunked(wanted):
        query = sa.select(profiles.c.id, profiles.c.merged_into).where(profiles.c.id.in_(chunk))
        for row in conn.execute(query):
            final[row.id] = row.merged_into or row.id
    found = {pid: Profile(pid) for pid in set(final.values())}
    keys = sorted(found)
    for chunk in chunked(keys):
        for trait in conn.execute(
            sa.select(
                profile_traits.c.profile_id, profile_traits.c.name, profile_traits.c.value
            ).where(profile_traits.c.profile_id.in_(chunk))
        ):
            found[trait.profile_id].traits[trait.name] = orjson.loads(trait.value)
        for ident in conn.execute(
            sa.select(identities.c.profile_id, identities.c.type, identities.c.value)
            .where(identities.c.profile_id.in_(chunk))
            .order_by(identities.c.profile_id, identities.c.first_seq)
        ):
            found[ident.profile_id].identities.setdefault(ident.type, []).append(ident.value)
        for choice in conn.execute(
            sa.select(
                profile_consent.c.profile_id, profile_consent.c.category, profile_consent.c.granted
            ).where(profile_consent.c.profile_id.in_(chunk))
        ):
            found[choice.profile_id].consent[choice.category] = bool(choice.granted)
    return {pid: found[survivor] for pid, survivor in final.items()}


@dataclass
class Outcomes:
    """What one delivery cycle did, written back in one transaction."""

    delivered: list[int] = field(default_factory=list)
    blocked: list[int] = field(default_factory=list)
    # id → (next attempt, error, status)
    retry: dict[int, tuple[datetime, str, int | None]] = field(default_factory=dict)
    dead: dict[int, tuple[str, int | None]] = field(default_factory=dict)  # id → (error, status)
    attempts: dict[int, int] = field(default_factory=dict)  # id → attempts before this cycle
    latency_ms: float = 0.0  # summed over delivered messages, enqueue to delivered
    calls_ok: int = 0
    calls_failed: int = 0  # failures that count towards pausing (not throttling)
    last_error: str | None = None


def record(
    conn: Connection,
    destination_id: str,
    outcomes: Outcomes,
    *,
    now: datetime,
    pause_after: int,
    probe: timedelta,
    delivered_batch: bool = False,
) -> None:
    """Write back a cycle: message states, counters, and the destination's health (a run of
    failed calls pauses it; any call that works un-pauses it)."""
    sqlite = conn.dialect.name == "sqlite"
    mark = "?" if sqlite else "%s"
    at = bind_time(conn, now)
    if outcomes.delivered:
        conn.exec_driver_sql(
            "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, "
            f"finished_at = {mark}, last_error = NULL WHERE id = {mark}",
            [(at, oid) for oid in outcomes.delivered],
        )
    if outcomes.blocked:
        conn.exec_driver_sql(
            f"UPDATE outbox SET state = 'blocked', finished_at = {mark}, "
            f"last_error = 'no consent' WHERE id = {mark}",
            [(at, oid) for oid in outcomes.blocked],
        )
    if outcomes.retry:
        conn.exec_driver_sql(
            f"UPDATE outbox SET attempts = attempts + 1, next_attempt_at = {mark}, "
            f"last_error = {mark}, last_status = {mark} WHERE id = {mark}",
            [
                (bind_time(conn, when), error[:2000], status, oid)
                for oid, (when, error, status) in outcomes.retry.items()
            ],
        )
    if outcomes.dead:
        conn.exec_driver_sql(
            f"UPDATE outbox SET state = 'dead', attempts = attempts + 1, finished_at = {mark}, "
            f"last_error = {mark}, last_status = {mark} WHERE id = {mark}",
            [(at, error[:2000], status, oid) for oid, (error, status) in outcomes.dead.items()],
        )
    counts = {
        "sent": len(outcomes.delivered),
        "failed": len(outcomes.retry) + len(outcomes.dead),
        "dead": len(outcomes.dead),
        "blocked": len(outcomes.blocked),
        "latency_ms": round(outcomes.latency_ms),
    }
    add_counts(conn, destination_id, counts)
    add_hour(conn, destination_id, counts, now=now)
    state = destination_state.c
    values: dict[str, Any] = {}
    if outcomes.calls_ok:
        values.update(
            consecutive_failures=0,
            paused_at=None,
            paused_reason=None,
            next_probe_at=None,
            last_success_at=now,
        )
    elif outcomes.calls_failed:
        # Computed by the UPDATE from the row as it is then, not read first: a resume that
        # commits in between must not be undone by a count read before it (that left a
        # destination over the limit yet not paused, which then sent nothing at all).
        failures = state.consecutive_failures + outcomes.calls_failed
        reached = failures >= pause_after
        pausing = sa.and_(reached, state.paused_at.is_(None))
        reason = f" calls failed in a row; last: {outcomes.last_error}"
        values.update(
            consecutive_failures=failures,
            next_probe_at=sa.case(
                (reached, sa.literal(now + probe, UtcDateTime)), else_=state.next_probe_at
            ),
            paused_at=sa.case((pausing, sa.literal(now, UtcDateTime)), else_=state.paused_at),
            paused_reason=sa.case(
                (pausing, sa.cast(failures, sa.String) + sa.literal(reason, sa.Text)),
                else_=state.paused_reason,
            ),
        )
    if outcomes.last_error is not None and not outcomes.calls_ok:
        values.update(last_error=outcomes.last_error[:2000], last_error_at=now)
    if delivered_batch:
        values.update(last_delivery_at=now)
    if values:
        conn.execute(
            destination_state.update()
            .where(state.destination_id == destination_id)
            .values(**values)
        )


def add_counts(conn: Connection, destination_id: str, counts: dict[str, int]) -> None:
    counts = {name: count for name, count in counts.items() if count}
    if not counts:
        return
    table = destination_counters
    for name, count in counts.items():
        updated = conn.execute(
            table.update()
            .where(table.c.destination_id == destination_id, table.c.name == name)
            .values(count=table.c["count"] + count)
        )
        if updated.rowcount == 0:
            conn.execute(
                table.insert().values(destination_id=destination_id, name=name, count=count)
            )


def expire(conn: Connection, destination_id: str, *, now: datetime) -> int:
    """Pending messages past their maximum age become dead letters, keeping their error."""
    expired = [
        oid
        for (oid,) in conn.execute(
            sa.select(outbox.c.id).where(
                outbox.c.destination_id == destination_id,
                outbox.c.state == PENDING,
                outbox.c.expires_at <= now,
            )
        )
    ]
    for chunk in chunked(expired):
        conn.execute(
            outbox.update()
            .where(outbox.c.id.in_(chunk))
            .values(
                state=DEAD,
                finished_at=now,
                last_error=sa.func.coalesce(outbox.c.last_error, "never delivered")
                + " (retried until its maximum age)",
            )
        )
    add_counts(conn, destination_id, {"dead": len(expired)})
    add_hour(conn, destination_id, {"dead": len(expired)}, now=now)
    return len(expired)


def prune(conn: Connection, *, before: datetime, now: datetime) -> int:
    """Forget delivered and consent-blocked messages older than the log's retention, and
    the hourly figures older than the charts show."""
    result = conn.execute(
        outbox.delete().where(
            outbox.c.state.in_((DELIVERED, BLOCKED)), outbox.c.finished_at < before
        )
    )
    prune_hours(conn, now=now)
    return int(result.rowcount or 0)


def resume(conn: Connection, destination_id: str, *, now: datetime) -> None:
    conn.execute(
        destination_state.update()
        .where(destination_state.c.destination_id == destination_id)
        .values(consecutive_failures=0, paused_at=None, paused_reason=None, next_probe_at=None)
    )
    # Messages waiting out a backoff go now.
    conn.execute(
        outbox.update()
        .where(
            outbox.c.destination_id == destination_id,
            outbox.c.state == PENDING,
            outbox.c.next_attempt_at > now,
        )
        .values(next_attempt_at=now)
    )
