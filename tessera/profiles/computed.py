"""Computed traits: per-person values derived from that person's events (orders in the last
30 days, favourite category), kept up to date one event at a time. Pure; no I/O.

A definition is parsed once (`parse_computed_trait`, raising `InvalidDefinition` with the
JSON path of the bad part). The processor asks `spec.matches(payload)` per event, and for a
match calls `observe(spec, state, at=..., seq=..., value=spec.value_of(payload))`.

Semantics:
- Windowed: an event counts at `now` iff `at > now - window`, so it leaves exactly at
  `at + window`; events stamped in the future count. `next_change` returns that instant for
  the next event to leave (to the microsecond; it may be a moment when the value happens not
  to change, never one after a change, never one <= now). `expire(now)` promises no later
  call asks about a moment before `now`, and drops what can no longer count.
- The value depends only on the set of `(at, seq, value)` observed, not on arrival order.
  first/last: the earliest/latest event by `(at, seq)` carrying a value (missing or null
  is skipped); first_time/last_time: that event's `at` as `2026-11-22T10:00:00.000Z`.
- count counts events (0 when none); sum/avg/min/max use numbers and numeric strings and
  skip anything else (sum 0, the others None when none). Sums are correctly rounded, so
  order-independent; integral results are ints.
- most_frequent: the JSON scalar (string, number, boolean; `1.0` is `1`) seen most often,
  ties to the latest seen; unique_list: up to `limit` distinct scalars, latest seen first
  (`[]` when none).
- Bounded state: all-time states are O(1), unique_list O(limit), most_frequent at most
  100 values. Windowed states keep one entry per event up to 1,000, then coalesce onto an
  aligned time grid (1 s, 2 s, 10 s ... 1 day, then doubling; the finest that fits in 750
  entries). A coalesced entry leaves the window with its latest event, so an older event
  in it counts up to one grid step too long; whether any event is in the window, the moment
  the last leaves, and last/last_time/unique_list stay exact. See `computed_state`.
"""

from __future__ import annotations

import builtins
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from tessera.conditions import (
    MISSING,
    PropertyFilter,
    lookup,
    only_keys,
    parse_property_filter,
)
from tessera.errors import InvalidDefinition
from tessera.profiles.computed_state import TraitState, state_class

__all__ = [
    "KINDS",
    "ComputedTraitSpec",
    "TraitState",
    "current_value",
    "dump_state",
    "expire",
    "load_state",
    "merge_states",
    "new_state",
    "next_change",
    "observe",
    "parse_computed_trait",
]

KINDS = (
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "first",
    "last",
    "most_frequent",
    "unique_list",
    "first_time",
    "last_time",
)
PROPERTY_KINDS = frozenset(KINDS) - {"count", "first_time", "last_time"}
EVENT_TYPES = ("track", "page", "screen", "identify", "group", "alias")
NAMED_TYPES = ("track", "page", "screen")
TRAIT_TYPES = ("identify", "group")  # their `where` and `property` read traits
WINDOW_UNITS = {"days": (3650, timedelta(days=1)), "hours": (8760, timedelta(hours=1))}
DEFAULT_LIMIT, MAX_LIMIT = 10, 100
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class ComputedTraitSpec:
    """A parsed definition. Equal specs mean the same; `key` ignores the name."""

    name: str
    kind: str
    event_name: str | None = None
    event_type: str | None = None
    where: Any = None  # the property-filter document, kept for `to_document`
    property: str | None = None
    window: timedelta | None = None
    limit: int | None = None
    window_us: int | None = field(init=False, repr=False, compare=False)
    _filter: PropertyFilter | None = field(init=False, repr=False, compare=False)
    _key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        window_us = None if self.window is None else self.window // _MICROSECOND
        where = None if self.where is None else parse_property_filter(self.where, "$.event.where")
        document = self.to_document()
        del document["name"]
        digest = hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS))
        object.__setattr__(self, "window_us", window_us)
        object.__setattr__(self, "_filter", where)
        object.__setattr__(self, "_key", digest.hexdigest()[:16])

    def __hash__(self) -> int:
        return hash((self.name, self._key))

    @builtins.property
    def key(self) -> str:
        """A short hash of the definition without its name: same meaning, same key."""
        return self._key

    def matches(self, payload: Mapping[str, Any]) -> bool:
        """Does this event (a Segment message as stored in the log) count?"""
        kind = payload.get("type")
        if self.event_type is not None and kind != self.event_type:
            return False
        if self.event_name is not None:
            name_field = "event" if kind == "track" else "name"
            if kind not in NAMED_TYPES or payload.get(name_field) != self.event_name:
                return False
        return self._filter is None or self._filter(_subject(payload))

    @builtins.property
    def reads_payload(self) -> bool:
        """Whether `matches` and `value_of` read more of an event than its type and name
        (its properties or traits)."""
        return self._filter is not None or self.property is not None

    def value_of(self, payload: Mapping[str, Any]) -> Any:
        """The value the event contributes: its `property`, or MISSING."""
        if self.property is None:
            return MISSING
        return lookup(_subject(payload), self.property)

    def to_document(self) -> dict[str, Any]:
        """The canonical definition: defaults filled in, a window in whole days if it is."""
        event: dict[str, Any] = {}
        if self.event_name is not None:
            event["name"] = self.event_name
        if self.event_type is not None:
            event["type"] = self.event_type
        if self.where is not None:
            event["where"] = self.where
        document: dict[str, Any] = {"name": self.name, "kind": self.kind, "event": event}
        if self.property is not None:
            document["property"] = self.property
        if self.window is not None:
            if self.window % _DAY:
                document["window"] = {"hours": self.window // timedelta(hours=1)}
            else:
                document["window"] = {"days": self.window // _DAY}
        if self.limit is not None:
            document["limit"] = self.limit
        return document


def _subject(payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """What `where` and `property` read: traits for identify and group, else properties."""
    if payload.get("type") in TRAIT_TYPES:
        traits = payload.get("traits")
        if traits is None:  # Rudder's Python SDK sends identify traits in context.traits
            context = payload.get("context")
            traits = context.get("traits") if isinstance(context, Mapping) else None
        return traits if isinstance(traits, Mapping) else None
    properties = payload.get("properties")
    return properties if isinstance(properties, Mapping) else None


def _whole(value: Any, low: int, high: int, what: str, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidDefinition(
            f"{what} is a whole number from {low} to {high}, not {value!r}", path=path
        )
    return value


def _text(value: Any, what: str, path: str, *, longest: int = 255) -> str:
    if not isinstance(value, str) or not value or len(value) > longest:
        raise InvalidDefinition(
            f"{what} is a non-empty string of at most {longest} characters, not {value!r}",
            path=path,
        )
    return value


def _parse_event(doc: Any, path: str) -> tuple[str | None, str | None, Any]:
    if doc is None:
        return None, None, None
    if not isinstance(doc, Mapping):
        raise InvalidDefinition(
            f'the event is an object like {{"name": "Order Completed"}}, not {doc!r}', path=path
        )
    only_keys(doc, {"name", "type", "where"}, path)
    name = doc.get("name")
    if name is not None:
        name = _text(name, "the event name", f"{path}.name")
    kind = doc.get("type")
    if kind is not None and kind not in EVENT_TYPES:
        raise InvalidDefinition(
            f"unknown event type {kind!r}; use one of {', '.join(EVENT_TYPES)}",
            path=f"{path}.type",
        )
    if name is not None:
        kind = kind or "track"
        if kind not in NAMED_TYPES:
            raise InvalidDefinition(
                f"{kind} events have no name; name only track, page or screen events",
                path=f"{path}.name",
            )
    where = doc.get("where")
    if where is not None:
        try:
            where = orjson.loads(orjson.dumps(where))  # a detached, plain-JSON copy
        except orjson.JSONEncodeError:
            raise InvalidDefinition("the condition is not JSON", path=f"{path}.where") from None
        parse_property_filter(where, f"{path}.where")
    return name, kind, where


def _parse_window(doc: Any, path: str) -> timedelta | None:
    if doc is None:
        return None
    if not isinstance(doc, Mapping):
        raise InvalidDefinition(
            f'the window is {{"days": N}} or {{"hours": N}} (omit it for all time), not {doc!r}',
            path=path,
        )
    only_keys(doc, set(WINDOW_UNITS), path)
    if len(doc) != 1:
        raise InvalidDefinition('give exactly one of "days" or "hours"', path=path)
    [(unit, amount)] = doc.items()
    highest, one = WINDOW_UNITS[unit]
    return one * _whole(amount, 1, highest, f"the window's {unit}", f"{path}.{unit}")


def parse_computed_trait(doc: Any, path: str = "$") -> ComputedTraitSpec:
    """Validate a definition document; raises InvalidDefinition naming the bad part."""
    if not isinstance(doc, Mapping):
        raise InvalidDefinition(f"a computed trait is an object, not {doc!r}", path=path)
    only_keys(doc, {"name", "kind", "event", "property", "window", "limit"}, path)
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidDefinition(
            f"the name is 1 to 64 lowercase letters, digits or underscores starting with a "
            f"letter (like orders_30d), not {name!r}",
            path=f"{path}.name",
        )
    kind = doc.get("kind")
    if kind not in KINDS:
        raise InvalidDefinition(
            f"unknown kind {kind!r}; use one of {', '.join(KINDS)}", path=f"{path}.kind"
        )
    event_name, event_type, where = _parse_event(doc.get("event"), f"{path}.event")
    prop = doc.get("property")
    if kind in PROPERTY_KINDS:
        prop = _text(prop, f"{kind} reads a property; the property", f"{path}.property")
        if "" in prop.split("."):
            raise InvalidDefinition(
                f"the property is a dotted path like cart.total, not {prop!r}",
                path=f"{path}.property",
            )
    elif prop is not None:
        raise InvalidDefinition(
            f"{kind} takes no property (it uses the events themselves); remove {prop!r}",
            path=f"{path}.property",
        )
    window = _parse_window(doc.get("window"), f"{path}.window")
    limit = doc.get("limit")
    if kind == "unique_list":
        limit = DEFAULT_LIMIT if limit is None else limit
        limit = _whole(limit, 1, MAX_LIMIT, "the limit", f"{path}.limit")
    elif limit is not None:
        raise InvalidDefinition(
            f"only unique_list takes a limit, not {kind}; remove it", path=f"{path}.limit"
        )
    return ComputedTraitSpec(
        name=name,
        kind=kind,
        event_name=event_name,
        event_type=event_type,
        where=where,
        property=prop,
        window=window,
        limit=limit,
    )


def _micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def new_state(spec: ComputedTraitSpec) -> TraitState:
    """An empty state: no events seen."""
    return state_class(spec.kind, windowed=spec.window is not None)()


def observe(
    spec: ComputedTraitSpec, state: TraitState, *, at: datetime, seq: int, value: Any
) -> None:
    """Fold in one matching event: its timestamp, log position and `spec.value_of(...)`."""
    state.observe(spec, _micros(at), seq, value)


def current_value(spec: ComputedTraitSpec, state: TraitState, now: datetime) -> Any:
    """The trait's JSON value at `now`, or None when there is none."""
    return state.value(spec, _micros(now))


def next_change(spec: ComputedTraitSpec, state: TraitState, now: datetime) -> datetime | None:
    """When an event next leaves the window (after `now`); None if none ever will."""
    moment = state.next_change(spec, _micros(now))
    return None if moment is None else _EPOCH + moment * _MICROSECOND


def expire(spec: ComputedTraitSpec, state: TraitState, now: datetime) -> None:
    """Drop what cannot count at `now` or later; no later call may ask about an earlier time."""
    state.expire(spec, _micros(now))


def merge_states(spec: ComputedTraitSpec, a: TraitState, b: TraitState) -> TraitState:
    """Two people found to be one: a new state, as if it had observed both one's events."""
    return a.merge(spec, b)


def dump_state(state: TraitState) -> str:
    """Compact JSON text for the database."""
    return orjson.dumps({"k": state.tag, **state.to_json()}).decode()


def load_state(spec: ComputedTraitSpec, text: str | bytes) -> TraitState:
    """The state `dump_state` wrote for this definition."""
    data = orjson.loads(text)
    cls = state_class(spec.kind, windowed=spec.window is not None)
    if data.get("k") != cls.tag:
        raise ValueError(f"stored state {data.get('k')!r} is not a {spec.kind} state")
    return cls.from_json(spec, data)
