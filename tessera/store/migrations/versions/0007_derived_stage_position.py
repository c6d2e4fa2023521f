"""processor: the derived stage's own position

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 18:00:00

Computed traits and audiences get a log position of their own ("derived"), so they can
run in a worker of their own. Until now they were applied with the main position, so the
new row starts where the main one is: nothing is derived twice or skipped.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from tessera.store.types import UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("profile_merges", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_profile_merges_seq"), ["seq"], unique=False)
    conn = op.get_bind()
    main = conn.execute(
        sa.text("SELECT position FROM processor_state WHERE name = 'main'")
    ).scalar()
    exists = conn.execute(
        sa.text("SELECT count(*) FROM processor_state WHERE name = 'derived'")
    ).scalar()
    if not exists:
        state = sa.table(
            "processor_state",
            sa.column("name", sa.String),
            sa.column("position", sa.BigInteger),
            sa.column("unattributed_events", sa.BigInteger),
            sa.column("updated_at", UtcDateTime()),
            sa.column("version", sa.BigInteger),
            sa.column("failed_batches", sa.BigInteger),
        )
        op.bulk_insert(
            state,
            [
                {
                    "name": "derived",
                    "position": int(main or 0),
                    "unattributed_events": 0,
                    "updated_at": datetime.now(UTC),
                    "version": 0,
                    "failed_batches": 0,
                }
            ],
        )


def downgrade() -> None:
    op.execute("DELETE FROM processor_state WHERE name = 'derived'")
    with op.batch_alter_table("profile_merges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_profile_merges_seq"))
