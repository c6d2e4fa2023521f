"""What the processor reports of itself: its lag, failed batches, and identifiers the rules
left unlinked."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from tessera.eventlog.models import events
from tessera.identity.models import dropped_identifiers
from tessera.processor.claims import lock_position, position_of
from tessera.processor.models import (
    MAIN,
    processor_state,
)

log = logging.getLogger(__name__)


@dataclass
class Lag:
    events: int
    oldest_age_seconds: float | None
    position: int


@dataclass
class Health:
    failed_batches: int
    last_error: str | None
    last_error_at: datetime | None


def health(conn: Connection, *, name: str = MAIN) -> Health:
    row = conn.execute(
        sa.select(
            processor_state.c.failed_batches,
            processor_state.c.last_error,
            processor_state.c.last_error_at,
        ).where(processor_state.c.name == name)
    ).first()
    if row is None:
        return Health(0, None, None)
    return Health(int(row.failed_batches), row.last_error, row.last_error_at)


def record_failure(engine: Engine, error: BaseException, *, name: str = MAIN) -> None:
    """Count a failed batch and keep its reason, in a transaction of its own (the batch's
    was rolled back). Best effort: when the store itself is down, the log line remains."""
    try:
        with engine.begin() as conn:
            lock_position(conn, name)
            conn.execute(
                sa.update(processor_state)
                .where(processor_state.c.name == name)
                .values(
                    failed_batches=processor_state.c.failed_batches + 1,
                    last_error=repr(error)[:2000],
                    last_error_at=datetime.now(UTC),
                )
            )
    except sa.exc.SQLAlchemyError:
        pass


def lag(conn: Connection, *, name: str = MAIN, at_most: int | None = None) -> Lag:
    """Events after the stage's position, and the age of the oldest. With `at_most`, a
    page that must answer at once however far behind the stage is (the dashboard): the
    count stops there, and the oldest is the first waiting event in log order."""
    position = position_of(conn, name)
    if at_most is not None:
        page = (
            sa.select(events.c.seq)
            .where(events.c.seq > position)
            .order_by(events.c.seq)
            .limit(at_most)
            .subquery()
        )
        first = (
            sa.select(events.c.received_at)
            .where(events.c.seq > position)
            .order_by(events.c.seq)
            .limit(1)
        )
        count = sa.select(sa.func.count()).select_from(page)
        waiting = conn.execute(sa.select(count.scalar_subquery(), first.scalar_subquery())).one()
    else:
        waiting = conn.execute(
            sa.select(sa.func.count(), sa.func.min(events.c.received_at)).where(
                events.c.seq > position
            )
        ).one()
    oldest = waiting[1]
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else None
    return Lag(events=int(waiting[0]), oldest_age_seconds=age, position=position)


def count_drops(conn: Connection, drops: Counter[str]) -> None:
    if not drops:
        return
    module: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = module.insert(dropped_identifiers)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["reason"],
            set_={"count": dropped_identifiers.c.count + statement.excluded["count"]},
        ),
        [{"reason": reason[:64], "count": count} for reason, count in sorted(drops.items())],
    )


def dropped_counts(conn: Connection) -> dict[str, int]:
    """Identifiers the rules left unlinked since the last rebuild, by reason."""
    table = dropped_identifiers
    query = sa.select(table.c.reason, table.c["count"]).order_by(table.c.reason)
    return {reason: int(count) for reason, count in conn.execute(query)}
