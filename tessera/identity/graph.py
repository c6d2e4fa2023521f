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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from tessera.identity.config import IdentityRules
from tessera.identity.extract import Identifier


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


class GraphState(Protocol):
    """What resolution needs to know of the graph; the processor's batch provides it."""

    def owner(self, ident: Identifier) -> str | None: ...

    def counts(self, profile_id: str) -> Mapping[str, int]:
        """Identifiers of each type the profile holds (read only)."""
        ...

    def merge_count(self, profile_id: str) -> int: ...

    def blocked(self, a: str, b: str) -> bool: ...


def ordered_pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def _within_limits(counts: Mapping[str, int], rules: IdentityRules) -> bool:
    if sum(counts.values()) > rules.max_identifiers_per_profile:
        return False
    return all(count <= rules.limit(kind) for kind, count in counts.items())


def _plus(counts: Mapping[str, int], more: Mapping[str, int]) -> dict[str, int]:
    """The two added up (plain dicts: Counter's arithmetic was ~4% of the main stage)."""
    total = dict(counts)
    for kind, count in more.items():
        total[kind] = total.get(kind, 0) + count
    return total


class _MergeGuard:
    """Checks a merge against unmerge blocks and the per-profile merge cap."""

    def __init__(self, state: GraphState, rules: IdentityRules) -> None:
        self.state = state
        self.rules = rules
        self.merges_left: int | None = None

    def refuse(self, owner: str, cluster: list[str]) -> str | None:
        if any(self.state.blocked(owner, member) for member in cluster):
            return "the merge was undone and is blocked"
        if self.merges_left is None:
            done = max(self.state.merge_count(member) for member in cluster)
            self.merges_left = self.rules.max_merges_per_profile - done
        if self.merges_left <= 0:
            return "merge cap reached"
        self.merges_left -= 1
        return None


def resolve(
    state: GraphState,
    *,
    seq: int,
    idents: list[Identifier],
    rules: IdentityRules,
    alias_of: Identifier | None = None,
) -> Resolution:
    """Decide which profile the event at `seq` belongs to; changes nothing.

    `idents` come highest priority first. `alias_of` is the identifier an alias call's
    previousId names; it links with the rule "alias".
    """
    candidates = list(idents)
    if alias_of is not None and alias_of not in candidates:
        candidates.append(alias_of)
    owned = {ident: owner for ident in candidates if (owner := state.owner(ident)) is not None}
    cluster: list[str] = []
    counts: dict[str, int] = {}
    resolution = Resolution(profile_id=None)
    guard = _MergeGuard(state, rules)

    for ident in candidates:
        owner = owned.get(ident)
        rule = "alias" if ident == alias_of else "identifier"
        if owner is None:
            grown = _plus(counts, {ident.type: 1})
            if not _within_limits(grown, rules):
                resolution.dropped.append(Dropped(ident, f"{ident.type} limit reached"))
                continue
            counts = grown
            resolution.new_identifiers.append(ident)
            continue
        if owner in cluster:
            continue
        joined = _plus(counts, state.counts(owner))
        if not _within_limits(joined, rules):
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
        counts = joined

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
