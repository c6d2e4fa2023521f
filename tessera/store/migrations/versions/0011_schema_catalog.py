"""schema: the catalog of events, properties and traits seen; counts for the dashboard

Revision ID: 0011
Revises: 0012
Create Date: 2026-12-04 10:00:00

The schema batch stage tallies every applied batch (`schema_event_types`, `schema_fields`,
`schema_event_minutes`, `schema_dropped`); the recount job keeps `schema_recounts` and
`schema_audience_sizes`. The tables start empty: on a store with events already, the
catalog shows what arrives from now on, and `tessera rebuild` adds what came before.
Merges are indexed by time, for the dashboard's merges today.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tessera.store.types import UtcDateTime

revision = "0011"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schema_event_types",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", UtcDateTime(), nullable=False),
        sa.Column("last_seen", UtcDateTime(), nullable=False),
        sa.Column("dropped_paths", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", "type", name=op.f("pk_schema_event_types")),
    )
    op.create_table(
        "schema_fields",
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("event_name", sa.String(length=255), nullable=False),
        sa.Column("event_type", sa.String(length=16), nullable=False),
        sa.Column("path", sa.String(length=255), nullable=False),
        sa.Column("json_type", sa.String(length=16), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "scope", "event_name", "event_type", "path", "json_type", name=op.f("pk_schema_fields")
        ),
    )
    op.create_table(
        "schema_event_minutes",
        sa.Column("minute", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("minute", "source_id", name=op.f("pk_schema_event_minutes")),
    )
    op.create_table(
        "schema_dropped",
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("reason", name=op.f("pk_schema_dropped")),
    )
    op.create_table(
        "schema_recounts",
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cursor", sa.String(length=64), nullable=True),
        sa.Column("audience_id", sa.String(length=32), nullable=True),
        sa.Column("partial_total", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("partial_identified", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("pass_started_at", UtcDateTime(), nullable=True),
        sa.Column("busy_seconds", sa.Float(), server_default="0", nullable=False),
        sa.Column("next_pass_at", UtcDateTime(), nullable=True),
        sa.Column("total", sa.BigInteger(), nullable=True),
        sa.Column("identified", sa.BigInteger(), nullable=True),
        sa.Column("counted_at", UtcDateTime(), nullable=True),
        sa.Column("pass_seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_schema_recounts")),
    )
    op.create_table(
        "schema_audience_sizes",
        sa.Column("audience_id", sa.String(length=32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("counted_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("audience_id", name=op.f("pk_schema_audience_sizes")),
    )
    with op.batch_alter_table("profile_merges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_profile_merges_merged_at"), ["merged_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("profile_merges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_profile_merges_merged_at"))
    op.drop_table("schema_audience_sizes")
    op.drop_table("schema_recounts")
    op.drop_table("schema_dropped")
    op.drop_table("schema_event_minutes")
    op.drop_table("schema_fields")
    op.drop_table("schema_event_types")
