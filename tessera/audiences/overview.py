"""What the audience and computed-trait list pages show, each in a fixed number of queries
whatever the number of definitions or profiles: sizes as the store keeps them, where a
backfill or build has got to, a week's size trend from the hourly snapshots.

A building audience goes through phases: its computed traits backfill first (`backfilling`,
the progress of the slowest), then it waits for audiences it refers to (`waiting`), then it
walks every profile (`building`, the share of profiles evaluated); `ready` afterwards.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.audiences.catalog import READY, references
from tessera.audiences.language import Dependencies, parse_audience
from tessera.audiences.models import audiences
from tessera.audiences.service import backfill_progress, build_progress, log_head
from tessera.audiences.sizes import sizes_of
from tessera.audiences.trends import recent_snapshots
from tessera.errors import InvalidDefinition
from tessera.profiles.models import computed_traits

TREND_DAYS = 7


def _dependencies(audience_rows: list[Any], trait_rows: list[Any]) -> dict[str, Dependencies]:
    """Every audience's dependencies (named and implicit computed traits, audiences),
    parsed from the rows already read: no query per audience."""
    kinds = {
        row.name: orjson.loads(row.definition)["kind"] for row in trait_rows if not row.implicit
    }
    documents = {row.id: orjson.loads(row.definition) for row in audience_rows}
    stored = {aid: frozenset(references(document)) for aid, document in documents.items()}
    found = {}
    for aid, document in documents.items():
        try:
            parsed = parse_audience(
                document, computed_kinds=kinds, audience_references=stored.get, audience_id=aid
            )
        except InvalidDefinition:  # stored definitions were valid when stored
            continue
        found[aid] = parsed.dependencies
    return found


def _phase(
    row: Any,
    needs: Dependencies | None,
    traits: dict[str, Any],
    statuses: dict[str, str],
    head: int,
) -> tuple[str, float]:
    if row.status == READY:
        return READY, 1.0
    if needs is not None:
        waiting = [traits[name] for name in needs.computed if name in traits]
        backfilling = [trait for trait in waiting if trait.status != READY]
        if backfilling:
            return "backfilling", min(
                backfill_progress(trait.status, int(trait.backfilled_through), head)
                for trait in backfilling
            )
        if any(statuses.get(other) != READY for other in needs.audiences):
            return "waiting", 0.0
    return "building", build_progress(row.status, int(row.built_profiles), int(row.build_total))


def _daily_trend(points: list[tuple[datetime, int]]) -> list[dict[str, Any]]:
    """The last snapshot of each UTC day: a week in at most eight points."""
    by_day: dict[Any, tuple[datetime, int]] = {}
    for hour, members in points:
        by_day[hour.astimezone(UTC).date()] = (hour, members)
    return [{"at": hour, "size": members} for hour, members in by_day.values()]


def audience_overview(conn: Connection, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every audience for the list page, oldest first: size, status, phase and progress,
    the week's trend up to `now` (default: the wall clock; a point a day) and its size a
    week ago (the oldest snapshot in the week; None before the first), created and
    updated. Five queries in all."""
    now = now or datetime.now(UTC)
    rows = list(conn.execute(sa.select(audiences).order_by(audiences.c.created_at)))
    if not rows:
        return []
    trait_rows = list(conn.execute(sa.select(computed_traits)))
    traits = {row.name: row for row in trait_rows}
    statuses = {row.id: row.status for row in rows}
    needs = _dependencies(rows, trait_rows)
    sizes = sizes_of(conn)
    head = log_head(conn)
    recent = recent_snapshots(
        conn, audience_ids=[row.id for row in rows], since=now - timedelta(days=TREND_DAYS)
    )
    out = []
    for row in rows:
        phase, progress = _phase(row, needs.get(row.id), traits, statuses, head)
        points = recent.get(row.id, [])
        out.append(
            {
                "id": row.id,
                "name": row.name,
                "description": row.description,
                "status": row.status,
                "phase": phase,
                "progress": progress,
                "size": sizes.get(row.id, 0),
                "size_week_ago": points[0][1] if points else None,
                "trend": _daily_trend(points),
                "created_by": row.created_by,
                "created_at": row.created_at,
                "updated_at": row.updated_at,
            }
        )
    return out


def computed_trait_overview(
    conn: Connection, *, include_implicit: bool = False
) -> list[dict[str, Any]]:
    """Every computed trait for the list page, by name: kind, status, backfill progress,
    the audiences that use it (directly, or through an event condition for the implicit
    ones), created and updated. Three queries in all."""
    trait_rows = list(conn.execute(sa.select(computed_traits).order_by(computed_traits.c.name)))
    if not trait_rows:
        return []
    audience_rows = list(
        conn.execute(
            sa.select(audiences.c.id, audiences.c.name, audiences.c.definition).order_by(
                audiences.c.name
            )
        )
    )
    needs = _dependencies(audience_rows, trait_rows)
    head = log_head(conn)
    out = []
    for row in trait_rows:
        if row.implicit and not include_implicit:
            continue
        through = int(row.backfilled_through)
        out.append(
            {
                "name": row.name,
                "kind": orjson.loads(row.definition)["kind"],
                "implicit": bool(row.implicit),
                "status": row.status,
                "progress": backfill_progress(row.status, through, head),
                "backfill": {"through_seq": through, "log_head_seq": head},
                "used_by": [
                    {"id": audience.id, "name": audience.name}
                    for audience in audience_rows
                    if audience.id in needs and row.name in needs[audience.id].computed
                ],
                "created_at": row.created_at,
                "updated_at": row.updated_at,
            }
        )
    return out
