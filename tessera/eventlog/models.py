"""The event log table: every accepted message, immutable, in `seq` order.

`payload` holds the whole normalised message as JSON text (context, properties, traits,
integrations and the four timestamps), so later stages and `tessera rebuild` lose nothing.
The other columns are copies for indexing and ordering.
"""

from __future__ import annotations

import sqlalchemy as sa

from tessera.store.schema import metadata
from tessera.store.types import BigIntegerPK, UtcDateTime

events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", BigIntegerPK, primary_key=True, autoincrement=True),
    sa.Column(
        "source_id", sa.Integer, sa.ForeignKey("sources.id", ondelete="RESTRICT"), nullable=False
    ),
    sa.Column("message_id", sa.String(255), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("name", sa.Text, nullable=True),
    sa.Column("user_id", sa.String(255), nullable=True),
    sa.Column("anonymous_id", sa.String(255), nullable=True),
    sa.Column("timestamp", UtcDateTime, nullable=False),
    sa.Column("original_timestamp", UtcDateTime, nullable=True),
    sa.Column("sent_at", UtcDateTime, nullable=True),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    # Dedupe: one row per messageId per source, for as long as the event is kept.
    sa.UniqueConstraint("source_id", "message_id"),
)
