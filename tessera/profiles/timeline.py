"""A profile's timeline: its events newest first a page at a time (keyset cursor), the
events that arrived after a log position (a live timeline's poll), and the names to filter on."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.errors import BadRequest
from tessera.eventlog.models import events
from tessera.ingest.models import sources
from tessera.profiles.models import event_profiles


def _encode_cursor(timestamp: datetime, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{timestamp.isoformat()}|{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, seq = text.partition("|")
        return datetime.fromisoformat(stamp), int(seq)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(f"cursor {cursor[:40]!r} is not one this API gave out") from None


def _profile_events(
    profile_id: str, types: list[str] | None, names: list[str] | None
) -> sa.Select[Any]:
    query = (
        sa.select(events, sources.c.name.label("source_name"))
        .select_from(
            event_profiles.join(events, events.c.seq == event_profiles.c.seq).outerjoin(
                sources, sources.c.id == events.c.source_id
            )
        )
        .where(event_profiles.c.profile_id == profile_id)
    )
    if types:
        query = query.where(events.c.type.in_(types))
    if names:
        query = query.where(events.c.name.in_(names))
    return query


def _event_item(row: Any) -> dict[str, Any]:
    payload = orjson.loads(row.payload)
    return {
        "seq": row.seq,
        "messageId": row.message_id,
        "type": row.type,
        "event": payload.get("event") if row.type == "track" else None,
        "name": payload.get("name") if row.type in ("page", "screen") else None,
        "userId": row.user_id,
        "anonymousId": row.anonymous_id,
        "timestamp": row.timestamp,
        "receivedAt": row.received_at,
        "properties": payload.get("properties"),
        "traits": payload.get("traits"),
        "context": payload.get("context"),
        "source": row.source_name,
    }


def list_profile_events(
    conn: Connection,
    profile_id: str,
    *,
    types: list[str] | None = None,
    names: list[str] | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """The timeline, newest first (by corrected timestamp), a page at a time."""
    query = (
        _profile_events(profile_id, types, names)
        .order_by(events.c.timestamp.desc(), events.c.seq.desc())
        .limit(limit + 1)
    )
    if cursor:
        stamp, seq = _decode_cursor(cursor)
        query = query.where(
            sa.or_(
                events.c.timestamp < stamp, sa.and_(events.c.timestamp == stamp, events.c.seq < seq)
            )
        )
    rows = list(conn.execute(query))
    items = [_event_item(row) for row in rows[:limit]]
    next_cursor = (
        _encode_cursor(rows[limit - 1].timestamp, rows[limit - 1].seq)
        if len(rows) > limit
        else None
    )
    return {"items": items, "next_cursor": next_cursor}


def list_profile_events_after(
    conn: Connection,
    profile_id: str,
    *,
    after_seq: int,
    types: list[str] | None = None,
    names: list[str] | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """Events attributed to the profile after log position `after_seq`: the oldest `limit`
    of them by position (so none is skipped), returned newest first by timestamp, with
    `latest_seq`, the position to ask after next time. A range on
    `ix_event_profiles_profile_id_seq`: cheap to ask every second."""
    query = (
        _profile_events(profile_id, None, None)
        .where(event_profiles.c.seq > after_seq)
        .order_by(event_profiles.c.seq)
        .limit(limit)
    )
    rows = list(conn.execute(query))
    latest = rows[-1].seq if rows else after_seq
    # Filtered here, not in SQL: the position must pass events the filters leave out too.
    wanted = [
        row for row in rows if (not types or row.type in types) and (not names or row.name in names)
    ]
    wanted.sort(key=lambda row: (row.timestamp, row.seq), reverse=True)
    return {"items": [_event_item(row) for row in wanted], "latest_seq": latest}


def latest_event_seq(conn: Connection, profile_id: str) -> int:
    """The log position of the profile's newest event (0 without one): where a live
    timeline starts listening. One step down `ix_event_profiles_profile_id_seq`."""
    query = sa.select(sa.func.max(event_profiles.c.seq)).where(
        event_profiles.c.profile_id == profile_id
    )
    return int(conn.execute(query).scalar() or 0)


def event_names(conn: Connection, profile_id: str, *, recent: int = 1000) -> list[str]:
    """The distinct event and page names among the profile's `recent` latest events (by
    position): choices for a timeline filter, bounded however long the history is."""
    latest = (
        sa.select(events.c.name)
        .select_from(event_profiles.join(events, events.c.seq == event_profiles.c.seq))
        .where(event_profiles.c.profile_id == profile_id, events.c.name.is_not(None))
        .order_by(event_profiles.c.seq.desc())
        .limit(recent)
        .subquery()
    )
    query = sa.select(latest.c.name).distinct().order_by(latest.c.name)
    return [name for (name,) in conn.execute(query)]
