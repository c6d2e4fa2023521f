"""Record and read the audit log.

`record` writes inside the caller's transaction, so a successful action and its audit row
commit together. `record_failure` commits on its own, so a refused action (whose own
transaction rolls back) still leaves its trace. Details never hold a secret.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tessera.audit.models import audit_log
from tessera.errors import BadRequest


def record(
    conn: Connection,
    *,
    actor: str,
    action: str,
    target: str | None = None,
    outcome: str = "success",
    ip: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        audit_log.insert().values(
            at=datetime.now(UTC),
            actor=actor[:255],
            ip=ip,
            action=action,
            target=None if target is None else target[:255],
            outcome=outcome,
            details=orjson.dumps(details or {}, default=str).decode(),
        )
    )


def record_failure(engine: Engine, **fields: Any) -> None:
    with engine.begin() as conn:
        record(conn, outcome="failure", **fields)


def _cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(str(entry_id).encode()).decode().rstrip("=")


def _after(cursor: str) -> int:
    try:
        return int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(f"cursor {cursor[:40]!r} is not one this API gave out") from None


def _utc(name: str, moment: datetime | None) -> datetime | None:
    """`moment` in UTC (without a zone it is UTC); BadRequest when UTC cannot hold it."""
    if moment is None:
        return None
    try:
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise BadRequest(
            f"{name!r} is out of range once moved to UTC: {moment.isoformat()}"
        ) from None


def list_entries(
    conn: Connection,
    *,
    actor: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """Newest first, filtered, a page at a time."""
    since, until = _utc("since", since), _utc("until", until)
    query = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit + 1)
    if actor:
        query = query.where(audit_log.c.actor == actor)
    if action:
        query = query.where(audit_log.c.action == action)
    if outcome:
        query = query.where(audit_log.c.outcome == outcome)
    if since:
        query = query.where(audit_log.c.at >= since)
    if until:
        query = query.where(audit_log.c.at < until)
    if cursor:
        query = query.where(audit_log.c.id < _after(cursor))
    rows = list(conn.execute(query))
    items = [
        {
            "id": row.id,
            "at": row.at,
            "actor": row.actor,
            "ip": row.ip,
            "action": row.action,
            "target": row.target,
            "outcome": row.outcome,
            "details": orjson.loads(row.details),
        }
        for row in rows[:limit]
    ]
    return {
        "items": items,
        "next_cursor": _cursor(rows[limit - 1].id) if len(rows) > limit else None,
    }
