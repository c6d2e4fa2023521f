"""Reading profiles: resolve a reference, assemble the unified view, its identifiers, merges
and the graph they draw (the timeline is in `timeline.py`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.errors import BadRequest, NotFound
from tessera.eventlog.models import events
from tessera.identity.config import ACCOUNT_TYPES, TYPE_NAME, IdentityRules
from tessera.identity.extract import normalise
from tessera.identity.models import identities, profile_merges
from tessera.ingest.models import sources
from tessera.profiles.models import (
    computed_trait_values,
    computed_traits,
    event_profiles,
    profile_accounts,
    profile_consent,
    profile_traits,
    profiles,
)
from tessera.store.chunks import chunked

PROFILE_ID = re.compile(r"^prf_\d{1,19}$")


# Statements built once: building a select costs more than running it on an indexed key.
_OWNER_OF = sa.select(identities.c.profile_id).where(
    identities.c.type == sa.bindparam("type"), identities.c.value == sa.bindparam("value")
)
_PROFILE_ROW = sa.select(profiles.c.id, profiles.c.merged_into).where(
    profiles.c.id == sa.bindparam("id")
)


def resolve_reference(conn: Connection, ref: str, rules: IdentityRules) -> str:
    """The surviving profile id for `ref`: an id, or `TYPE:VALUE` such as `email:jo@x.com`."""
    if ":" in ref:
        kind, _, raw = ref.partition(":")
        if not TYPE_NAME.match(kind):
            raise BadRequest(
                f"{kind!r} is not an identifier type; use TYPE:VALUE, e.g. email:jo@example.com"
            )
        if kind in ACCOUNT_TYPES:
            raise BadRequest(f"{kind} names an account, which many profiles share; not a person")
        value = normalise(kind, raw, rules)
        if value is None:
            raise BadRequest(f"{raw!r} is not a usable {kind} (empty, blocked or malformed)")
        owner = conn.execute(_OWNER_OF, {"type": kind, "value": value}).scalar()
        if owner is None:
            raise NotFound(f"no profile has {kind} {value!r}")
        return str(owner)
    if not PROFILE_ID.match(ref):
        raise BadRequest(f"{ref[:80]!r} is neither a profile id (prf_123) nor TYPE:VALUE")
    row = conn.execute(_PROFILE_ROW, {"id": ref}).first()
    if row is None:
        raise NotFound(f"no profile has id {ref!r}")
    return str(row.merged_into or row.id)


def get_profile(conn: Connection, profile_id: str) -> dict[str, Any]:
    found = _assemble(conn.execute(_ONE_PROFILE, {"id": profile_id}))
    if profile_id not in found:
        raise NotFound(f"no profile has id {profile_id!r}")
    return found[profile_id]


def get_profiles(conn: Connection, profile_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Profiles by id (as they are stored: absorbed ids are not resolved), each part read
    for all of them at once: a page of a list costs the queries of one profile."""
    found: dict[str, dict[str, Any]] = {}
    for chunk in chunked(sorted(set(profile_ids))):
        found.update(_assemble(conn.execute(_MANY_PROFILES, {"ids": list(chunk)})))
    return found


# Every part of a profile (its row, traits with their source's name, identities, accounts,
# absorbed ids, named ready computed traits, consent) comes back from one UNION ALL as rows
# of one shape, tagged by part: one round trip and one snapshot instead of seven queries.
# Within a profile, rows come in each part's order (traits by name, identities by first
# sighting, absorbed ids by creation, ...). The first SELECT fixes the result types, so its
# `moment` (a UtcDateTime) reads every part's timestamp back as an aware UTC datetime.
(
    _PART_PROFILE,
    _PART_TRAIT,
    _PART_IDENTITY,
    _PART_ACCOUNT,
    _PART_MERGED,
    _PART_COMPUTED,
    _PART_CONSENT,
) = range(7)
# After `part`, in the order `_assemble` unpacks them (plain tuples: a fifth of the cost of
# reading each row's columns by name).
_PART_COLUMNS = (
    "profile_id",
    "position",
    "name",
    "value",
    "source",
    "message_id",
    "moment",
    "later",
    "number",
)


def _part(
    part: int,
    profile_id: sa.ColumnElement[Any],
    **columns: sa.ColumnElement[Any],
) -> sa.Select[Any]:
    given = {"position": sa.literal_column("0", sa.BigInteger), **columns}
    return sa.select(
        sa.literal_column(str(part), sa.Integer).label("part"),
        *(
            (profile_id if name == "profile_id" else given.get(name, sa.null())).label(name)
            for name in _PART_COLUMNS
        ),
    )


def _profile_parts(match: Callable[[sa.ColumnElement[str]], sa.ColumnElement[bool]]) -> Any:
    parts = sa.union_all(
        _part(
            _PART_PROFILE,
            profiles.c.id,
            moment=profiles.c.created_at,
            later=profiles.c.updated_at,
            number=profiles.c.event_count,
        ).where(match(profiles.c.id)),
        _part(
            _PART_TRAIT,
            profile_traits.c.profile_id,
            name=profile_traits.c.name,
            value=profile_traits.c.value,
            source=sources.c.name,
            message_id=profile_traits.c.message_id,
            moment=profile_traits.c.timestamp,
        )
        .select_from(profile_traits.outerjoin(sources, sources.c.id == profile_traits.c.source_id))
        .where(match(profile_traits.c.profile_id)),
        _part(
            _PART_IDENTITY,
            identities.c.profile_id,
            position=identities.c.first_seq,
            name=identities.c.type,
            value=identities.c.value,
        ).where(match(identities.c.profile_id)),
        _part(
            _PART_ACCOUNT,
            profile_accounts.c.profile_id,
            name=profile_accounts.c.group_id,
            value=profile_accounts.c.traits,
            moment=profile_accounts.c.timestamp,
        ).where(match(profile_accounts.c.profile_id)),
        _part(
            _PART_MERGED,
            profiles.c.merged_into,
            position=profiles.c.created_seq,
            name=profiles.c.id,
        ).where(match(profiles.c.merged_into)),
        _part(
            _PART_COMPUTED,
            computed_trait_values.c.profile_id,
            name=computed_trait_values.c.name,
            value=computed_trait_values.c.value,
            moment=computed_trait_values.c.updated_at,
        )
        .join(computed_traits, computed_traits.c.name == computed_trait_values.c.name)
        .where(
            match(computed_trait_values.c.profile_id),
            computed_traits.c.implicit.is_(False),
            computed_traits.c.status == "ready",
        ),
        _part(
            _PART_CONSENT,
            profile_consent.c.profile_id,
            name=profile_consent.c.category,
            moment=profile_consent.c.timestamp,
            number=sa.cast(profile_consent.c.granted, sa.Integer),
        ).where(match(profile_consent.c.profile_id)),
    )
    columns = parts.selected_columns
    return parts.order_by(columns.part, columns.position, columns.name, columns.value)


_ONE_PROFILE = _profile_parts(lambda column: column == sa.bindparam("id"))
_MANY_PROFILES = _profile_parts(lambda column: column.in_(sa.bindparam("ids", expanding=True)))


def _assemble(rows: Iterable[Sequence[Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for part, profile_id, _, name, value, source, message_id, moment, later, number in rows:
        if part == _PART_PROFILE:
            found[profile_id] = {
                "id": profile_id,
                "traits": {},
                "identities": [],
                "accounts": [],
                "provenance": {},
                "merged_ids": [],
                "event_count": number,
                "computed_traits": {},
                "consent": {},
                "created_at": moment,
                "updated_at": later,
            }
            continue
        body = found.get(profile_id)
        if body is None:  # a part of an id that has no profile row: nothing to show
            continue
        if part == _PART_TRAIT:
            body["traits"][name] = orjson.loads(value)
            body["provenance"][name] = {
                "source": source,
                "message_id": message_id,
                "timestamp": moment,
            }
        elif part == _PART_IDENTITY:
            body["identities"].append({"type": name, "value": value})
        elif part == _PART_ACCOUNT:
            body["accounts"].append(
                {"group_id": name, "traits": orjson.loads(value), "timestamp": moment}
            )
        elif part == _PART_MERGED:
            body["merged_ids"].append(name)
        elif part == _PART_COMPUTED:
            body["computed_traits"][name] = {
                "value": orjson.loads(value) if value is not None else None,
                "updated_at": moment,
            }
        elif part == _PART_CONSENT:
            body["consent"][name] = {"granted": bool(number), "timestamp": moment}
    return found


def computed_trait_values_of(conn: Connection, profile_id: str) -> dict[str, Any]:
    """The profile's named, ready computed traits: `{name: {value, updated_at}}`. Implicit
    ones (audience event conditions) and those still backfilling are left out."""
    return computed_trait_values_of_many(conn, [profile_id]).get(profile_id, {})


def computed_trait_values_of_many(
    conn: Connection, profile_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    query = (
        sa.select(
            computed_trait_values.c.profile_id,
            computed_trait_values.c.name,
            computed_trait_values.c.value,
            computed_trait_values.c.updated_at,
        )
        .join(computed_traits, computed_traits.c.name == computed_trait_values.c.name)
        .where(
            computed_trait_values.c.profile_id.in_(list(profile_ids)),
            computed_traits.c.implicit.is_(False),
            computed_traits.c.status == "ready",
        )
        .order_by(computed_trait_values.c.profile_id, computed_trait_values.c.name)
    )
    found: dict[str, dict[str, Any]] = {}
    for row in conn.execute(query):
        found.setdefault(row.profile_id, {})[row.name] = {
            "value": orjson.loads(row.value) if row.value is not None else None,
            "updated_at": row.updated_at,
        }
    return found


def list_identities(conn: Connection, profile_id: str) -> list[dict[str, Any]]:
    query = (
        sa.select(identities.c.type, identities.c.value, events.c.message_id)
        .select_from(identities.outerjoin(events, events.c.seq == identities.c.first_seq))
        .where(identities.c.profile_id == profile_id)
        .order_by(identities.c.first_seq, identities.c.type, identities.c.value)
    )
    return [
        {"type": kind, "value": value, "first_seen_message_id": message_id}
        for kind, value, message_id in conn.execute(query)
    ]


def list_merges(conn: Connection, profile_id: str) -> list[dict[str, Any]]:
    """Every merge that built this profile (into it, or into a profile it absorbed)."""
    members = [profile_id] + [
        merged
        for (merged,) in conn.execute(
            sa.select(profiles.c.id).where(profiles.c.merged_into == profile_id)
        )
    ]
    query = (
        sa.select(profile_merges)
        .where(
            sa.or_(
                profile_merges.c.survivor_id.in_(members), profile_merges.c.absorbed_id.in_(members)
            )
        )
        .order_by(profile_merges.c.id)
    )
    return [
        {
            "id": merge.id,
            "survivor_id": merge.survivor_id,
            "absorbed_id": merge.absorbed_id,
            "rule": merge.rule,
            "identifiers": orjson.loads(merge.identifiers),
            "message_id": merge.message_id,
            "merged_at": merge.merged_at,
        }
        for merge in conn.execute(query)
    ]


def trait_origins(conn: Connection, profile_id: str) -> dict[str, dict[str, Any]]:
    """For each trait, the event its current value came from: `{name: {seq, type, event}}`
    (the event's name, if it has one). Provenance's source and time are in `get_profile`."""
    query = (
        sa.select(profile_traits.c.name, events.c.seq, events.c.type, events.c.name.label("event"))
        .select_from(profile_traits.join(events, events.c.seq == profile_traits.c.seq))
        .where(profile_traits.c.profile_id == profile_id)
    )
    return {
        row.name: {"seq": row.seq, "type": row.type, "event": row.event}
        for row in conn.execute(query)
    }


def identity_graph(conn: Connection, profile_id: str) -> dict[str, Any]:
    """How a profile was built: `members` (the profile and every profile merged into it,
    oldest first, each with `created_at`), `identifiers` (each with `origin`: the member it
    was first linked to) and `merges` (as `list_merges`), for drawing the graph of who
    brought what and which merges joined them.

    An identifier's origin is the profile its first event was applied to
    (`event_profiles.applied_to`), which later merges do not move; events applied before
    revision 0008 have none, and their identifiers are shown on the profile itself."""
    members = [
        {"id": row.id, "created_at": row.created_at}
        for row in conn.execute(
            sa.select(profiles.c.id, profiles.c.created_at)
            .where(sa.or_(profiles.c.id == profile_id, profiles.c.merged_into == profile_id))
            .order_by(profiles.c.created_seq)
        )
    ]
    known = {member["id"] for member in members}
    query = (
        sa.select(
            identities.c.type,
            identities.c.value,
            identities.c.first_seq,
            event_profiles.c.applied_to,
        )
        .select_from(
            identities.outerjoin(event_profiles, event_profiles.c.seq == identities.c.first_seq)
        )
        .where(identities.c.profile_id == profile_id)
        .order_by(identities.c.first_seq, identities.c.type, identities.c.value)
    )
    found = [
        {
            "type": row.type,
            "value": row.value,
            "first_seq": row.first_seq,
            "origin": row.applied_to if row.applied_to in known else profile_id,
        }
        for row in conn.execute(query)
    ]
    return {"members": members, "identifiers": found, "merges": list_merges(conn, profile_id)}
