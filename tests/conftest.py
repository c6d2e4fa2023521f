"""Shared fixtures: a store on SQLite and on PostgreSQL, and a live server on loopback.

Any test that asks for `store_url` (or a fixture built on it) runs twice: once on a fresh
SQLite file and once on a fresh PostgreSQL database. PostgreSQL comes from
TESSERA_TEST_POSTGRES_URL or is started from the machine's binaries for the session.
Outside CI, a machine without PostgreSQL skips those runs with a loud warning; under
CI=true that is an error.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.engine import Engine, make_url

from tessera.app import create_app
from tessera.config import Settings
from tessera.ingest.sources import Source, create_source
from tessera.local_server import serve_in_thread
from tessera.store import create_store_engine, upgrade
from tessera.store.secrets import generate_key
from tests.pg_server import find_bindir, running_postgres

BACKENDS = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    # One key for stored secrets, shared by every process a test starts (the CLI, `tessera
    # worker` children), as a PostgreSQL deployment must share it. Tests of the key itself
    # (the generated key file, a missing or malformed key) take it out of their environment.
    os.environ.setdefault("TESSERA_SECRET_KEY", generate_key())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec and callspec.params.get("store_url") in BACKENDS:
            item.add_marker(pytest.mark.store)
            item.add_marker(getattr(pytest.mark, callspec.params["store_url"]))


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    given = os.environ.get("TESSERA_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    bindir = find_bindir()
    if bindir is None:
        message = (
            "PostgreSQL binaries (initdb, pg_ctl) were not found: the PostgreSQL half of the "
            "store tests cannot run. Install them (apt-get install postgresql) or set "
            "TESSERA_TEST_POSTGRES_URL."
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    with running_postgres(bindir) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_template(postgres_admin_url: str) -> str:
    """A migrated database that each test's database is cloned from (fast)."""
    name = f"tessera_template_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    engine = create_store_engine(
        make_url(postgres_admin_url).set(database=name).render_as_string(False)
    )
    upgrade(engine)
    engine.dispose()
    return name


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "tessera.db"
    engine = create_store_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, migrated store, on each backend in turn."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "tessera.db"
        target.write_bytes(template.read_bytes())
        yield f"sqlite:///{target}"
        return
    admin_url: str = request.getfixturevalue("postgres_admin_url")
    template_name: str = request.getfixturevalue("postgres_template")
    name = f"tessera_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = create_store_engine(store_url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(store_url: str) -> Settings:
    # The processor in a thread: one process per live server keeps the suite fast; the
    # default child process is exercised by the CLI tests and tests/test_worker_process.py.
    return Settings(database_url=store_url, processor_mode="thread")


@dataclass
class LiveTessera:
    """A running server with one enabled source."""

    url: str
    engine: Engine
    settings: Settings
    source: Source
    app: FastAPI

    @property
    def write_key(self) -> str:
        return self.source.write_key


def start_live(settings: Settings, engine: Engine) -> Iterator[LiveTessera]:
    with engine.begin() as conn:
        source = create_source(conn, name=f"test-{uuid.uuid4().hex[:6]}")
    app = create_app(settings, engine=engine)
    with serve_in_thread(app) as url:
        yield LiveTessera(url=url, engine=engine, settings=settings, source=source, app=app)


@pytest.fixture
def live(settings: Settings, engine: Engine) -> Iterator[LiveTessera]:
    """Tessera served on loopback over a fresh store (both backends)."""
    yield from start_live(settings, engine)
