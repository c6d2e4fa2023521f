"""Pull access: `GET /api/v1/profiles`, every profile (or one audience's members), optionally
only those updated since a moment, a page at a time, for systems that fetch rather than listen.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection

from tessera.api.deps import ConnectionDep, Principal, require
from tessera.audiences.models import audience_members, audiences
from tessera.audiences.service import profile_audiences
from tessera.errors import BadRequest, NotFound
from tessera.profiles import views
from tessera.profiles.masking import mask_profile
from tessera.profiles.models import profiles
from tessera.profiles.schemas import ProfileOut

router = APIRouter(prefix="/api/v1/profiles", tags=["activation"])
Reader = Annotated[Principal, Depends(require("profiles:read"))]

MAX_LIMIT = 1000
TIMESTAMP_EXAMPLE = "2026-11-22T10:00:00Z"


class ProfilePage(BaseModel):
    items: list[ProfileOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")


# -- the cursor -------------------------------------------------------------------------------


# Opaque to clients (today: the page's last profile id), so how pages are cut can change
# without breaking them.
def encode_cursor(profile_id: str) -> str:
    return base64.urlsafe_b64encode(profile_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The profile id in a cursor `encode_cursor` made; anything else is a 400."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        text = ""
    # The decoder skips characters outside the alphabet, so only a cursor that re-encodes to
    # itself is one we gave out; the id check keeps anything else away from the query.
    if not views.PROFILE_ID.match(text) or encode_cursor(text) != cursor:
        raise BadRequest(
            f"cursor {cursor[:40]!r} is not one this API gave out; pass a page's `next_cursor` "
            "as it came, or leave `cursor` out to start from the beginning"
        )
    return text


def parse_updated_since(value: str) -> datetime:
    """An aware UTC moment from ISO 8601; without a zone it is UTC, as in the tracking API."""
    try:
        moment = datetime.fromisoformat(value)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        # In a query string an unescaped `+` arrives as a space: say so, it is the usual cause.
        hint = "; send a `+` offset as %2B" if " " in value.strip() else ""
        raise BadRequest(
            f"updated_since {value[:64]!r} is not an ISO 8601 date-time; expected, for "
            f"example, {TIMESTAMP_EXAMPLE} or 2026-11-22T11:00:00+01:00{hint}"
        ) from None


# -- the query --------------------------------------------------------------------------------


def list_profile_ids(
    conn: Connection,
    *,
    audience_id: str | None,
    updated_since: datetime | None,
    after: str | None,
    limit: int,
) -> tuple[list[str], str | None]:
    """A page of surviving profile ids in id order, and the last one when more follow."""
    if audience_id is None:
        key = profiles.c.id
        query = sa.select(key)
    else:
        exists = sa.select(audiences.c.id).where(audiences.c.id == audience_id)
        if conn.execute(exists).first() is None:
            raise NotFound(
                f"there is no audience {audience_id!r}; GET /api/v1/audiences lists them"
            )
        # Walked on the members' primary key (audience, profile), so a page is a range scan.
        key = audience_members.c.profile_id
        query = (
            sa.select(key)
            .join(profiles, profiles.c.id == key)
            .where(audience_members.c.audience_id == audience_id)
        )
    # Absorbed ids resolve to their survivor, which is listed under its own id.
    query = query.where(profiles.c.merged_into.is_(None)).order_by(key).limit(limit + 1)
    if updated_since is not None:
        query = query.where(profiles.c.updated_at >= updated_since)
    if after is not None:
        query = query.where(key > after)
    ids = [str(profile_id) for (profile_id,) in conn.execute(query)]
    return ids[:limit], (ids[limit - 1] if len(ids) > limit else None)


def list_profiles(
    conn: Connection,
    *,
    audience_id: str | None,
    updated_since: datetime | None,
    cursor: str | None,
    limit: int,
    may_read_pii: bool,
) -> dict[str, Any]:
    """A page of whole profiles, each as `GET /api/v1/profiles/{ref}` shows it."""
    ids, last = list_profile_ids(
        conn,
        audience_id=audience_id,
        updated_since=updated_since,
        after=decode_cursor(cursor) if cursor else None,
        limit=limit,
    )
    items = []
    # The profile view's bulk form, so a pulled profile is the one the profile API shows,
    # and a page costs the queries of one profile (plus its memberships).
    found = views.get_profiles(conn, ids)
    for profile_id in ids:
        body = found[profile_id]
        body["audiences"] = profile_audiences(conn, profile_id=profile_id)
        items.append(body if may_read_pii else mask_profile(body))
    return {"items": items, "next_cursor": None if last is None else encode_cursor(last)}


# -- the route --------------------------------------------------------------------------------


@router.get("", response_model=ProfilePage, summary="Pull profiles, a page at a time")
def pull_profiles(
    *,
    conn: ConnectionDep,
    principal: Reader,
    audience: Annotated[
        str | None, Query(max_length=200, description="Only this audience's current members.")
    ] = None,
    updated_since: Annotated[
        str | None,
        Query(
            max_length=64,
            description=f"Only profiles updated at or after this ISO 8601 moment "
            f"({TIMESTAMP_EXAMPLE}); without a zone, UTC.",
        ),
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> dict[str, Any]:
    """Surviving profiles in profile-id order; follow `next_cursor` until it is null. Personal
    data is masked for roles without `pii:read`."""
    return list_profiles(
        conn,
        audience_id=audience,
        updated_since=None if updated_since is None else parse_updated_since(updated_since),
        cursor=cursor,
        limit=limit,
        may_read_pii=principal.may("pii:read"),
    )
