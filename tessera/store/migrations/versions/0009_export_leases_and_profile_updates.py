"""activation: export jobs under a lease, expired exports; profiles by update time

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 13:30:00

An export job's worker now holds it under a lease it renews a page at a time
(`export_jobs.lease_owner`, `lease_until`), so a job whose worker died is started again by
another, at most a few times (`attempts`); jobs left `running` by a worker from before this
revision have no lease and count as abandoned once. Old export files are deleted after a
retention, which leaves their job `expired` (no column: a status). Surviving profiles are
indexed by `updated_at` for pulls `updated_since` a moment (`merged_into, updated_at`: SQLite
keeps no statistics and would rather use `merged_into` alone).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tessera.store.types import UtcDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("lease_until", UtcDateTime(), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.create_index(
            "ix_export_jobs_status_created_at", ["status", "created_at"], unique=False
        )
    op.execute("UPDATE export_jobs SET attempts = 1 WHERE status = 'running'")
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.create_index(
            "ix_profiles_merged_into_updated_at", ["merged_into", "updated_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.drop_index("ix_profiles_merged_into_updated_at")
    # The older code knows no `expired`: its file is gone, which it reports as such.
    op.execute("UPDATE export_jobs SET status = 'done' WHERE status = 'expired'")
    with op.batch_alter_table("export_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_export_jobs_status_created_at")
        batch_op.drop_column("attempts")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("lease_owner")
