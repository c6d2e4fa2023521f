"""Reading what Tessera has seen: event types, their properties, traits and context fields
with observed types; events per minute and source; profile counts and merges.

Every read is an index range over a bounded table (the catalog's limits, the minutes'
retention), never the event log, so a page answers at once at any volume.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.errors import BadRequest, NotFound
from tessera.identity.models import profile_merges
from tessera.ingest.models import sources
from tessera.schema.models import (
    minute_of,
    minute_start,
    schema_dropped,
    schema_event_minutes,
    schema_event_types,
    schema_fields,
    schema_recounts,
)
from tessera.schema.recount import PROFILES
from tessera.schema.stage import CONTEXT, EVENT, TRAIT

EVENT_TYPES = ("track", "page", "screen", "identify", "group", "alias")
# The longest series one call returns: a week of minutes (the default retention).
MAX_MINUTES = 7 * 24 * 60


def _cursor(name: str, kind: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([name, kind])).decode().rstrip("=")


def _after(cursor: str) -> tuple[str, str]:
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        name, kind = decoded
        if not isinstance(name, str) or not isinstance(kind, str):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise BadRequest(f"cursor {cursor[:40]!r} is not one this API gave out") from None
    return name, kind


def list_event_types(
    conn: Connection, *, search: str | None = None, limit: int = 100, after: str | None = None
) -> dict[str, Any]:
    """The event types and names seen, by name, a page at a time, with counts and when
    each was first and last received. `search` matches part of a name or type, in any
    case (a scan of the catalog, which the limit of names bounds)."""
    table = schema_event_types
    query = sa.select(table).order_by(table.c.name, table.c.type).limit(limit + 1)
    if search:
        needle = search.lower()
        query = query.where(
            sa.or_(
                sa.func.lower(table.c.name).contains(needle, autoescape=True),
                table.c.type.contains(needle, autoescape=True),
            )
        )
    if after:
        name, kind = _after(after)
        query = query.where(
            sa.or_(table.c.name > name, sa.and_(table.c.name == name, table.c.type > kind))
        )
    rows = list(conn.execute(query))
    items = [
        {
            "type": row.type,
            "name": row.name or None,
            "count": int(row._mapping["count"]),
            "first_seen": row.first_seen,
            "last_seen": row.last_seen,
            "dropped_paths": int(row.dropped_paths),
        }
        for row in rows[:limit]
    ]
    last = rows[limit - 1] if len(rows) > limit else None
    return {
        "items": items,
        "next_cursor": _cursor(last.name, last.type) if last is not None else None,
        "left_out": dropped_counts(conn),
    }


def _grouped(conn: Connection, scope: str, name: str = "", kind: str = "") -> list[dict[str, Any]]:
    """The scope's paths, each with its count and types (most seen first)."""
    table = schema_fields
    query = (
        sa.select(table.c.path, table.c.json_type, table.c["count"])
        .where(table.c.scope == scope, table.c.event_name == name, table.c.event_type == kind)
        .order_by(table.c.path, table.c.json_type)
    )
    found: dict[str, dict[str, Any]] = {}
    for path, json_type, count in conn.execute(query):
        entry = found.get(path)
        if entry is None:
            entry = found[path] = {"path": path, "count": 0, "types": []}
        entry["count"] += int(count)
        entry["types"].append({"type": json_type, "count": int(count)})
    for entry in found.values():
        entry["types"].sort(key=lambda item: (-item["count"], item["type"]))
    return list(found.values())


def get_event_properties(
    conn: Connection, *, name: str | None, event_type: str = "track"
) -> dict[str, Any]:
    """An event's property paths with their observed types: a track call's by its name,
    page and screen calls' by type alone, group calls' account traits."""
    if event_type not in EVENT_TYPES:
        raise BadRequest(
            f"type {event_type!r} is not an event type; use one of {', '.join(EVENT_TYPES)}"
        )
    key = (name or "") if event_type == "track" else ""
    if event_type == "track" and not key:
        raise BadRequest("a track event's properties need its name")
    table = schema_event_types
    row = conn.execute(
        sa.select(table).where(table.c.name == key, table.c.type == event_type)
    ).first()
    if row is None:
        shown = f"track event {key!r}" if event_type == "track" else f"{event_type} call"
        raise NotFound(f"no {shown} has been seen; GET /api/v1/schema/events lists those seen")
    return {
        "type": event_type,
        "name": key or None,
        "count": int(row._mapping["count"]),
        "last_seen": row.last_seen,
        "dropped_paths": int(row.dropped_paths),
        "properties": _grouped(conn, EVENT, key, event_type),
    }


def list_traits(conn: Connection) -> list[dict[str, Any]]:
    """Profile trait paths (identify's traits and any call's context.traits), dotted for
    nested objects as audience conditions name them, with their observed types."""
    return _grouped(conn, TRAIT)


def list_context_fields(conn: Connection) -> list[dict[str, Any]]:
    """The context fields people filter on (`context.campaign.source`, ...), across all
    events, with their observed types; paths are below `context`, counts are of the
    events sampled (`stage.CONTEXT_SAMPLE`)."""
    return _grouped(conn, CONTEXT)


def dropped_counts(conn: Connection) -> dict[str, int]:
    """What the catalog's limits left out since the last rebuild, by reason."""
    table = schema_dropped
    return {
        reason: int(count)
        for reason, count in conn.execute(sa.select(table.c.reason, table.c["count"]))
    }


def _minute(moment: datetime, what: str) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return minute_of(moment)
    except (OverflowError, ValueError, OSError):
        raise BadRequest(f"{what} {moment.isoformat()} is out of range") from None


def events_per_minute(
    conn: Connection,
    *,
    since: datetime,
    until: datetime | None = None,
    source_id: int | None = None,
) -> dict[str, Any]:
    """Events received per minute from `since` to `until` (now), both minutes included,
    per source: every source in the store (or `source_id`) gets a series with a count for
    each minute, 0 where none came."""
    start = _minute(since, "since")
    end = _minute(until or datetime.now(UTC), "until")
    if end < start:
        raise BadRequest(
            f"since ({minute_start(start).isoformat()}) is after until "
            f"({minute_start(end).isoformat()})"
        )
    size = end - start + 1
    if size > MAX_MINUTES:
        raise BadRequest(f"a series is at most {MAX_MINUTES} minutes (7 days), not {size}")
    names_query = sa.select(sources.c.id, sources.c.name).order_by(sources.c.id)
    table = schema_event_minutes
    query = sa.select(table.c.minute, table.c.source_id, table.c["count"]).where(
        table.c.minute >= start, table.c.minute <= end
    )
    if source_id is not None:
        names_query = names_query.where(sources.c.id == source_id)
        query = query.where(table.c.source_id == source_id)
    names: dict[int, str | None] = {row.id: row.name for row in conn.execute(names_query)}
    if source_id is not None and source_id not in names:
        raise NotFound(f"there is no source {source_id}")
    series: dict[int, list[int]] = {sid: [0] * size for sid in names}
    for minute, sid, count in conn.execute(query):
        counts = series.get(sid)
        if counts is None:  # a source deleted since
            names[sid] = None
            counts = series[sid] = [0] * size
        counts[minute - start] = count
    return {
        "start": minute_start(start),
        "end": minute_start(end),
        "step_seconds": 60,
        "sources": [
            {"source_id": sid, "name": names[sid], "total": sum(counts), "counts": counts}
            for sid, counts in sorted(series.items())
        ],
    }


def profile_counts(conn: Connection) -> dict[str, Any]:
    """Surviving profiles and those identified (an email, a user id or a phone), as the
    last recount found them, with when (None before the first recount ends)."""
    row = conn.execute(
        sa.select(
            schema_recounts.c.total, schema_recounts.c.identified, schema_recounts.c.counted_at
        ).where(schema_recounts.c.name == PROFILES)
    ).first()
    if row is None or row.counted_at is None:
        return {"profiles": None, "identified": None, "share_identified": None, "counted_at": None}
    total, identified = int(row.total), int(row.identified)
    return {
        "profiles": total,
        "identified": identified,
        "share_identified": round(identified / total, 4) if total else None,
        "counted_at": row.counted_at,
    }


def merges_since(conn: Connection, *, since: datetime) -> int:
    """Merges made by events received since `since` (an index range on `merged_at`)."""
    query = sa.select(sa.func.count()).where(profile_merges.c.merged_at >= since)
    return int(conn.execute(query).scalar_one())
