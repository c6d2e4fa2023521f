"""The store: engine, schema and migrations shared by every stage."""

from __future__ import annotations

from tessera.store.engine import create_store_engine, is_sqlite
from tessera.store.migrate import current_revision, head_revision, upgrade
from tessera.store.schema import metadata

__all__ = [
    "create_store_engine",
    "current_revision",
    "head_revision",
    "is_sqlite",
    "metadata",
    "upgrade",
]
