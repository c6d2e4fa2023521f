"""Which of two values of a trait wins: the latest event (default), the first, or the
value from the higher-priority source. Decided from the values' provenance alone, so the
outcome does not depend on the order events arrive in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tessera.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Provenance:
    source_id: int
    seq: int
    message_id: str
    timestamp: datetime


@dataclass(frozen=True)
class TraitPolicies:
    """Per-trait policy: "latest", "first" or a tuple of source names, best first."""

    policies: dict[str, str | tuple[str, ...]]
    source_names: dict[int, str]

    @classmethod
    def parse(cls, written: dict[str, str], source_names: dict[int, str]) -> TraitPolicies:
        """From the `TESSERA_TRAIT_POLICIES` form; raises ConfigurationError naming a bad one."""
        parsed: dict[str, str | tuple[str, ...]] = {}
        for trait, policy in written.items():
            if policy in ("latest", "first"):
                parsed[trait] = policy
            elif policy.startswith("sources:") and policy.removeprefix("sources:").strip():
                names = tuple(
                    n.strip() for n in policy.removeprefix("sources:").split(",") if n.strip()
                )
                parsed[trait] = names
            else:
                raise ConfigurationError(
                    f"trait policy {policy!r} for {trait!r} is not `latest`, `first` or "
                    "`sources:NAME,NAME`"
                )
        return cls(parsed, dict(source_names))

    def _rank(self, names: tuple[str, ...], source_id: int) -> int:
        name = self.source_names.get(source_id)
        return names.index(name) if name in names else len(names)

    def wins(self, trait: str, new: Provenance, old: Provenance) -> bool:
        """Does the value with provenance `new` replace the one with `old`?"""
        policy = self.policies.get(trait, "latest")
        later = (new.timestamp, new.seq) > (old.timestamp, old.seq)
        if policy == "latest":
            return later
        if policy == "first":
            return not later
        assert isinstance(policy, tuple)
        new_rank, old_rank = self._rank(policy, new.source_id), self._rank(policy, old.source_id)
        if new_rank != old_rank:
            return new_rank < old_rank
        return later
