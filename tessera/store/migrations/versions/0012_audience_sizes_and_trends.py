"""audiences: kept sizes and daily changes, hourly size snapshots, build totals

Revision ID: 0012
Revises: 0014
Create Date: 2026-12-04 10:00:00

Pages read an audience's size and its entries and exits per day instead of counting rows:
`audience_sizes` and `audience_daily_changes` are kept with every entry and exit (filled
here from the members and the change stream). A worker job writes the size of every
audience once an hour (`audience_size_snapshots`). A build records how many profiles it
walks (`audiences.build_total`, filled here with today's count), so its progress is read
without counting profiles.
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
    op.create_table(
        "audience_daily_changes",
        sa.Column("audience_id", sa.String(length=32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("entered", sa.BigInteger(), nullable=False),
        sa.Column("exited", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("audience_id", "day", name=op.f("pk_audience_daily_changes")),
    )
    bind = op.get_bind()
    now = sa.bindparam("now", datetime.now(UTC), type_=UtcDateTime())
    bind.execute(
        sa.text(
            "INSERT INTO audience_sizes (audience_id, members, updated_at) "
            "SELECT audience_id, count(*), :now FROM audience_members GROUP BY audience_id"
        ).bindparams(now)
    )
    # SQLite holds times as UTC wall-time text and dates as "YYYY-MM-DD".
    day = (
        "substr(at, 1, 10)"
        if bind.dialect.name == "sqlite"
        else "CAST(timezone('UTC', at) AS date)"
    )
    op.execute(
        "INSERT INTO audience_daily_changes (audience_id, day, entered, exited) "
        f"SELECT c.audience_id, {day}, "
        "sum(CASE WHEN c.change = 'entered' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN c.change = 'exited' THEN 1 ELSE 0 END) "
        "FROM audience_changes c JOIN audiences a ON a.id = c.audience_id "
        f"GROUP BY c.audience_id, {day}"
    )
    op.execute(
        "UPDATE audiences SET build_total = "
        "(SELECT count(*) FROM profiles WHERE merged_into IS NULL)"
    )


def downgrade() -> None:
    op.drop_table("audience_daily_changes")
    with op.batch_alter_table("audiences", schema=None) as batch_op:
        batch_op.drop_column("build_total")
    op.drop_table("audience_size_snapshots")
    op.drop_table("audience_sizes")
