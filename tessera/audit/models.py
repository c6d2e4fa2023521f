"""The audit log: one row per sensitive action, appended, never changed (triggers refuse
UPDATE and DELETE on both backends)."""

from __future__ import annotations

import sqlalchemy as sa

from tessera.store.schema import metadata
from tessera.store.types import UtcDateTime

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("at", UtcDateTime, nullable=False, index=True),
    # Who: "user:jo@example.com", "token:crm-sync", "cli", or "anonymous".
    sa.Column("actor", sa.String(255), nullable=False, index=True),
    sa.Column("ip", sa.String(64), nullable=True),
    # What: "auth.login", "token.create", "profile.unmerge", ...
    sa.Column("action", sa.String(64), nullable=False, index=True),
    sa.Column("target", sa.String(255), nullable=True),
    sa.Column("outcome", sa.String(16), nullable=False),  # "success" or "failure"
    sa.Column("details", sa.Text, nullable=False),  # JSON; never a secret
)
