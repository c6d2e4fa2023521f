"""Delivery figures per destination and hour (sent, failed attempts, dead, latency): written
by the delivery worker with each cycle's outcome, read by the delivery charts.

The totals since a destination was created stay in `destination_counters`; these rows say
when. A page reads a fixed number of rows (destinations x hours) through the primary key,
never the outbox, so a chart costs the same at 20 million messages as at 20.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.activation.models import destination_hours, outbox

FIGURES = ("sent", "failed", "dead", "latency_ms")
KEEP_DAYS = 31


def hour_of(moment: datetime) -> datetime:
    """The UTC hour `moment` falls in."""
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def add_hour(
    conn: Connection, destination_id: str, counts: dict[str, int], *, now: datetime
) -> None:
    """Add a cycle's figures to its hour (`counts` keys from FIGURES; others are ignored).

    One destination is delivered by one worker at a time (its lease), so the update-then-
    insert cannot race another writer of the same row."""
    values = {name: int(counts.get(name, 0)) for name in FIGURES}
    if not any(values.values()):
        return
    hour = hour_of(now)
    table = destination_hours
    updated = conn.execute(
        table.update()
        .where(table.c.destination_id == destination_id, table.c.hour == hour)
        .values({name: table.c[name] + count for name, count in values.items() if count})
    )
    if updated.rowcount == 0:
        conn.execute(table.insert().values(destination_id=destination_id, hour=hour, **values))


def prune_hours(conn: Connection, *, now: datetime) -> int:
    """Forget hours older than KEEP_DAYS."""
    result = conn.execute(
        destination_hours.delete().where(
            destination_hours.c.hour < hour_of(now) - timedelta(days=KEEP_DAYS)
        )
    )
    return int(result.rowcount or 0)


def delete_hours(conn: Connection, *, destination_id: str) -> None:
    conn.execute(
        destination_hours.delete().where(destination_hours.c.destination_id == destination_id)
    )


def hourly_activity(
    conn: Connection, *, destination_ids: Iterable[str], hours: int, now: datetime
) -> dict[str, list[dict[str, Any]]]:
    """The last `hours` hours (the current one last) for each destination, zero-filled:
    `{"hour", "sent", "failed", "dead", "latency_ms" (summed), "latency_ms_mean"}` (the
    mean is None in an hour without a send)."""
    ids = sorted(set(destination_ids))
    if not ids or hours < 1:
        return {destination_id: [] for destination_id in ids}
    last = hour_of(now)
    first = last - timedelta(hours=hours - 1)
    table = destination_hours
    found: dict[tuple[str, datetime], Any] = {
        (row.destination_id, row.hour): row
        for row in conn.execute(
            sa.select(table).where(table.c.destination_id.in_(ids), table.c.hour >= first)
        )
    }
    series: dict[str, list[dict[str, Any]]] = {}
    for destination_id in ids:
        points = []
        for step in range(hours):
            hour = first + timedelta(hours=step)
            row = found.get((destination_id, hour))
            sent = int(row.sent) if row else 0
            points.append(
                {
                    "hour": hour,
                    "sent": sent,
                    "failed": int(row.failed) if row else 0,
                    "dead": int(row.dead) if row else 0,
                    "latency_ms": int(row.latency_ms) if row else 0,
                    "latency_ms_mean": round(row.latency_ms / sent, 1) if row and sent else None,
                }
            )
        series[destination_id] = points
    return series


def summarise(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over a series: sent, failed, dead, and the mean latency of what was sent."""
    sent = sum(point["sent"] for point in points)
    latency = sum(point["latency_ms"] for point in points)
    return {
        "sent": sent,
        "failed": sum(point["failed"] for point in points),
        "dead": sum(point["dead"] for point in points),
        "latency_ms_mean": round(latency / sent, 1) if sent else None,
    }


def dead_letter_reasons(
    conn: Connection, *, destination_id: str, sample: int = 1000, top: int = 5
) -> list[dict[str, Any]]:
    """Why the newest `sample` dead letters failed, most common first: `{"reason",
    "status", "count", "last_at"}`. Bounded by the sample, so a pile of a million dead
    letters reads as fast as ten."""
    newest = (
        sa.select(outbox.c.last_error, outbox.c.last_status, outbox.c.finished_at)
        .where(outbox.c.destination_id == destination_id, outbox.c.state == "dead")
        .order_by(outbox.c.id.desc())
        .limit(sample)
        .subquery()
    )
    rows = conn.execute(
        sa.select(
            newest.c.last_error,
            newest.c.last_status,
            sa.func.count().label("total"),
            sa.func.max(newest.c.finished_at).label("last_at"),
        )
        .group_by(newest.c.last_error, newest.c.last_status)
        .order_by(sa.func.count().desc())
        .limit(top)
    )
    return [
        {
            "reason": row.last_error or "no reason recorded",
            "status": row.last_status,
            "count": int(row.total),
            "last_at": row.last_at,
        }
        for row in rows
    ]
