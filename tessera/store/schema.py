"""The one MetaData every domain's `models.py` registers its tables on.

Import `tessera.store.schema.load_all_models()` before comparing or creating the schema, so
that every table is known (Alembic's autogenerate does this in `migrations/env.py`).
"""

from __future__ import annotations

import importlib

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


def load_all_models() -> sa.MetaData:
    for module in MODEL_MODULES:
        importlib.import_module(module)
    return metadata
