"""The audience definition language: a JSON document parsed and validated into a typed tree.

`parse_audience` checks the whole document up front and raises `InvalidDefinition` with the
JSON path of the bad part, so evaluation never meets a malformed condition. The result knows
what it depends on and turns back into its canonical document; `evaluate.py` runs it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal, TypeAlias

from tessera.conditions import (
    COMPARISON_OPS,
    ORDER_OPS,
    VALUELESS_OPS,
    Comparison,
    is_number,
    only_keys,
    parse_comparison,
    parse_property_filter,
)
from tessera.errors import InvalidDefinition

DATE_OPS = ("before", "after", "within_last_days")
OPERATORS = (*COMPARISON_OPS, *DATE_OPS)
COUNT_OPS = ("eq", "neq", "lt", "lte", "gt", "gte")
NUMERIC_KINDS = ("count", "sum", "avg", "min", "max")
TIME_KINDS = ("first_time", "last_time")
KIND_OPERATORS: dict[str, tuple[str, ...]] = {
    **{kind: ("eq", "neq", *ORDER_OPS, "in", *VALUELESS_OPS) for kind in NUMERIC_KINDS},
    **{kind: (*DATE_OPS, *ORDER_OPS, *VALUELESS_OPS) for kind in TIME_KINDS},
    "unique_list": ("contains", *VALUELESS_OPS),
}
MEASURES = ("count", "performed", "first_time", "last_time")
SHAPES = ("and", "or", "not", "trait", "computed", "event", "audience", "consent")
MAX_DEPTH = 16
MAX_CONDITIONS = 200
MAX_DAYS = 36500
MAX_COUNT = 1_000_000_000
MAX_NAME = 255
WINDOW_LIMITS = {"days": 3650, "hours": 8760}
DAY = 86_400_000_000  # microseconds
IMPLICIT_PREFIX = "_evt_"
_CONSENT_CATEGORY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def parse_instant(value: Any) -> int | None:
    """Microseconds since the Unix epoch of an ISO-8601 date or date-time, or None.

    A bare date is midnight UTC, and so is a date-time without an offset. Integers keep
    comparisons exact and never overflow near the ends of the calendar.
    """
    if isinstance(value, str):
        return _parse_text(value)
    if isinstance(value, datetime):
        return _since_epoch(value)
    return None


@lru_cache(maxsize=8192)  # the hot path meets the same dates again (and parses each twice)
def _parse_text(text: str) -> int | None:
    try:
        return _since_epoch(datetime.fromisoformat(text))
    except ValueError:
        return None


def _since_epoch(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


@dataclass(frozen=True, slots=True)
class DateComparison:
    """`before`/`after`/`within_last_days`, and the order operators of a time-valued
    computed trait, which compare instants rather than strings."""

    op: str
    value: Any  # as written, for the document
    instant: int = 0  # the bound of before/after/lt/lte/gt/gte, µs since the epoch
    span: int = 0  # the length of within_last_days, µs


ValueTest: TypeAlias = Comparison | DateComparison


@dataclass(frozen=True, slots=True)
class And:
    conditions: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    conditions: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    condition: Node


@dataclass(frozen=True, slots=True)
class TraitCondition:
    trait: str  # dotted for nested objects
    test: ValueTest


@dataclass(frozen=True, slots=True)
class ComputedCondition:
    computed: str
    kind: str
    test: ValueTest


@dataclass(frozen=True, slots=True)
class CountTest:
    op: str
    value: int


@dataclass(frozen=True, slots=True)
class Window:
    unit: Literal["days", "hours"]
    amount: int


@dataclass(frozen=True, slots=True)
class EventCondition:
    """Reads the implicit computed trait `implicit_trait`; exactly one measure is set."""

    event: str
    implicit_trait: str
    where: Mapping[str, Any] | None = None
    window: Window | None = None
    count: CountTest | None = None
    performed: bool | None = None
    first_time: ValueTest | None = None
    last_time: ValueTest | None = None


@dataclass(frozen=True, slots=True)
class MembershipCondition:
    audience: str


@dataclass(frozen=True, slots=True)
class ConsentCondition:
    consent: str


Node: TypeAlias = (
    And
    | Or
    | Not
    | TraitCondition
    | ComputedCondition
    | EventCondition
    | MembershipCondition
    | ConsentCondition
)


@dataclass(frozen=True, slots=True)
class Dependencies:
    """What can change the result: the processor re-evaluates an audience when one changes."""

    events: frozenset[str]  # event names behind the implicit traits
    traits: frozenset[str]  # top-level trait names
    computed: frozenset[str]  # named and implicit computed traits
    audiences: frozenset[str]  # direct references
    consent: bool
    time_dependent: bool  # time passing alone can change the result


@dataclass(frozen=True)
class AudienceDefinition:
    root: Node
    implicit_traits: tuple[dict[str, Any], ...]
    dependencies: Dependencies

    def to_document(self) -> dict[str, Any]:
        """The canonical document; parsing it gives an equal definition."""
        return node_document(self.root)


def parse_audience(
    doc: Any,
    *,
    computed_kinds: Mapping[str, str],
    audience_references: Callable[[str], frozenset[str] | None],
    audience_id: str | None = None,
) -> AudienceDefinition:
    """Validate an audience document and build its tree.

    `computed_kinds` maps the named computed traits to their kinds; `audience_references`
    gives an existing audience's direct references (None: no such audience); `audience_id`
    is the audience being updated, so a reference back to it is refused as a cycle.
    """
    parser = _Parser(computed_kinds, audience_references, audience_id)
    root = parser.node(doc, "$", 1)
    return AudienceDefinition(
        root=root,
        implicit_traits=tuple(parser.implicit.values()),
        dependencies=Dependencies(
            events=frozenset(parser.events),
            traits=frozenset(parser.traits),
            computed=frozenset(parser.computed),
            audiences=frozenset(parser.audiences),
            consent=parser.consent,
            time_dependent=parser.time_dependent,
        ),
    )


@dataclass
class _Parser:
    computed_kinds: Mapping[str, str]
    resolve: Callable[[str], frozenset[str] | None]
    audience_id: str | None
    conditions: int = 0
    implicit: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: set[str] = field(default_factory=set)
    traits: set[str] = field(default_factory=set)
    computed: set[str] = field(default_factory=set)
    audiences: set[str] = field(default_factory=set)
    consent: bool = False
    time_dependent: bool = False
    references: dict[str, frozenset[str] | None] = field(default_factory=dict)
    acyclic: set[str] = field(default_factory=set)

    def node(self, doc: Any, path: str, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise InvalidDefinition(
                f"conditions nest deeper than {MAX_DEPTH} levels; flatten the groups", path=path
            )
        if not isinstance(doc, Mapping):
            raise InvalidDefinition(f"a condition is an object, not {_show(doc)}", path=path)
        shape = next((key for key in SHAPES if key in doc), None)
        if shape is None:
            raise InvalidDefinition(
                "a condition has one of the keys " + ", ".join(SHAPES), path=path
            )
        if shape in ("and", "or"):
            only_keys(doc, {shape}, path)
            parts = doc[shape]
            if not isinstance(parts, list) or not parts:
                raise InvalidDefinition(
                    f"{shape!r} needs a non-empty list of conditions, not {_show(parts)}",
                    path=f"{path}.{shape}",
                )
            children = tuple(
                self.node(part, f"{path}.{shape}[{i}]", depth + 1) for i, part in enumerate(parts)
            )
            return And(children) if shape == "and" else Or(children)
        if shape == "not":
            only_keys(doc, {"not"}, path)
            return Not(self.node(doc["not"], f"{path}.not", depth + 1))
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise InvalidDefinition(
                f"more than {MAX_CONDITIONS} conditions; split the audience and reference "
                'the parts with {"audience": ...}',
                path=path,
            )
        if shape == "trait":
            return self.trait(doc, path)
        if shape == "computed":
            return self.computed_trait(doc, path)
        if shape == "event":
            return self.event(doc, path)
        if shape == "audience":
            return self.membership(doc, path)
        return self.consent_category(doc, path)

    def trait(self, doc: Mapping[str, Any], path: str) -> TraitCondition:
        only_keys(doc, {"trait", "op", "value"}, path)
        name = doc["trait"]
        if not _is_name(name) or "" in name.split("."):
            raise InvalidDefinition(
                f"a trait name is 1 to {MAX_NAME} characters, dotted for nested objects "
                f'("address.city"), not {_show(name)}',
                path=f"{path}.trait",
            )
        self.traits.add(name.split(".")[0])
        return TraitCondition(name, self.value_test(doc, path, OPERATORS, f"trait {name!r}"))

    def computed_trait(self, doc: Mapping[str, Any], path: str) -> ComputedCondition:
        only_keys(doc, {"computed", "op", "value"}, path)
        name = doc["computed"]
        if not isinstance(name, str) or name not in self.computed_kinds:
            names = sorted(self.computed_kinds)
            known = ", ".join(names[:50]) or "none is defined yet"
            if len(names) > 50:
                known += f" and {len(names) - 50} more"
            raise InvalidDefinition(
                f"unknown computed trait {_show(name)}; known computed traits: {known}",
                path=f"{path}.computed",
            )
        kind = self.computed_kinds[name]
        allowed = KIND_OPERATORS.get(kind, OPERATORS)
        test = self.value_test(doc, path, allowed, f"{name!r}, a {kind} computed trait,", kind)
        self.computed.add(name)
        return ComputedCondition(name, kind, test)

    def value_test(
        self,
        doc: Mapping[str, Any],
        path: str,
        allowed: tuple[str, ...],
        subject: str,
        kind: str | None = None,
    ) -> ValueTest:
        op = doc.get("op")
        if not isinstance(op, str) or op not in allowed:
            if isinstance(op, str) and op in OPERATORS:
                problem = f"{subject} cannot use {op!r}"
            elif "op" not in doc:
                problem = "missing 'op'"
            else:
                problem = f"unknown operator {_show(op)}"
            raise InvalidDefinition(
                f"{problem}; use one of {', '.join(allowed)}", path=f"{path}.op"
            )
        where = f"{path}.value"
        if op in DATE_OPS or (kind in TIME_KINDS and op in ORDER_OPS):
            return self.date_test(doc, op, where)
        comparison = parse_comparison(doc, path)
        value = comparison.value
        if isinstance(value, list):
            value = list(value)  # the caller's document stays theirs
            comparison = Comparison(op, value)
        for item in value if isinstance(value, list) else [value]:
            if is_number(item) and not _is_finite(item):
                raise InvalidDefinition("numbers must be finite and at most 1e308", path=where)
            if kind in NUMERIC_KINDS and op not in VALUELESS_OPS and not is_number(item):
                raise InvalidDefinition(
                    f"{subject} compares with numbers, not {_show(item)}", path=where
                )
        return comparison

    def date_test(self, doc: Mapping[str, Any], op: str, where: str) -> DateComparison:
        if "value" not in doc:
            raise InvalidDefinition(f"{op!r} needs a value", path=where)
        value = doc["value"]
        if op == "within_last_days":
            if not is_number(value) or not 0 < value <= MAX_DAYS:
                raise InvalidDefinition(
                    f"'within_last_days' needs a number of days above 0 and at most "
                    f"{MAX_DAYS}, not {_show(value)}",
                    path=where,
                )
            self.time_dependent = True
            return DateComparison(op, value, span=round(value * DAY))
        instant = parse_instant(value) if isinstance(value, str) else None
        if instant is None:
            raise InvalidDefinition(
                f'{op!r} needs an ISO-8601 date or date-time ("2026-01-31", '
                f'"2026-01-31T09:00:00Z", "2026-01-31T10:00:00+01:00"), not {_show(value)}',
                path=where,
            )
        return DateComparison(op, value, instant=instant)

    def event(self, doc: Mapping[str, Any], path: str) -> EventCondition:
        only_keys(doc, {"event", "where", *MEASURES, "window"}, path)
        name = doc["event"]
        if not _is_name(name):
            raise InvalidDefinition(
                f"an event name is 1 to {MAX_NAME} characters, not {_show(name)}",
                path=f"{path}.event",
            )
        where: dict[str, Any] | None = None
        if "where" in doc:
            parse_property_filter(doc["where"], f"{path}.where")
            where = _json_copy(doc["where"], f"{path}.where")
        measures = [key for key in MEASURES if key in doc]
        if len(measures) != 1:
            given = f", not both {measures[0]!r} and {measures[1]!r}" if measures else ""
            raise InvalidDefinition(
                f"an event condition has exactly one of {', '.join(MEASURES)}{given}", path=path
            )
        measure = measures[0]
        window = None
        if "window" in doc:
            if measure in TIME_KINDS:
                raise InvalidDefinition(
                    f"{measure!r} looks at all time; remove 'window'", path=f"{path}.window"
                )
            window = _window(doc["window"], f"{path}.window")
            self.time_dependent = True
        kind = "count" if measure in ("count", "performed") else measure
        implicit_name = self.implicit_trait(kind, name, where, window)
        at = f"{path}.{measure}"
        spec = doc[measure]
        if measure == "performed":
            if not isinstance(spec, bool):
                raise InvalidDefinition(f"'performed' is true or false, not {_show(spec)}", path=at)
            return EventCondition(name, implicit_name, where, window, performed=spec)
        if not isinstance(spec, Mapping):
            raise InvalidDefinition(
                f'{measure!r} is {{"op": ..., "value": ...}}, not {_show(spec)}', path=at
            )
        only_keys(spec, {"op", "value"}, at)
        if measure == "count":
            return EventCondition(name, implicit_name, where, window, count=_count(spec, at))
        test = self.value_test(spec, at, KIND_OPERATORS[measure], f"{measure!r}", measure)
        if measure == "first_time":
            return EventCondition(name, implicit_name, where, first_time=test)
        return EventCondition(name, implicit_name, where, last_time=test)

    def implicit_trait(
        self, kind: str, event: str, where: dict[str, Any] | None, window: Window | None
    ) -> str:
        """The implicit computed trait an event condition reads, named by its meaning so
        identical conditions across audiences share one."""
        source: dict[str, Any] = {"name": event}
        if where is not None:
            source["where"] = where
        body: dict[str, Any] = {"kind": kind, "event": source}
        if window is not None:
            body["window"] = {window.unit: window.amount}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        name = IMPLICIT_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:16]
        self.implicit.setdefault(name, {"name": name, **body})
        self.events.add(event)
        self.computed.add(name)
        return name

    def membership(self, doc: Mapping[str, Any], path: str) -> MembershipCondition:
        only_keys(doc, {"audience"}, path)
        audience = doc["audience"]
        at = f"{path}.audience"
        if not _is_name(audience):
            raise InvalidDefinition(
                f"an audience id is 1 to {MAX_NAME} characters, not {_show(audience)}", path=at
            )
        if audience not in self.audiences:
            self.check_reference(audience, at)
            self.audiences.add(audience)
        return MembershipCondition(audience)

    def check_reference(self, audience: str, path: str) -> None:
        if audience == self.audience_id:
            raise InvalidDefinition(
                f"an audience cannot include itself: {audience} → {audience}", path=path
            )
        if self.references_of(audience) is None:
            raise InvalidDefinition(
                f"unknown audience {audience!r}; reference an existing audience by its id",
                path=path,
            )
        cycle = self.find_cycle(audience)
        if cycle:
            raise InvalidDefinition(
                "audience membership would go round in a cycle: " + " → ".join(cycle), path=path
            )

    def references_of(self, audience: str) -> frozenset[str] | None:
        if audience not in self.references:
            self.references[audience] = self.resolve(audience)
        return self.references[audience]

    def find_cycle(self, start: str) -> list[str] | None:
        """The first cycle reachable from `start`, through the audience being defined or
        among existing ones (which the resolver should never report, but must not hang
        us); depth first, without recursion, so long chains cannot overflow the stack."""
        path = [start]
        on_path = {start: 0}
        pending = [iter(sorted(self.references_of(start) or ()))]
        while pending:
            child = next(pending[-1], None)
            if child is None:
                finished = path.pop()
                del on_path[finished]
                self.acyclic.add(finished)
                pending.pop()
            elif child == self.audience_id:
                return [child, *path, child]
            elif child in on_path:
                return [*path[on_path[child] :], child]
            elif child not in self.acyclic:
                on_path[child] = len(path)
                path.append(child)
                pending.append(iter(sorted(self.references_of(child) or ())))
        return None

    def consent_category(self, doc: Mapping[str, Any], path: str) -> ConsentCondition:
        only_keys(doc, {"consent"}, path)
        category = doc["consent"]
        if not isinstance(category, str) or not _CONSENT_CATEGORY.fullmatch(category):
            raise InvalidDefinition(
                f"a consent category is 1 to 64 letters, digits or _ . : -, not {_show(category)}",
                path=f"{path}.consent",
            )
        self.consent = True
        return ConsentCondition(category)


def _count(spec: Mapping[str, Any], path: str) -> CountTest:
    op = spec.get("op")
    if not isinstance(op, str) or op not in COUNT_OPS:
        raise InvalidDefinition(
            f"unknown count operator {_show(op)}; use one of {', '.join(COUNT_OPS)}",
            path=f"{path}.op",
        )
    value = spec.get("value")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
        raise InvalidDefinition(
            f"a count is a whole number from 0 to {MAX_COUNT}, not {_show(value)}",
            path=f"{path}.value",
        )
    return CountTest(op, value)


def _window(doc: Any, path: str) -> Window:
    if not isinstance(doc, Mapping) or len(doc) != 1 or next(iter(doc)) not in WINDOW_LIMITS:
        raise InvalidDefinition(
            f'a window is {{"days": N}} or {{"hours": N}}, not {_show(doc)}', path=path
        )
    unit, amount = next(iter(doc.items()))
    limit = WINDOW_LIMITS[unit]
    if not isinstance(amount, int) or isinstance(amount, bool) or not 1 <= amount <= limit:
        raise InvalidDefinition(
            f"a window in {unit} is a whole number from 1 to {limit}, not {_show(amount)}",
            path=f"{path}.{unit}",
        )
    return Window(unit, amount)


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME


def _is_finite(number: Any) -> bool:
    try:
        return math.isfinite(float(number))
    except OverflowError:
        return False


def _json_copy(doc: Any, path: str) -> dict[str, Any]:
    try:
        copy: dict[str, Any] = json.loads(json.dumps(doc, allow_nan=False))
    except ValueError:
        raise InvalidDefinition("numbers must be finite and at most 1e308", path=path) from None
    return copy


def _show(value: Any) -> str:
    """The offending value for a message, short, and safe for any junk."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # a number too long to print, or deep nesting
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 80 else text[:77] + "..."


def node_document(node: Node) -> dict[str, Any]:
    """The canonical document of one node."""
    if isinstance(node, And):
        return {"and": [node_document(child) for child in node.conditions]}
    if isinstance(node, Or):
        return {"or": [node_document(child) for child in node.conditions]}
    if isinstance(node, Not):
        return {"not": node_document(node.condition)}
    if isinstance(node, TraitCondition):
        return {"trait": node.trait, **_test_document(node.test)}
    if isinstance(node, ComputedCondition):
        return {"computed": node.computed, **_test_document(node.test)}
    if isinstance(node, MembershipCondition):
        return {"audience": node.audience}
    if isinstance(node, ConsentCondition):
        return {"consent": node.consent}
    doc: dict[str, Any] = {"event": node.event}
    if node.where is not None:
        doc["where"] = json.loads(json.dumps(node.where))
    if node.count is not None:
        doc["count"] = {"op": node.count.op, "value": node.count.value}
    elif node.performed is not None:
        doc["performed"] = node.performed
    elif node.first_time is not None:
        doc["first_time"] = _test_document(node.first_time)
    elif node.last_time is not None:
        doc["last_time"] = _test_document(node.last_time)
    if node.window is not None:
        doc["window"] = {node.window.unit: node.window.amount}
    return doc


def _test_document(test: ValueTest) -> dict[str, Any]:
    if test.op in VALUELESS_OPS:
        return {"op": test.op}
    value = list(test.value) if isinstance(test.value, list) else test.value
    return {"op": test.op, "value": value}
