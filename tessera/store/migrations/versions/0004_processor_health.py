"""Processor health any process can report (failed batches with the last error, dropped
identifiers by reason), and a version on the position for SQLite's optimistic claim.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tessera.store.types import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("processor_state", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("failed_batches", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("last_error_at", UtcDateTime(), nullable=True))
        batch_op.add_column(
            sa.Column("version", sa.BigInteger(), server_default="0", nullable=False)
        )
    op.create_table(
        "identity_dropped_identifiers",
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("reason", name=op.f("pk_identity_dropped_identifiers")),
    )


def downgrade() -> None:
    op.drop_table("identity_dropped_identifiers")
    with op.batch_alter_table("processor_state", schema=None) as batch_op:
        batch_op.drop_column("version")
        batch_op.drop_column("last_error_at")
        batch_op.drop_column("last_error")
        batch_op.drop_column("failed_batches")
