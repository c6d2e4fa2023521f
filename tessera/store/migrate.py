"""Apply Alembic migrations from code (`tessera migrate`, and `tessera serve` at start).

Failures become `MigrationError` with a message a person can act on; they are never
swallowed, because serving on a half-migrated schema corrupts derived state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection, Engine

from tessera.errors import MigrationError
from tessera.logs import event
from tessera.store.engine import describe

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any 64-bit constant will do; several `tessera serve` starting at once migrate one by one.
_PG_MIGRATION_LOCK = 0x7E55E7A


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migrations directory has no revisions"
    return head


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Migrate the store to `revision`; return (revision before, revision after)."""
    config = alembic_config()
    try:
        with engine.connect() as conn, _migration_lock(conn):
            before = current_revision(conn)
            known = {
                script.revision for script in ScriptDirectory.from_config(config).walk_revisions()
            }
            if before is not None and before not in known:
                raise MigrationError(
                    f"the database {describe(engine)} is at schema revision {before!r}, which "
                    "this version of Tessera does not know: it was migrated by a newer Tessera. "
                    "Upgrade Tessera, or point TESSERA_DATABASE_URL at another database."
                )
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            conn.commit()
            after = current_revision(conn)
    except MigrationError:
        raise
    except (CommandError, sa.exc.SQLAlchemyError) as exc:
        raise MigrationError(
            f"migrating the database {describe(engine)} failed: {_first_line(exc)}"
        ) from exc
    assert after is not None
    if before != after:
        event(log, logging.INFO, "store.migrated", before=before, after=after)
    return before, after


@contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    if conn.dialect.name != "postgresql":
        yield
        return
    conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    conn.commit()
    try:
        yield
    finally:
        # A failed migration leaves the transaction aborted; the session lock outlives it.
        conn.rollback()
        conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_MIGRATION_LOCK})
        conn.commit()


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip()
    return text.splitlines()[0] if text else type(original).__name__
