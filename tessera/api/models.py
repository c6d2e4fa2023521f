"""API tokens: a hash of each token, its role, and when it was last used."""

from __future__ import annotations

import sqlalchemy as sa

from tessera.store.schema import metadata
from tessera.store.types import UtcDateTime

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    # SHA-256 of the token: tokens are long random strings, so a fast hash is enough.
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("last_used_at", UtcDateTime, nullable=True),
    sa.Column("revoked_at", UtcDateTime, nullable=True),
)
