"""processor: the derived stage in partitions

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 09:00:00

The derived stage can run in partitions by profile, each with a position of its own
(`TESSERA_PROCESSOR_PARTITIONS`). A partition needs each event's owner as the main stage
applied it, which a merge does not move (`event_profiles.applied_to`; rows from before
this revision have none, and are read by their current owner), and the stage's row keeps
how many partitions it runs in (`processor_state.partitions`; 1: none).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("event_profiles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("applied_to", sa.String(length=32), nullable=True))
    with op.batch_alter_table("processor_state", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("partitions", sa.Integer(), server_default="1", nullable=False)
        )


def downgrade() -> None:
    op.execute("DELETE FROM processor_state WHERE name LIKE 'derived.%'")
    with op.batch_alter_table("processor_state", schema=None) as batch_op:
        batch_op.drop_column("partitions")
    with op.batch_alter_table("event_profiles", schema=None) as batch_op:
        batch_op.drop_column("applied_to")
