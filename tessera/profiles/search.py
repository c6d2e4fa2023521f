"""The people search: surviving profiles found by a prefix of a name, email, phone, company
or identifier, a page at a time, as summaries (the index is `search_index.py`'s).

Results come in two tiers: profiles with an identifier equal to the whole query (an email,
a phone, a user id typed in full) first, then every profile whose terms start with each
word of the query. Within a tier, the newest person first: the order the index already
holds its rows in (by the profile's `created_seq`), so a page reads only its own rows
however many profiles match; a relevance order would have to score every match first.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.errors import BadRequest
from tessera.profiles.search_terms import (
    SearchQuery,
    fts5_exact,
    fts5_prefix,
    parse_query,
    tsquery_exact,
    tsquery_prefix,
)
from tessera.store.types import UtcDateTime

MAX_LIMIT = 100
EXACT, PREFIX = 0, 1
_NO_BOUND = 2**63 - 1
_CURSOR = re.compile(r"^([01])\.(\d{1,19})$")

_COLUMNS = "s.seq, s.profile_id, s.name, s.email, s.phone, s.company, p.updated_at"
# FTS5 hands back its matches in row-id order, either way, and stops when the LIMIT is met.
_SQLITE = sa.text(
    f"SELECT {_COLUMNS} FROM profile_search_fts AS f "
    "JOIN profile_search AS s ON s.seq = f.rowid "
    "JOIN profiles AS p ON p.id = s.profile_id "
    "WHERE profile_search_fts MATCH :match AND f.rowid < :below "
    "ORDER BY f.rowid DESC LIMIT :limit"
).columns(updated_at=UtcDateTime())
# `document` is the terms as a tsvector, with a GIN index (revision 0010): the planner
# reads the matches from it when they are few, or rows newest first when most match. The
# page is cut before `profiles` is joined: from the index, every match would be joined
# first (263 lookups for a common first and last name, for a page of 21).
_POSTGRESQL = sa.text(
    f"SELECT {_COLUMNS} FROM ("
    "SELECT seq, profile_id, name, email, phone, company FROM profile_search "
    "WHERE document @@ CAST(:match AS tsquery) AND seq < :below "
    "ORDER BY seq DESC LIMIT :limit"
    ") AS s JOIN profiles AS p ON p.id = s.profile_id ORDER BY s.seq DESC"
).columns(updated_at=UtcDateTime())


def search_profiles(
    conn: Connection,
    *,
    query: str,
    limit: int = 20,
    after: str | None = None,
    personal: bool = True,
) -> dict[str, Any]:
    """A page of profiles matching `query`: `{"items": [{id, name, email, phone, company,
    updated_at}], "next_cursor"}`; pass `next_cursor` as `after` for the next page.

    `personal=False` (roles without `pii:read`) matches user ids, other identifiers and
    companies only, never names, emails or phones, so a search cannot tell who is a
    customer from their personal data; the items' personal fields are returned as stored
    (the caller masks them). A query with fewer than two letters or digits finds nothing.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    tier, below = _decode(after) if after else (EXACT, _NO_BOUND)
    parsed = parse_query(query)
    if parsed is None:
        return {"items": [], "next_cursor": None}
    found: list[tuple[int, Any]] = []
    for current in (EXACT, PREFIX):
        if current < tier:
            continue
        match = _expression(conn, parsed, tier=current, personal=personal)
        if match is not None:
            rows = conn.execute(
                _POSTGRESQL if conn.dialect.name == "postgresql" else _SQLITE,
                {
                    "match": match,
                    "below": below if current == tier else _NO_BOUND,
                    "limit": limit + 1 - len(found),
                },
            )
            found += [(current, row) for row in rows]
        if len(found) > limit:
            break
    items = [_summary(row) for _tier, row in found[:limit]]
    if len(found) <= limit:
        return {"items": items, "next_cursor": None}
    last_tier, last = found[limit - 1]
    return {"items": items, "next_cursor": f"{last_tier}.{last.seq}"}


def _expression(conn: Connection, query: SearchQuery, *, tier: int, personal: bool) -> str | None:
    if conn.dialect.name == "postgresql":
        if tier == EXACT:
            return tsquery_exact(query, personal=personal)
        return tsquery_prefix(query, personal=personal)
    if tier == EXACT:
        return fts5_exact(query, personal=personal)
    return fts5_prefix(query, personal=personal)


def _decode(cursor: str) -> tuple[int, int]:
    matched = _CURSOR.match(cursor)
    if matched is None or int(matched[2]) >= _NO_BOUND:
        raise BadRequest(
            f"cursor {cursor[:40]!r} is not one this search gave out; pass a page's "
            "`next_cursor` as it came, or leave it out to start from the first result"
        )
    return int(matched[1]), int(matched[2])


def _summary(row: Any) -> dict[str, Any]:
    return {
        "id": row.profile_id,
        "name": row.name,
        "email": row.email,
        "phone": row.phone,
        "company": row.company,
        "updated_at": row.updated_at,
    }
