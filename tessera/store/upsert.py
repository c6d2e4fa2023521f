"""INSERT ... ON CONFLICT DO UPDATE for SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection


def upsert(
    conn: Connection,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    *,
    keys: Sequence[str],
) -> None:
    """Insert `rows`; where `keys` already exist, overwrite the other columns."""
    if not rows:
        return
    module: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = module.insert(table)
    columns = [column for column in rows[0] if column not in keys]
    statement = statement.on_conflict_do_update(
        index_elements=list(keys),
        set_={column: statement.excluded[column] for column in columns},
    )
    conn.execute(statement, list(rows))
