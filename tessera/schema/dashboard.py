"""The Home dashboard's figures in one call: events per minute for the last 24 hours per
source, profiles and the share identified, merges today, the largest audiences, delivery
health per destination and the processor's lag.

Each part reads a rollup, a counter or an index range; none scans the event log or counts
a large table, so the whole answers in milliseconds at 1M profiles and 20M events.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.activation.delivery_store import DEAD, PENDING
from tessera.activation.models import destination_counters, destination_state, destinations, outbox
from tessera.audiences.models import audiences
from tessera.processor import DERIVED, MAIN, health, lag
from tessera.schema.models import schema_audience_sizes
from tessera.schema.service import events_per_minute, merges_since, profile_counts

LARGEST_AUDIENCES = 5
# Messages waiting (pending, dead) are counted up to this per destination; past it the
# figure says "at least" (`capped`), so a long backlog costs no more than this.
COUNT_AT_MOST = 10_000
# Events waiting for a processor stage, likewise.
LAG_AT_MOST = 100_000
DELIVERY_COUNTERS = ("sent", "failed", "dead", "blocked", "replayed")


def dashboard_summary(
    conn: Connection, *, now: datetime, include_delivery: bool = True
) -> dict[str, Any]:
    """Everything the Home page shows, as of `now`. Without `include_delivery` (roles that
    may not read destinations) the destinations part is None."""
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "now": now,
        "events_per_minute": events_per_minute(conn, since=now - timedelta(hours=24), until=now),
        "profiles": profile_counts(conn),
        "merges_today": {"since": day_start, "count": merges_since(conn, since=day_start)},
        "audiences": largest_audiences(conn, now=now),
        "destinations": delivery_health(conn) if include_delivery else None,
        "processor": processor_lag(conn),
    }


def audience_trends(
    conn: Connection, *, audience_ids: list[str], since: datetime
) -> dict[str, list[dict[str, Any]]]:
    """Each audience's hourly sizes since `since`, oldest first (`{"hour", "size"}`).

    The seam for the hourly size snapshots, which another change adds: read them here.
    Until then there are none, and the dashboard shows sizes without a trend.
    """
    return {}


def largest_audiences(
    conn: Connection, *, now: datetime, limit: int = LARGEST_AUDIENCES
) -> list[dict[str, Any]]:
    """The largest audiences by their last recounted size, with a 24-hour trend."""
    sizes = schema_audience_sizes
    rows = list(
        conn.execute(
            sa.select(
                audiences.c.id,
                audiences.c.name,
                audiences.c.status,
                sizes.c.size,
                sizes.c.counted_at,
            )
            .join(sizes, sizes.c.audience_id == audiences.c.id)
            .order_by(sizes.c.size.desc(), audiences.c.name)
            .limit(limit)
        )
    )
    trends = audience_trends(
        conn, audience_ids=[row.id for row in rows], since=now - timedelta(hours=24)
    )
    return [
        {
            "id": row.id,
            "name": row.name,
            "status": row.status,
            "size": int(row.size),
            "counted_at": row.counted_at,
            "trend": trends.get(row.id, []),
        }
        for row in rows
    ]


def _count_at_most(conn: Connection, destination_id: str, state: str) -> int:
    page = (
        sa.select(outbox.c.id)
        .where(outbox.c.destination_id == destination_id, outbox.c.state == state)
        .limit(COUNT_AT_MOST)
        .subquery()
    )
    return int(conn.execute(sa.select(sa.func.count()).select_from(page)).scalar_one())


def delivery_health(conn: Connection) -> list[dict[str, Any]]:
    """Per destination: totals since it was created (sent, failed attempts, dead, blocked
    by consent, replayed), what waits now (pending, dead letters; at most
    `COUNT_AT_MOST`), and its state (active, paused, disabled) with the last success and
    error."""
    counters: dict[str, dict[str, int]] = {}
    for destination_id, name, count in conn.execute(
        sa.select(
            destination_counters.c.destination_id,
            destination_counters.c.name,
            destination_counters.c["count"],
        )
    ):
        counters.setdefault(destination_id, {})[name] = int(count)
    rows = conn.execute(
        sa.select(
            destinations.c.id,
            destinations.c.name,
            destinations.c.type,
            destinations.c.enabled,
            destination_state.c.paused_at,
            destination_state.c.paused_reason,
            destination_state.c.last_success_at,
            destination_state.c.last_error,
            destination_state.c.last_error_at,
        )
        .outerjoin(destination_state, destination_state.c.destination_id == destinations.c.id)
        .order_by(destinations.c.name)
    )
    found = []
    for row in rows:
        totals = counters.get(row.id, {})
        pending = _count_at_most(conn, row.id, PENDING)
        dead = _count_at_most(conn, row.id, DEAD)
        paused = row.paused_at is not None
        found.append(
            {
                "id": row.id,
                "name": row.name,
                "type": row.type,
                "status": "disabled" if not row.enabled else ("paused" if paused else "active"),
                "paused_at": row.paused_at,
                "paused_reason": row.paused_reason,
                "last_success_at": row.last_success_at,
                "last_error": row.last_error,
                "last_error_at": row.last_error_at,
                **{name: totals.get(name, 0) for name in DELIVERY_COUNTERS},
                "pending": pending,
                "dead_letters": dead,
                "capped": pending >= COUNT_AT_MOST or dead >= COUNT_AT_MOST,
            }
        )
    return found


def processor_lag(conn: Connection) -> dict[str, Any]:
    """Both stages' positions, the events waiting (at most `LAG_AT_MOST`), the age of the
    oldest waiting one, and failed batches with the last error."""
    found: dict[str, Any] = {}
    for name in (MAIN, DERIVED):
        behind = lag(conn, name=name, at_most=LAG_AT_MOST)
        state = health(conn, name=name)
        found[name] = {
            "position": behind.position,
            "lag_events": behind.events,
            "capped": behind.events >= LAG_AT_MOST,
            "oldest_waiting_seconds": behind.oldest_age_seconds,
            "failed_batches": state.failed_batches,
            "last_error": state.last_error,
            "last_error_at": state.last_error_at,
        }
    return found
