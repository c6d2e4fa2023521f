"""Computed traits (definitions and per-profile values) and audiences (definitions,
members, history, the change stream, and the time-based evaluation schedule).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 13:56:06.052291
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tessera.store.types import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audience_changes",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("audience_id", sa.String(length=32), nullable=False),
        sa.Column("profile_id", sa.String(length=32), nullable=False),
        sa.Column("change", sa.String(length=8), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("cause", sa.String(length=300), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audience_changes")),
    )
    with op.batch_alter_table("audience_changes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_audience_changes_audience_id"), ["audience_id"], unique=False
        )

    op.create_table(
        "audience_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("audience_id", sa.String(length=32), nullable=False),
        sa.Column("profile_id", sa.String(length=32), nullable=False),
        sa.Column("entered_at", UtcDateTime(), nullable=False),
        sa.Column("entered_cause", sa.String(length=300), nullable=False),
        sa.Column("exited_at", UtcDateTime(), nullable=True),
        sa.Column("exited_cause", sa.String(length=300), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audience_history")),
    )
    with op.batch_alter_table("audience_history", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audience_history_profile", ["profile_id", "audience_id"], unique=False
        )

    op.create_table(
        "audience_members",
        sa.Column("audience_id", sa.String(length=32), nullable=False),
        sa.Column("profile_id", sa.String(length=32), nullable=False),
        sa.Column("entered_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("audience_id", "profile_id", name=op.f("pk_audience_members")),
    )
    with op.batch_alter_table("audience_members", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_audience_members_profile_id"), ["profile_id"], unique=False
        )

    op.create_table(
        "audiences",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("build_cursor", sa.String(length=32), nullable=False),
        sa.Column("built_profiles", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audiences")),
        sa.UniqueConstraint("name", name=op.f("uq_audiences_name")),
    )
    op.create_table(
        "computed_trait_values",
        sa.Column("profile_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("profile_id", "name", name=op.f("pk_computed_trait_values")),
    )

    op.create_table(
        "computed_traits",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("implicit", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("backfilled_through", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_computed_traits")),
    )
    op.create_table(
        "evaluation_schedule",
        sa.Column("profile_id", sa.String(length=32), nullable=False),
        sa.Column("item", sa.String(length=80), nullable=False),
        sa.Column("due_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("profile_id", "item", name=op.f("pk_evaluation_schedule")),
    )
    with op.batch_alter_table("evaluation_schedule", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_evaluation_schedule_due_at"), ["due_at"], unique=False)

    op.create_table(
        "profile_consent",
        sa.Column("profile_id", sa.String(length=32), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("timestamp", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("profile_id", "category", name=op.f("pk_profile_consent")),
    )


def downgrade() -> None:
    op.drop_table("profile_consent")
    with op.batch_alter_table("evaluation_schedule", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluation_schedule_due_at"))

    op.drop_table("evaluation_schedule")
    op.drop_table("computed_traits")
    op.drop_table("computed_trait_values")
    op.drop_table("audiences")
    with op.batch_alter_table("audience_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audience_members_profile_id"))

    op.drop_table("audience_members")
    with op.batch_alter_table("audience_history", schema=None) as batch_op:
        batch_op.drop_index("ix_audience_history_profile")

    op.drop_table("audience_history")
    with op.batch_alter_table("audience_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audience_changes_audience_id"))

    op.drop_table("audience_changes")
