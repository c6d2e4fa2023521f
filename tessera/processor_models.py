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
)


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
