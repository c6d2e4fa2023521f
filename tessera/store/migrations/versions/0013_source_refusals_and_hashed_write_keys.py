"""ingest: write keys stored as their SHA-256; per-source daily counts; refused messages

Revision ID: 0013
Revises: 0009
Create Date: 2026-12-04 10:00:00

`sources.write_key` now holds the SHA-256 (hex) of the key instead of the key, and
`write_key_prefix` its first six characters; keys in use keep working (the tracking API
hashes what it is sent). The hashing cannot be undone: after a downgrade every source needs
a new key (`tessera source rotate-key NAME` on this version, or a new source).
`source_activity` counts what each source sent by UTC day; `source_refusals` keeps the
newest refused messages of each source with their reasons.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

from tessera.store.types import BigIntegerPK, UtcDateTime

revision = "0013"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.add_column(sa.Column("write_key_prefix", sa.String(length=8), nullable=True))
    conn = op.get_bind()
    for source_id, key in conn.execute(sa.text("SELECT id, write_key FROM sources")).all():
        conn.execute(
            sa.text(
                "UPDATE sources SET write_key = :hash, write_key_prefix = :prefix WHERE id = :id"
            ),
            {"hash": hashlib.sha256(key.encode()).hexdigest(), "prefix": key[:6], "id": source_id},
        )
    op.create_table(
        "source_activity",
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("accepted", sa.BigInteger(), nullable=False),
        sa.Column("refused", sa.BigInteger(), nullable=False),
        sa.Column("last_accepted_at", UtcDateTime(), nullable=True),
        sa.Column("last_refused_at", UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["sources.id"],
            name="fk_source_activity_source_id_sources",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("source_id", "day", name="pk_source_activity"),
    )
    op.create_table(
        "source_refusals",
        sa.Column("id", BigIntegerPK, autoincrement=True, nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=True),
        sa.Column("excerpt", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["sources.id"],
            name="fk_source_refusals_source_id_sources",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_source_refusals"),
    )
    with op.batch_alter_table("source_refusals", schema=None) as batch_op:
        batch_op.create_index("ix_source_refusals_source_id_id", ["source_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("source_refusals", schema=None) as batch_op:
        batch_op.drop_index("ix_source_refusals_source_id_id")
    op.drop_table("source_refusals")
    op.drop_table("source_activity")
    # Not in a batch: on SQLite that would rebuild `sources`, which the event log refers to.
    op.drop_column("sources", "write_key_prefix")
