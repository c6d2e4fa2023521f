"""activation: delivery figures per destination and hour, for the delivery charts

Revision ID: 0016
Revises: 0014
Create Date: 2026-12-03 18:00:00

`destination_hours` holds what `destination_counters` holds in all (sent, failed attempts,
dead, summed latency), per destination and UTC hour, written by the delivery worker in the
transaction that records a cycle. It starts empty: the counters since a destination was
created have no times to spread over.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tessera.store.types import UtcDateTime

revision = "0016"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "destination_hours",
        sa.Column("destination_id", sa.String(length=32), nullable=False),
        sa.Column("hour", UtcDateTime(), nullable=False),
        sa.Column("sent", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("dead", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("destination_id", "hour", name=op.f("pk_destination_hours")),
    )


def downgrade() -> None:
    op.drop_table("destination_hours")
