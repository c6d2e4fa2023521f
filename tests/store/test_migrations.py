"""Migrations: the schema matches the models on both backends, and failures are clear."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from tessera.errors import ConfigurationError, MigrationError, StoreError
from tessera.store import create_store_engine, current_revision, head_revision, upgrade
from tessera.store.engine import check_connection
from tessera.store.schema import include_name, load_all_models
from tessera.store.types import UtcDateTime


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        context = MigrationContext.configure(conn, opts={"include_name": include_name})
        assert compare_metadata(context, load_all_models()) == []


def test_upgrade_is_idempotent(engine: Engine) -> None:
    assert upgrade(engine) == (head_revision(), head_revision())


def test_database_from_a_newer_tessera_is_refused_clearly(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dcafe'"))
    with pytest.raises(MigrationError, match="newer Tessera"):
        upgrade(engine)


def test_failed_migration_names_the_cause(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM alembic_version"))
    # The tables exist but the version says empty: creating them again must fail loudly.
    with pytest.raises(MigrationError, match=r"migrating the database .* failed: .*sources"):
        upgrade(engine)


def test_utc_datetimes_round_trip(engine: Engine) -> None:
    table = sa.Table(
        "t_times",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", UtcDateTime),
    )
    table.create(engine)
    moments = [
        datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC),
        datetime(2026, 11, 22, 15, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 11, 22, 10, 0),  # naive is taken as UTC
    ]
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "at": m} for i, m in enumerate(moments)])
        back = [row.at for row in conn.execute(sa.select(table).order_by(table.c.id))]
    assert back == [moments[0], moments[1], moments[2].replace(tzinfo=UTC)]
    assert all(moment.tzinfo is not None for moment in back)


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    engine = create_store_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    engine.dispose()


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("mysql://localhost/x", "sqlite or postgresql"),
        ("sqlite://", "in-memory"),
        ("sqlite:////no/such/dir/tessera.db", "does not exist"),
        ("not a url", "is not valid"),
    ],
)
def test_unusable_urls_are_configuration_errors(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        create_store_engine(url)


def test_unreachable_postgres_is_a_store_error() -> None:
    engine = create_store_engine("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2")
    with pytest.raises(StoreError, match="cannot reach the database"):
        check_connection(engine)
    with pytest.raises(MigrationError, match="failed"):
        upgrade(engine)


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises((StoreError, MigrationError), match="not"):
        upgrade(create_store_engine(f"sqlite:///{path}"))
