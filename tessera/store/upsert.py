"""INSERT ... ON CONFLICT DO UPDATE for SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.store.types import UtcDateTime, sqlite_time


def upsert(
    conn: Connection,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    *,
    keys: Sequence[str],
    combine: Mapping[str, Literal["add", "min", "max"]] | None = None,
) -> None:
    """Insert `rows`; where `keys` already exist, overwrite the other columns, or fold the
    new value into the stored one for the columns in `combine` (`add` for counters, `min`
    and `max` for first and last times), so a batch's tallies take one statement.

    The processor's flushes run this for thousands of rows a batch, so it hands the driver
    plain tuples in one executemany (SQLAlchemy's per-row parameter processing cost more
    than the database's work). On SQLite, `UtcDateTime` values are formatted as that type
    stores them; psycopg adapts aware datetimes itself.
    """
    if not rows:
        return
    columns = list(rows[0])
    sqlite = conn.dialect.name == "sqlite"
    marker = "?" if sqlite else "%s"
    updates = [column for column in columns if column not in keys]
    quoted = ", ".join(f'"{column}"' for column in columns)
    conflict = ", ".join(f'"{key}"' for key in keys)
    combine = combine or {}
    unknown = set(combine) - set(updates)
    if unknown:
        raise ValueError(f"combine names columns that are not updated: {sorted(unknown)}")
    assignments = [
        f'"{column}" = {_combined(table.name, column, combine.get(column), sqlite)}'
        for column in updates
    ]
    action = "DO UPDATE SET " + ", ".join(assignments) if updates else "DO NOTHING"
    values = ", ".join(marker for _ in columns)
    statement = (
        f'INSERT INTO "{table.name}" ({quoted}) VALUES ({values}) ON CONFLICT ({conflict}) {action}'
    )
    times = {
        index
        for index, column in enumerate(columns)
        if sqlite and isinstance(table.c[column].type, UtcDateTime)
    }
    if times:
        formatted: dict[datetime, str | None] = {}  # rows often share a time (`now`)

        def stored(moment: datetime) -> str | None:
            text = formatted.get(moment)
            if text is None:
                text = formatted[moment] = sqlite_time(moment)
            return text

        params = [
            tuple(
                stored(row[column]) if index in times and row[column] is not None else row[column]
                for index, column in enumerate(columns)
            )
            for row in rows
        ]
    else:
        params = [tuple(row[column] for column in columns) for row in rows]
    conn.exec_driver_sql(statement, params)


def _combined(table: str, column: str, how: str | None, sqlite: bool) -> str:
    """The new value of `column` in a DO UPDATE: the row's, or it folded into the stored one.
    SQLite's two-argument min/max are PostgreSQL's LEAST/GREATEST; `UtcDateTime` text on
    SQLite orders as the times do."""
    new, old = f'excluded."{column}"', f'"{table}"."{column}"'
    if how is None:
        return new
    if how == "add":
        return f"{old} + {new}"
    function = {"min": "min" if sqlite else "LEAST", "max": "max" if sqlite else "GREATEST"}[how]
    return f"{function}({old}, {new})"


def bind_time(conn: Connection, moment: datetime) -> datetime | str:
    """`moment` as a driver parameter for a `UtcDateTime` column."""
    if conn.dialect.name == "sqlite":
        return sqlite_time(moment) or ""
    return moment
