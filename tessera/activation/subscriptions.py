"""What a destination receives: subscriptions parsed and validated up front (errors name
the JSON path), compiled into predicates the processor's fan-out runs on every event.

    [{"type": "events", "event_types": ["track"], "event_names": ["Order Completed"],
      "where": {"property": "total", "op": "gt", "value": 50}},
     {"type": "audience", "audiences": ["aud_1"], "changes": ["entered", "exited"]},
     {"type": "traits", "traits": ["email", "plan"]}]

An empty `event_types` / `event_names` / `traits` list means any; `audiences` must name at
least one audience.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tessera.conditions import PropertyFilter, match_all, only_keys, parse_property_filter
from tessera.errors import InvalidDefinition

EVENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")
CHANGES = ("entered", "exited")
MAX_SUBSCRIPTIONS = 50
MAX_NAMES = 500


@dataclass(frozen=True)
class EventSubscription:
    types: frozenset[str]
    names: frozenset[str]
    where: PropertyFilter = field(default=match_all, compare=False)

    def matches(self, payload: Mapping[str, Any]) -> bool:
        kind = payload.get("type")
        if self.types and kind not in self.types:
            return False
        if self.names:
            name = payload.get("event") if kind == "track" else payload.get("name")
            if name not in self.names:
                return False
        properties = payload.get("traits") if kind in ("identify", "group") else None
        if properties is None:
            properties = payload.get("properties")
        return self.where(properties if isinstance(properties, Mapping) else None)


@dataclass(frozen=True)
class Subscriptions:
    """A destination's subscriptions, compiled."""

    events: tuple[EventSubscription, ...] = ()
    audiences: dict[str, frozenset[str]] = field(default_factory=dict)  # id → changes
    traits: frozenset[str] | None = None  # None: no trait subscription; empty: any trait

    def wants_event(self, payload: Mapping[str, Any]) -> bool:
        return any(sub.matches(payload) for sub in self.events)

    def wants_change(self, audience_id: str, change: str) -> bool:
        return change in self.audiences.get(audience_id, ())

    def wanted_traits(self, changed: Mapping[str, Any]) -> dict[str, Any]:
        if self.traits is None:
            return {}
        if not self.traits:
            return dict(changed)
        return {name: value for name, value in changed.items() if name in self.traits}


def _names(doc: Mapping[str, Any], key: str, path: str, allowed: tuple[str, ...] = ()) -> list[str]:
    value = doc.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_NAMES:
        raise InvalidDefinition(f"{key} is a list of at most {MAX_NAMES} names", path=path)
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item or len(item) > 255:
            raise InvalidDefinition(
                f"{item!r} is not a name (a non-empty string)", path=f"{path}[{i}]"
            )
        if allowed and item not in allowed:
            raise InvalidDefinition(
                f"unknown {key[:-1].replace('_', ' ')} {item!r}; use {', '.join(allowed)}",
                path=f"{path}[{i}]",
            )
    return value


def parse_subscriptions(doc: Any, *, known_audiences: set[str], root: str = "$") -> Subscriptions:
    """Validate and compile; raises InvalidDefinition with the JSON path of the bad part
    (below `root`, where the document sits in a larger one)."""
    if not isinstance(doc, list):
        raise InvalidDefinition("subscriptions are a list", path=root)
    if len(doc) > MAX_SUBSCRIPTIONS:
        raise InvalidDefinition(f"at most {MAX_SUBSCRIPTIONS} subscriptions", path=root)
    events: list[EventSubscription] = []
    audiences: dict[str, set[str]] = {}
    traits: set[str] | None = None
    for i, item in enumerate(doc):
        path = f"{root}[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidDefinition(f"a subscription is an object, not {item!r}", path=path)
        kind = item.get("type")
        if kind == "events":
            only_keys(item, {"type", "event_types", "event_names", "where"}, path)
            types = _names(item, "event_types", f"{path}.event_types", EVENT_TYPES)
            names = _names(item, "event_names", f"{path}.event_names")
            where = (
                parse_property_filter(item["where"], f"{path}.where")
                if item.get("where") is not None
                else match_all
            )
            events.append(EventSubscription(frozenset(types), frozenset(names), where))
        elif kind == "audience":
            only_keys(item, {"type", "audiences", "changes"}, path)
            ids = _names(item, "audiences", f"{path}.audiences")
            if not ids:
                raise InvalidDefinition("name at least one audience id", path=f"{path}.audiences")
            for j, audience_id in enumerate(ids):
                if audience_id not in known_audiences:
                    raise InvalidDefinition(
                        f"unknown audience {audience_id!r}; GET /api/v1/audiences lists them",
                        path=f"{path}.audiences[{j}]",
                    )
            changes = _names(item, "changes", f"{path}.changes", CHANGES) or list(CHANGES)
            for audience_id in ids:
                audiences.setdefault(audience_id, set()).update(changes)
        elif kind == "traits":
            only_keys(item, {"type", "traits"}, path)
            names = _names(item, "traits", f"{path}.traits")
            # One trait subscription for any trait wins over named ones.
            if traits is None:
                traits = set(names)
            elif traits and names:
                traits.update(names)
            else:
                traits = set()
        else:
            raise InvalidDefinition(
                f"unknown subscription type {kind!r}; use events, audience or traits",
                path=f"{path}.type",
            )
    return Subscriptions(
        events=tuple(events),
        audiences={key: frozenset(value) for key, value in audiences.items()},
        traits=frozenset(traits) if traits is not None else None,
    )


def audiences_referenced(doc: Any) -> set[str]:
    """The audience ids stored subscriptions name (deleting one of those is refused)."""
    found: set[str] = set()
    if isinstance(doc, list):
        for item in doc:
            if isinstance(item, Mapping) and item.get("type") == "audience":
                found.update(x for x in item.get("audiences", []) if isinstance(x, str))
    return found
