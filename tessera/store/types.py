"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp that is always UTC and always timezone-aware when read back.

    PostgreSQL stores `timestamptz`; SQLite stores the UTC wall time as text (its
    DateTime type drops the zone), and we put the zone back on the way out.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}: {value!r}")
        moment: datetime = value if value.tzinfo else value.replace(tzinfo=UTC)
        moment = moment.astimezone(UTC)
        return moment.replace(tzinfo=None) if dialect.name == "sqlite" else moment

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        moment: datetime = value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


# The log position: BIGINT on PostgreSQL, the rowid alias (INTEGER PRIMARY KEY) on SQLite.
BigIntegerPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def sqlite_time(moment: datetime | None) -> str | None:
    """A moment in the text form `UtcDateTime` stores on SQLite (UTC wall time), for
    statements that hand the driver plain tuples."""
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(" ", "microseconds")
