"""The one MetaData every domain's `models.py` registers its tables on.

Import `tessera.store.schema.load_all_models()` before comparing or creating the schema, so
that every table is known (Alembic's autogenerate does this in `migrations/env.py`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

MODEL_MODULES = (
    "tessera.ingest.models",
    "tessera.eventlog.models",
    "tessera.identity.models",
    "tessera.profiles.models",
    "tessera.processor.models",
    "tessera.auth.models",
    "tessera.audit.models",
    "tessera.audiences.models",
    "tessera.activation.models",
    "tessera.web.models",
    "tessera.schema.models",
)


def include_name(name: str | None, type_: str, parent_names: Mapping[Any, str | None]) -> bool:
    """Alembic's filter for schema comparisons (autogenerate, the migration test): leaves
    out the objects a domain lists in `metadata.info["unmodelled"]`, which migrations make
    but models cannot declare: a table and the shadow tables named after it (FTS5), an
    index, a column as `table.column` (one backend's generated column)."""
    unmodelled: set[str] = metadata.info.get("unmodelled", set())
    if name is None:
        return True
    if type_ == "column":
        return f"{parent_names.get('table_name')}.{name}" not in unmodelled
    if type_ in ("table", "index"):
        return not any(name == made or name.startswith(f"{made}_") for made in unmodelled)
    return True


def load_all_models() -> sa.MetaData:
    for module in MODEL_MODULES:
        importlib.import_module(module)
    return metadata
