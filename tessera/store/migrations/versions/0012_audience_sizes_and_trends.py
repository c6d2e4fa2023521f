"""audiences: kept sizes, hourly size snapshots, build totals, changes by audience and time

Revision ID: 0012
Revises: 0014
Create Date: 2026-12-04 10:00:00

Pages read an audience's size instead of counting its members: `audience_sizes` is kept
with every entry and exit (filled here from the members). A worker job writes the size of
every audience once an hour (`audience_size_snapshots`). A build records how many profiles
it walks (`audiences.build_total`, filled here with today's count), so its progress is read
without counting profiles. Entries and exits per day read `audience_changes` through an
index on (audience_id, at, change), which replaces the one on audience_id alone (a prefix
of it).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from tessera.store.types import UtcDateTime

revision = "0012"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audience_sizes",
        sa.Column("audience_id", sa.String(length=32), nullable=False),
        sa.Column("members", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("audience_id", name=op.f("pk_audience_sizes")),
    )
    op.create_table(
        "audience_size_snapshots",
        sa.Column("audience_id", sa.String(length=32), nullable=False),
        sa.Column("hour", UtcDateTime(), nullable=False),
        sa.Column("members", sa.BigInteger(), nullable=False),
        sa.Column("taken_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("audience_id", "hour", name=op.f("pk_audience_size_snapshots")),
    )
    with op.batch_alter_table("audiences", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("build_total", sa.BigInteger(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("audience_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audience_changes_audience_id"))
        batch_op.create_index(
            "ix_audience_changes_audience_id_at", ["audience_id", "at", "change"], unique=False
        )
    now = sa.bindparam("now", datetime.now(UTC), type_=UtcDateTime())
    op.get_bind().execute(
        sa.text(
            "INSERT INTO audience_sizes (audience_id, members, updated_at) "
            "SELECT audience_id, count(*), :now FROM audience_members GROUP BY audience_id"
        ).bindparams(now)
    )
    op.execute(
        "UPDATE audiences SET build_total = "
        "(SELECT count(*) FROM profiles WHERE merged_into IS NULL)"
    )


def downgrade() -> None:
    with op.batch_alter_table("audience_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_audience_changes_audience_id_at")
        batch_op.create_index(
            batch_op.f("ix_audience_changes_audience_id"), ["audience_id"], unique=False
        )
    with op.batch_alter_table("audiences", schema=None) as batch_op:
        batch_op.drop_column("build_total")
    op.drop_table("audience_size_snapshots")
    op.drop_table("audience_sizes")
