"""The processor's position in the event log, committed with the state it produced."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.store.schema import metadata
from tessera.store.types import UtcDateTime

# The stages' rows (see tessera.processor): identity and profiles; computed traits and
# audiences.
MAIN = "main"
DERIVED = "derived"
STAGES = (MAIN, DERIVED)

processor_state = sa.Table(
    "processor_state",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("unattributed_events", sa.BigInteger, nullable=False, default=0),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    # Bumped by every claim, so SQLite's optimistic claim sees another processor's move.
    sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
    # Batches that failed and were retried, and the last reason: written by the processor
    # that failed, in a transaction of its own, so any process can report them.
    sa.Column("failed_batches", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_error_at", UtcDateTime, nullable=True),
    # On the derived row: how many partitions the stage runs in (1: none; see
    # tessera.processor's partitions); the partitions' rows are "derived.0", "derived.1"…
    sa.Column("partitions", sa.Integer, nullable=False, server_default="1"),
)


def partition_name(partition: int) -> str:
    """The position row of one partition of the derived stage."""
    return f"{DERIVED}.{partition}"


PARTITION_NAMES = f"{DERIVED}.%"  # LIKE pattern of every partition's row


def partition_of(profile_id: str, partitions: int) -> int:
    """The partition of the derived stage that applies `profile_id`'s events: profile ids
    are "prf_<seq of the event that created them>", and the seq modulo the partitions
    spreads them evenly. `partition_sql` computes the same in the store."""
    return int(profile_id[4:]) % partitions


def partition_sql(column: sa.ColumnElement[str], partitions: int) -> sa.ColumnElement[int]:
    """`partition_of` as SQL over a profile id column (SQLite and PostgreSQL alike)."""
    return sa.cast(sa.func.substr(column, 5), sa.BigInteger) % partitions


def hold_processor(conn: Connection) -> None:
    """Wait for and hold both processor stages' position rows for the caller's transaction.

    For writers outside the processor that append to a stream the processor consumes
    in order (an audience deleted writes its members' exits): holding the rows serialises
    them with the processor, whichever stage runs where (the derived stage writes and
    reads that stream), so no change can commit behind the activation cursor. The main
    row first, then the derived one: the order every holder of both takes. On SQLite the
    update takes the write lock, and bumps `version` so a processor's optimistic claim is
    retried.
    """
    for name in (MAIN, DERIVED):
        conn.execute(
            sa.update(processor_state)
            .where(processor_state.c.name == name)
            .values(version=processor_state.c.version + 1)
        )
