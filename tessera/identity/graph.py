"""Deterministic identity resolution: attribute an event to one profile, merging profiles
that its identifiers prove to be one person, within the rules (like Segment Unify).

The event's identifiers are taken highest priority first. An identifier nobody owns joins
the event's profile unless that would exceed its type's limit. An identifier owned by
another profile merges that profile in, unless the merged profile would exceed a limit
(two `user_id`s, say), the pair is blocked by an unmerge, or a hard cap is reached; then
that identifier is dropped for this event. So a shared device or anonymous id never merges
two different `user_id`s: the user_id ranks first and the device id is the one dropped.

The oldest profile (lowest creating event) survives a merge; the absorbed id keeps
resolving to it. Every merge is recorded with its rule, the identifiers and the event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.identity.config import IdentityRules
from tessera.identity.extract import Identifier
from tessera.identity.models import identities, merge_blocks, profile_merges


def profile_id_for(seq: int) -> str:
    """The id of a profile created by the event at `seq`: the same on every rebuild."""
    return f"prf_{seq}"


def created_seq(profile_id: str) -> int:
    return int(profile_id.removeprefix("prf_"))


@dataclass(slots=True)
class Dropped:
    identifier: Identifier
    reason: str


@dataclass(slots=True)
class Resolution:
    """Where one event belongs, and what resolving it changed."""

    profile_id: str | None
    created: bool = False
    new_identifiers: list[Identifier] = field(default_factory=list)
    # (absorbed profile, the identifier that linked it, rule)
    merged: list[tuple[str, Identifier, str]] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)


def owners(conn: Connection, idents: Iterable[Identifier]) -> dict[Identifier, str]:
    """Current owner profile of each identifier that has one."""
    by_type: dict[str, list[str]] = {}
    for ident in idents:
        by_type.setdefault(ident.type, []).append(ident.value)
    if not by_type:
        return {}
    condition = sa.or_(
        *(
            sa.and_(identities.c.type == kind, identities.c.value.in_(values))
            for kind, values in by_type.items()
        )
    )
    query = sa.select(identities.c.type, identities.c.value, identities.c.profile_id).where(
        condition
    )
    return {Identifier(kind, value): owner for kind, value, owner in conn.execute(query)}


def identity_counts(conn: Connection, profile_id: str) -> Counter[str]:
    query = (
        sa.select(identities.c.type, sa.func.count())
        .where(identities.c.profile_id == profile_id)
        .group_by(identities.c.type)
    )
    return Counter({kind: int(count) for kind, count in conn.execute(query)})


def merge_count(conn: Connection, profile_id: str) -> int:
    query = sa.select(sa.func.count()).where(profile_merges.c.survivor_id == profile_id)
    return int(conn.execute(query).scalar_one())


def blocked_pairs(conn: Connection, profile_ids: Iterable[str]) -> set[tuple[str, str]]:
    ids = list(profile_ids)
    if not ids:
        return set()
    query = sa.select(merge_blocks.c.profile_a, merge_blocks.c.profile_b).where(
        sa.or_(merge_blocks.c.profile_a.in_(ids), merge_blocks.c.profile_b.in_(ids))
    )
    return {(a, b) for a, b in conn.execute(query)}


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def _within_limits(counts: Counter[str], rules: IdentityRules) -> bool:
    if sum(counts.values()) > rules.max_identifiers_per_profile:
        return False
    return all(count <= rules.limit(kind) for kind, count in counts.items())


class _MergeGuard:
    """Checks a merge against unmerge blocks and the per-profile merge cap."""

    def __init__(self, conn: Connection, rules: IdentityRules) -> None:
        self.conn = conn
        self.rules = rules
        self.merges_left: int | None = None

    def refuse(self, owner: str, cluster: list[str]) -> str | None:
        blocks = blocked_pairs(self.conn, [owner])
        if any(_pair(owner, member) in blocks for member in cluster):
            return "the merge was undone and is blocked"
        if self.merges_left is None:
            done = max(merge_count(self.conn, member) for member in cluster)
            self.merges_left = self.rules.max_merges_per_profile - done
        if self.merges_left <= 0:
            return "merge cap reached"
        self.merges_left -= 1
        return None


def resolve(
    conn: Connection,
    *,
    seq: int,
    idents: list[Identifier],
    rules: IdentityRules,
    alias_of: Identifier | None = None,
) -> Resolution:
    """Decide which profile the event at `seq` belongs to; does not write anything.

    `idents` come highest priority first. `alias_of` is the identifier an alias call's
    previousId names; it links with the rule "alias".
    """
    candidates = list(idents)
    if alias_of is not None and alias_of not in candidates:
        candidates.append(alias_of)
    owned = owners(conn, candidates)
    cluster: list[str] = []
    counts: Counter[str] = Counter()
    resolution = Resolution(profile_id=None)
    guard = _MergeGuard(conn, rules)

    for ident in candidates:
        owner = owned.get(ident)
        rule = "alias" if ident == alias_of else "identifier"
        if owner is None:
            counts[ident.type] += 1
            if not _within_limits(counts, rules):
                counts[ident.type] -= 1
                resolution.dropped.append(Dropped(ident, f"{ident.type} limit reached"))
                continue
            resolution.new_identifiers.append(ident)
            continue
        if owner in cluster:
            continue
        theirs = identity_counts(conn, owner)
        if not _within_limits(counts + theirs, rules):
            resolution.dropped.append(Dropped(ident, "linking would exceed an identifier limit"))
            continue
        if cluster:
            # A second profile: merging it into the cluster must also be allowed.
            refusal = guard.refuse(owner, cluster)
            if refusal is not None:
                resolution.dropped.append(Dropped(ident, refusal))
                continue
            resolution.merged.append((owner, ident, rule))
        cluster.append(owner)
        counts += theirs

    if not cluster:
        if not resolution.new_identifiers:
            return resolution  # nothing usable to attribute the event by
        resolution.profile_id = profile_id_for(seq)
        resolution.created = True
        return resolution
    survivor = min(cluster, key=created_seq)
    resolution.profile_id = survivor
    # Re-point merges at the survivor: whichever profile the loop met first may be younger.
    if survivor != cluster[0]:
        # The first profile met had no merge entry; the survivor's entry now describes it.
        reasons = {absorbed: (ident, rule) for absorbed, ident, rule in resolution.merged}
        reasons[cluster[0]] = reasons.pop(survivor)
        resolution.merged = [(member, *reasons[member]) for member in cluster if member != survivor]
    return resolution


def record_merge(
    conn: Connection,
    *,
    survivor: str,
    absorbed: str,
    rule: str,
    identifiers: list[Identifier],
    seq: int,
    message_id: str,
    at: datetime,
) -> None:
    conn.execute(
        profile_merges.insert().values(
            survivor_id=survivor,
            absorbed_id=absorbed,
            rule=rule,
            identifiers=orjson.dumps([str(ident) for ident in identifiers]).decode(),
            seq=seq,
            message_id=message_id,
            merged_at=at,
        )
    )
    conn.execute(
        identities.update().where(identities.c.profile_id == absorbed).values(profile_id=survivor)
    )


def link_identifiers(conn: Connection, profile_id: str, idents: list[Identifier], seq: int) -> None:
    if idents:
        conn.execute(
            identities.insert(),
            [
                {
                    "type": ident.type,
                    "value": ident.value,
                    "profile_id": profile_id,
                    "first_seq": seq,
                }
                for ident in idents
            ],
        )
