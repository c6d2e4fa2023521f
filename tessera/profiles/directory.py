"""Browsing people a page at a time: newest known people first, or recently active (known
or anonymous). Each page is one keyset range over an index and one read of the page's
summaries (`summaries`, which other lists, such as an audience's members, use too):
nothing counts or sorts the whole store."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.errors import BadRequest
from tessera.profiles.models import profile_search, profiles

SORTS = ("newest", "recent")
MAX_LIMIT = 200


def summaries(conn: Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The page's people: what the search index shows of them, and their activity."""
    if not ids:
        return {}
    rows = conn.execute(
        sa.select(
            profiles.c.id,
            profiles.c.created_at,
            profiles.c.updated_at,
            profiles.c.event_count,
            profile_search.c.name,
            profile_search.c.email,
            profile_search.c.phone,
            profile_search.c.company,
        )
        .select_from(
            profiles.outerjoin(profile_search, profile_search.c.profile_id == profiles.c.id)
        )
        .where(profiles.c.id.in_(ids))
    )
    return {
        row.id: {
            "id": row.id,
            "name": row.name,
            "email": row.email,
            "phone": row.phone,
            "company": row.company,
            "known": row.name is not None or row.email is not None or row.phone is not None,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "events": int(row.event_count or 0),
        }
        for row in rows
    }


def _page(ids: list[str], limit: int, cursor_of: Any) -> tuple[list[str], str | None]:
    if len(ids) > limit:
        return ids[:limit], cursor_of(limit - 1)
    return ids, None


def list_people(
    conn: Connection,
    *,
    sort: str = "newest",
    limit: int = 50,
    after: str | None = None,
) -> dict[str, Any]:
    """`{"items": [...], "next_cursor"}`. `newest`: people with anything to find them by
    (a name, email, phone or id), newest first; `recent`: everyone, known or anonymous, by
    last activity."""
    if sort not in SORTS:
        raise BadRequest(f"sort {sort!r} is not one of: {', '.join(SORTS)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    try:
        if sort == "recent":
            ids, cursor = _recent(conn, limit=limit, after=after)
        else:
            ids, cursor = _newest(conn, limit=limit, after=after)
    except (ValueError, IndexError):
        raise BadRequest("that page link is broken; start again from the first page") from None
    found = summaries(conn, ids)
    return {"items": [found[pid] for pid in ids if pid in found], "next_cursor": cursor}


def _newest(conn: Connection, *, limit: int, after: str | None) -> tuple[list[str], str | None]:
    query = (
        sa.select(profile_search.c.seq, profile_search.c.profile_id)
        .order_by(profile_search.c.seq.desc())
        .limit(limit + 1)
    )
    if after:
        query = query.where(profile_search.c.seq < int(after))
    rows = list(conn.execute(query))
    return _page([row.profile_id for row in rows], limit, lambda i: str(rows[i].seq))


def _recent(conn: Connection, *, limit: int, after: str | None) -> tuple[list[str], str | None]:
    query = (
        sa.select(profiles.c.id, profiles.c.updated_at)
        .where(profiles.c.merged_into.is_(None))
        .order_by(profiles.c.updated_at.desc(), profiles.c.id.desc())
        .limit(limit + 1)
    )
    if after:
        moment, _, last_id = after.partition("|")
        stamp = datetime.fromisoformat(moment)  # compared through the column's own type
        query = query.where(
            sa.or_(
                profiles.c.updated_at < stamp,
                sa.and_(profiles.c.updated_at == stamp, profiles.c.id < last_id),
            )
        )
    rows = list(conn.execute(query))
    return _page(
        [row.id for row in rows],
        limit,
        lambda i: f"{rows[i].updated_at.isoformat()}|{rows[i].id}",
    )
