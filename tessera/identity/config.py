"""Identity rules: which identifier types exist, their priority and limits, blocked values.

`IdentityRules` is the resolved runtime form of the `TESSERA_IDENTITY_*` settings (the
user-written settings stay in `config.Settings`; this keeps what the graph needs, checked).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tessera.config import DEFAULT_BLOCKED_VALUES, Settings
from tessera.errors import ConfigurationError

if TYPE_CHECKING:
    from tessera.identity.extract import Identifier

# Built-in types, highest priority first; custom types from context.externalIds follow.
BUILT_IN_TYPES = ("user_id", "email", "phone", "anonymous_id", "device_id", "advertising_id")
# Types that name an account, not a person: linked to profiles, never merged through.
ACCOUNT_TYPES = frozenset({"group_id"})
TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

_ZEROS_AND_DASHES = re.compile(r"^[0\-\s]+$")


@dataclass(frozen=True)
class IdentityRules:
    priority: tuple[str, ...] = BUILT_IN_TYPES
    limits: dict[str, int] = field(default_factory=lambda: {"user_id": 1, "email": 5})
    default_limit: int = 5
    blocked_values: frozenset[str] = frozenset(DEFAULT_BLOCKED_VALUES)
    default_region: str = "US"
    max_identifiers_per_profile: int = 500
    max_merges_per_profile: int = 100
    # (type, raw text) → its normalised identifier or None: `extract.identifier`'s memo (a
    # person's ids recur in every event they send).
    normalised: dict[tuple[str, str], Identifier | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Looked up for every identifier of every event: a dict, not tuple.index.
        object.__setattr__(self, "_ranks", {kind: i for i, kind in enumerate(self.priority)})

    def rank(self, kind: str) -> int:
        """Lower is higher priority; unknown (custom) types rank after every listed one."""
        ranks: dict[str, int] = self._ranks  # type: ignore[attr-defined]
        return ranks.get(kind, len(self.priority))

    def limit(self, kind: str) -> int:
        return self.limits.get(kind, self.default_limit)

    def is_blocked(self, value: str) -> bool:
        lowered = value.strip().lower()
        return lowered in self.blocked_values or bool(_ZEROS_AND_DASHES.match(lowered))

    @classmethod
    def from_settings(cls, settings: Settings) -> IdentityRules:
        priority = tuple(settings.identity_priority)
        for kind in (*priority, *settings.identity_limits):
            if not TYPE_NAME.match(kind):
                raise ConfigurationError(
                    f"identifier type {kind!r} is not a valid name (lower-case letters, digits, _)"
                )
        for kind, limit in settings.identity_limits.items():
            if limit < 1:
                raise ConfigurationError(f"the limit for {kind!r} must be at least 1, got {limit}")
        blocked = frozenset(v.strip().lower() for v in settings.identity_blocked_values)
        return cls(
            priority=priority,
            limits=dict(settings.identity_limits),
            default_limit=settings.identity_default_limit,
            blocked_values=blocked,
            default_region=settings.identity_phone_region.upper(),
            max_identifiers_per_profile=settings.identity_max_identifiers_per_profile,
            max_merges_per_profile=settings.identity_max_merges_per_profile,
        )
