"""The processor's position in the event log, committed with the state it produced."""

from __future__ import annotations

import sqlalchemy as sa

from tessera.store.schema import metadata
from tessera.store.types import UtcDateTime

processor_state = sa.Table(
    "processor_state",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("unattributed_events", sa.BigInteger, nullable=False, default=0),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)
