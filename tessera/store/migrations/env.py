"""Alembic environment: runs on the connection `tessera.store.migrate` hands it."""

from __future__ import annotations

from alembic import context

from tessera.store.schema import include_name, load_all_models

config = context.config
target_metadata = load_all_models()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `tessera migrate`, not the alembic CLI")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations_online()
