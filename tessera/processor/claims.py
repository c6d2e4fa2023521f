"""Claims on the stages' positions: reading and holding a stage's row (`processor_state`)
for a transaction, optimistically on SQLite and by row lock on PostgreSQL, and the
partitions' rows of the derived stage."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from tessera.audiences.stage import (
    Resident,
)
from tessera.errors import TesseraError
from tessera.processor.models import (
    DERIVED,
    PARTITION_NAMES,
    partition_name,
    processor_state,
)


class PositionMoved(TesseraError):
    """Another processor applied the batch first (SQLite's optimistic claim); retry."""


class LayoutChanged(PositionMoved):
    """The derived stage runs in another number of partitions than this process's
    setting: `ensure_layout` levels them and lays out this process's."""


@dataclass
class Claim:
    name: str
    position: int
    unattributed: int
    version: int  # the row's version; once `locked`, the one this transaction leaves
    locked: bool
    partitions: int = 1  # on the derived row: the partitions the stage runs in

    @property
    def seen(self) -> int:
        """The version the row had before this transaction bumped it."""
        return self.version - 1 if self.locked else self.version


def read_claim(conn: Connection, name: str, *, lock: bool) -> Claim:
    """Read this processor's position; with `lock`, hold its row for the transaction.

    PostgreSQL locks at once: processors take turns, and row locks do not block ingest.
    SQLite has one write lock for the whole file, and holding it while a batch is parsed
    and resolved stalls every ingest commit behind it; there the claim is optimistic: the
    position is read without a lock, and `confirm` takes the lock just before the flush,
    refusing the batch if another processor moved the position meanwhile.
    """
    now = datetime.now(UTC)
    if lock:
        hold = (
            sa.update(processor_state)
            .where(processor_state.c.name == name)
            .values(updated_at=now, version=processor_state.c.version + 1)
        )
        if conn.execute(hold).rowcount == 0:
            # A new store: another process may be creating the row at this moment too
            # (a plain INSERT then failed on the key), so create it if absent, then hold.
            module: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
            conn.execute(
                module.insert(processor_state)
                .values(name=name, position=0, unattributed_events=0, version=0, updated_at=now)
                .on_conflict_do_nothing()
            )
            conn.execute(hold)
    row = conn.execute(
        sa.select(
            processor_state.c.position,
            processor_state.c.unattributed_events,
            processor_state.c.version,
            processor_state.c.partitions,
        ).where(processor_state.c.name == name)
    ).first()
    if row is None:
        return Claim(name, 0, 0, -1, locked=False)
    return Claim(
        name,
        int(row.position),
        int(row.unattributed_events),
        int(row.version),
        lock,
        int(row.partitions),
    )


def confirm(conn: Connection, claim: Claim, *, bump: bool = True) -> None:
    """Take the position's row (SQLite: the write lock) unless already held; raise
    PositionMoved if another processor changed it since `claim` was read. Without `bump`
    the row is left as it was (a partition held for a merge: see `try_partition`)."""
    if claim.locked:
        return
    now = datetime.now(UTC)
    if claim.version < 0:
        inserted = conn.execute(
            sqlite.insert(processor_state)
            .values(name=claim.name, position=0, unattributed_events=0, version=0, updated_at=now)
            .on_conflict_do_nothing()
        )
        moved = inserted.rowcount != 1
    else:
        updated = conn.execute(
            sa.update(processor_state)
            .where(
                processor_state.c.name == claim.name,
                processor_state.c.version == claim.version,
            )
            .values(
                {"updated_at": now, "version": claim.version + 1}
                if bump
                else {"version": claim.version}
            )
        )
        moved = updated.rowcount != 1
    if moved:
        raise PositionMoved(f"processor {claim.name!r} moved on; the batch is retried")
    if bump:
        claim.version += 1
    claim.locked = True


def lock_position(conn: Connection, name: str) -> Claim:
    """Hold this processor's position for the transaction (unmerge, rebuild, failures)."""
    return read_claim(conn, name, lock=True)


@contextlib.contextmanager
def dropped_on_failure(resident: Resident | None) -> Iterator[None]:
    """A transaction that fails (or is refused: `PositionMoved`) leaves the resident
    working set empty: what it lent may have been changed in memory."""
    try:
        yield
    except BaseException:
        if resident is not None:
            resident.clear()
        raise


def set_position(conn: Connection, name: str, position: int) -> None:
    conn.execute(
        sa.update(processor_state).where(processor_state.c.name == name).values(position=position)
    )


def position_of(conn: Connection, name: str) -> int:
    found = conn.execute(
        sa.select(processor_state.c.position).where(processor_state.c.name == name)
    ).scalar()
    return int(found or 0)


def hold_partitions(conn: Connection) -> list[Claim]:
    """Wait for and hold every partition's row (for work over the whole stage)."""
    names = list(
        conn.execute(
            sa.select(processor_state.c.name)
            .where(processor_state.c.name.like(PARTITION_NAMES))
            .order_by(processor_state.c.name)
        ).scalars()
    )
    return [lock_position(conn, name) for name in names]


def partition_positions(conn: Connection) -> dict[int, int]:
    return {
        int(name.rsplit(".", 1)[1]): int(position)
        for name, position in conn.execute(
            sa.select(processor_state.c.name, processor_state.c.position).where(
                processor_state.c.name.like(PARTITION_NAMES)
            )
        )
    }


def try_partition(conn: Connection, partition: int, *, bump: bool = True) -> Claim | None:
    """Hold one partition's row without waiting; None when another worker holds it (or
    it does not exist). SQLite: an optimistic claim, confirmed before the flush. Without
    `bump` (a merge holding the absorbed profile's partition) the row's version is left
    alone, so that partition keeps its resident working set: the profile absorbed has no
    events after the merge, and will not be lent again."""
    name = partition_name(partition)
    if conn.dialect.name != "postgresql":
        claim = read_claim(conn, name, lock=False)
        return claim if claim.version >= 0 else None
    row = conn.execute(
        sa.select(processor_state.c.position, processor_state.c.version)
        .where(processor_state.c.name == name)
        .with_for_update(skip_locked=True)
    ).first()
    if row is None:
        return None
    if not bump:
        return Claim(name, int(row.position), 0, int(row.version), locked=True)
    conn.execute(
        sa.update(processor_state)
        .where(processor_state.c.name == name)
        .values(updated_at=datetime.now(UTC), version=processor_state.c.version + 1)
    )
    return Claim(name, int(row.position), 0, int(row.version) + 1, locked=True)


def hold_stage(conn: Connection, partitions: int) -> Claim:
    stage = lock_position(conn, DERIVED)
    if stage.partitions != partitions:
        raise LayoutChanged(
            f"the derived stage runs in {stage.partitions} partitions, not {partitions}"
        )
    return stage


def set_stage_position(conn: Connection) -> None:
    """The stage's position: the smallest partition's (every event up to it is derived)."""
    lowest = (
        sa.select(sa.func.min(processor_state.c.position))
        .where(processor_state.c.name.like(PARTITION_NAMES))
        .scalar_subquery()
    )
    conn.execute(
        sa.update(processor_state).where(processor_state.c.name == DERIVED).values(position=lowest)
    )
