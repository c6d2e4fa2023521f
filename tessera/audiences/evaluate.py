"""Evaluate an audience definition against one person's facts at a moment.

Runs per person per affected audience on the processor's hot path, so a definition is
compiled once into closures (dates already parsed, operators already chosen) and cached for
the definition's lifetime. Besides membership, an evaluation says when time passing alone
can next change it, so the caller can schedule a re-evaluation instead of polling.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeAlias

from tessera.audiences.language import (
    And,
    AudienceDefinition,
    ComputedCondition,
    CountTest,
    DateComparison,
    EventCondition,
    MembershipCondition,
    Node,
    Not,
    Or,
    TraitCondition,
    ValueTest,
    parse_instant,
)
from tessera.conditions import MISSING, as_number, lookup

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_LAST_MOMENT = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
    "before": operator.lt,
    "after": operator.gt,
}


@dataclass(frozen=True, slots=True)
class ProfileFacts:
    """What one person's membership is decided on. `computed` holds named and implicit
    computed traits (a count as an int, first/last time as an ISO string or None)."""

    traits: Mapping[str, Any] = field(default_factory=dict)
    computed: Mapping[str, Any] = field(default_factory=dict)
    audiences: Set[str] = frozenset()
    consent: Mapping[str, bool] = field(default_factory=dict)


class Evaluation(NamedTuple):  # a tuple: made once per person and audience evaluated
    member: bool
    # The earliest moment after `now` at which a date condition can flip by time alone
    # (the result may stay the same then); None if no condition depends on the clock.
    next_change: datetime | None


Predicate: TypeAlias = Callable[[ProfileFacts, int], bool]  # (facts, now in µs)
Clock: TypeAlias = Callable[[ProfileFacts, int], int | None]  # the next flip after now, µs
Reader: TypeAlias = Callable[[ProfileFacts], Any]


@dataclass(frozen=True, slots=True)
class _Program:
    test: Predicate
    clocks: tuple[Clock, ...]


# Keyed by identity: a definition holds dicts, so it cannot be hashed; the finalizer drops
# the entry when the definition dies, before its id can be reused.
_programs: dict[int, _Program] = {}


def evaluate(definition: AudienceDefinition, facts: ProfileFacts, now: datetime) -> Evaluation:
    """Is the person a member at `now` (timezone-aware), and when can that next change
    by time passing alone?"""
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware, not {now!r}")
    program = _programs.get(id(definition)) or _compile_definition(definition)
    if not program.clocks:
        return Evaluation(program.test(facts, 0), None)
    moment = (now - _EPOCH) // _MICROSECOND
    member = program.test(facts, moment)
    soonest: int | None = None
    for clock in program.clocks:
        flip = clock(facts, moment)
        if flip is not None and (soonest is None or flip < soonest):
            soonest = flip
    if soonest is None:
        return Evaluation(member, None)
    # A flip past the calendar's end is reported as its last moment: early is allowed.
    soonest = min(soonest, _LAST_MOMENT)
    return Evaluation(member, _EPOCH + soonest * _MICROSECOND if soonest > moment else None)


def _compile_definition(definition: AudienceDefinition) -> _Program:
    clocks: list[Clock] = []
    program = _Program(_compile(definition.root, clocks), tuple(clocks))
    key = id(definition)
    _programs[key] = program
    weakref.finalize(definition, _programs.pop, key, None)
    return program


def _compile(node: Node, clocks: list[Clock]) -> Predicate:
    if isinstance(node, And | Or):
        children = tuple(_compile(child, clocks) for child in node.conditions)
        return _all(children) if isinstance(node, And) else _any(children)
    if isinstance(node, Not):
        child = _compile(node.condition, clocks)
        return lambda facts, now: not child(facts, now)
    if isinstance(node, TraitCondition):
        test = node.test
        if "." not in node.trait and test.op in ("eq", "neq") and isinstance(test.value, str):
            return _text_equals(node.trait, test.value, test.op == "eq")
        return _value_predicate(_trait_reader(node.trait), node.test, clocks)
    if isinstance(node, ComputedCondition):
        name = node.computed
        if node.kind == "count":  # a count nobody has incremented yet is 0
            return _value_predicate(_count_reader(name), node.test, clocks)
        return _value_predicate(lambda facts: facts.computed.get(name, MISSING), node.test, clocks)
    if isinstance(node, EventCondition):
        return _event_predicate(node, clocks)
    if isinstance(node, MembershipCondition):
        audience = node.audience
        return lambda facts, now: audience in facts.audiences
    category = node.consent
    return lambda facts, now: facts.consent.get(category) is True


def _all(children: tuple[Predicate, ...]) -> Predicate:
    if len(children) == 1:
        return children[0]
    if len(children) == 2:
        first, second = children
        return lambda facts, now: first(facts, now) and second(facts, now)

    def every(facts: ProfileFacts, now: int) -> bool:
        for child in children:  # noqa: SIM110 (all() over a generator is slower here)
            if not child(facts, now):
                return False
        return True

    return every


def _any(children: tuple[Predicate, ...]) -> Predicate:
    if len(children) == 1:
        return children[0]
    if len(children) == 2:
        first, second = children
        return lambda facts, now: first(facts, now) or second(facts, now)

    def some(facts: ProfileFacts, now: int) -> bool:
        for child in children:  # noqa: SIM110 (any() over a generator is slower here)
            if child(facts, now):
                return True
        return False

    return some


def _trait_reader(name: str) -> Reader:
    if "." in name:
        return lambda facts: lookup(facts.traits, name)
    return lambda facts: facts.traits.get(name, MISSING)


def _text_equals(name: str, expected: str, equal: bool) -> Predicate:
    """The commonest condition (`plan eq "pro"`) without the general comparison's dispatch;
    the same meaning: only a string equals a string, and missing is unequal."""
    if equal:
        return lambda facts, now: (
            (value := facts.traits.get(name)).__class__ is str and value == expected
        )
    return lambda facts, now: (
        not ((value := facts.traits.get(name)).__class__ is str and value == expected)
    )


def _count_reader(name: str) -> Reader:
    def read(facts: ProfileFacts) -> Any:
        value = facts.computed.get(name)
        return 0 if value is None else value

    return read


def _value_predicate(read: Reader, test: ValueTest, clocks: list[Clock]) -> Predicate:
    if not isinstance(test, DateComparison):
        check = test.test
        return lambda facts, now: check(read(facts))
    if test.op != "within_last_days":
        compare, bound = _COMPARE[test.op], test.instant

        def fixed(facts: ProfileFacts, now: int) -> bool:
            instant = parse_instant(read(facts))
            return instant is not None and compare(instant, bound)

        return fixed
    span = test.span

    # True from the instant itself until `span` after it: within the last N days, and
    # not in the future.
    def within(facts: ProfileFacts, now: int) -> bool:
        instant = parse_instant(read(facts))
        return instant is not None and instant <= now < instant + span

    def clock(facts: ProfileFacts, now: int) -> int | None:
        instant = parse_instant(read(facts))
        if instant is None:
            return None
        if now < instant:
            return instant
        return instant + span if now < instant + span else None

    clocks.append(clock)
    return within


def _event_predicate(node: EventCondition, clocks: list[Clock]) -> Predicate:
    name = node.implicit_trait
    if node.first_time is not None or node.last_time is not None:
        test = node.first_time or node.last_time
        assert test is not None
        return _value_predicate(lambda facts: facts.computed.get(name, MISSING), test, clocks)
    count = node.count or (CountTest("gte", 1) if node.performed else CountTest("eq", 0))
    compare, expected = _COMPARE[count.op], count.value

    def performed(facts: ProfileFacts, now: int) -> bool:
        value = facts.computed.get(name, 0)
        if value.__class__ is not int:
            value = as_number(value) or 0
        return compare(value, expected)

    return performed
