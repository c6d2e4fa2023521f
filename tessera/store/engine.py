"""Create the SQLAlchemy engine for SQLite (WAL, durable commits) or PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from tessera.errors import ConfigurationError, StoreError

# Read the file through a memory map rather than a read() call a page. A profile lookup
# touches a few dozen pages scattered over the file, most of them outside a connection's
# own page cache: mapped, a lookup in a 1M-profile store reads in ~45 µs instead of ~155 µs.
# Only reads go through the map (SQLite writes with write() unless built otherwise), and
# the size is capped by SQLite's build (2 GiB in the usual builds); past it, reads are
# ordinary reads again.
SQLITE_MMAP_BYTES = 2**40


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def create_store_engine(database_url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    """An engine for `database_url`, with SQLite pragmas set on every connection.

    Raises ConfigurationError for a URL we cannot use.
    """
    try:
        url = make_url(database_url)
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError(f"database URL {database_url!r} is not valid: {exc}") from exc
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, sqlite_synchronous)
    if url.get_backend_name() == "postgresql":
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    raise ConfigurationError(
        f"database URL {url.render_as_string(hide_password=True)!r} names backend "
        f"{url.get_backend_name()!r}; Tessera runs on sqlite or postgresql"
    )


def _sqlite_engine(url: URL, synchronous: str) -> Engine:
    database = url.database or ""
    if database in ("", ":memory:"):
        raise ConfigurationError(
            "an in-memory SQLite database would lose every event at exit; "
            "give a file, for example sqlite:///./tessera.db"
        )
    parent = Path(database).expanduser().resolve().parent
    if not parent.is_dir():
        raise ConfigurationError(
            f"the SQLite database {database!r} cannot be created: directory {str(parent)!r} "
            "does not exist"
        )
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        pool_size=8,
        max_overflow=16,
    )

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{database!r} is not a usable SQLite database: {exc}") from exc
        finally:
            cursor.close()

    return engine


def check_connection(engine: Engine) -> None:
    """Raise StoreError, naming the database, if it cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"cannot reach the database {describe(engine)}: {_reason(exc)}") from exc


def describe(engine: Engine) -> str:
    return repr(engine.url.render_as_string(hide_password=True))


def _reason(exc: sa.exc.SQLAlchemyError) -> str:
    original = getattr(exc, "orig", None)
    return (
        str(original or exc).strip().splitlines()[0] if str(original or exc).strip() else repr(exc)
    )
