"""Evaluating audiences: each operator's truth table, and when time alone changes the answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.audiences.evaluate import Evaluation, ProfileFacts, evaluate
from tessera.audiences.language import AudienceDefinition, EventCondition, parse_audience
from tessera.conditions import MISSING, Comparison

KINDS = {
    "orders": "count",
    "revenue": "sum",
    "first_seen": "first_time",
    "last_seen": "last_time",
    "categories": "unique_list",
    "brand": "most_frequent",
}
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def parse(doc: dict[str, Any]) -> AudienceDefinition:
    return parse_audience(
        doc, computed_kinds=KINDS, audience_references={"aud_vip": frozenset()}.get
    )


def member(doc: dict[str, Any], now: datetime = NOW, **facts: Any) -> bool:
    return evaluate(parse(doc), ProfileFacts(**facts), now).member


def trait_is(op: str, value: Any = MISSING) -> dict[str, Any]:
    doc = {"trait": "t", "op": op}
    return doc if value is MISSING else {**doc, "value": value}


ABSENT = object()  # the trait is not there at all

TRAIT_TABLE: list[tuple[dict[str, Any], Any, bool]] = [
    (trait_is("eq", "pro"), "pro", True),
    (trait_is("eq", "pro"), "Pro", False),
    (trait_is("eq", "pro"), ["pro"], False),
    (trait_is("eq", "pro"), ABSENT, False),
    (trait_is("eq", "pro"), None, False),
    (trait_is("eq", 1), 1.0, True),
    (trait_is("eq", 1), "1", False),
    (trait_is("eq", 1), True, False),
    (trait_is("eq", True), True, True),
    (trait_is("eq", True), 1, False),
    (trait_is("eq", None), None, False),  # null is missing, and missing equals nothing
    (trait_is("neq", "pro"), "basic", True),
    (trait_is("neq", "pro"), "pro", False),
    (trait_is("neq", "pro"), ABSENT, True),
    (trait_is("neq", "pro"), None, True),
    (trait_is("lt", 50), 49.9, True),
    (trait_is("lt", 50), "49.90", True),  # a numeric string compares as a number
    (trait_is("lt", 50), " 7 ", True),
    (trait_is("lt", 50), 50, False),
    (trait_is("lt", 50), "cheap", False),
    (trait_is("lt", 50), ABSENT, False),
    (trait_is("lte", 50), "50", True),
    (trait_is("gt", 50), "1e3", True),
    (trait_is("gt", 50), True, False),
    (trait_is("gte", 50), 50, True),
    (trait_is("gte", 50), 49, False),
    (trait_is("lt", "m"), "apple", True),  # a string compares as a string
    (trait_is("gt", "2026-01-01"), "2026-02-01", True),
    (trait_is("contains", "sale"), "summer sale", True),
    (trait_is("contains", "sale"), ["new", "sale"], True),
    (trait_is("contains", "sale"), ["sales"], False),
    (trait_is("contains", "sale"), ABSENT, False),
    (trait_is("starts_with", "+44"), "+44 20", True),
    (trait_is("starts_with", "+44"), 44, False),
    (trait_is("in", ["US", "CA"]), "CA", True),
    (trait_is("in", ["US", "CA"]), "FR", False),
    (trait_is("in", [1, 2]), 2.0, True),
    (trait_is("in", ["US", None]), ABSENT, False),
    (trait_is("exists"), "", True),
    (trait_is("exists"), 0, True),
    (trait_is("exists"), None, False),
    (trait_is("exists"), ABSENT, False),
    (trait_is("is_empty"), ABSENT, True),
    (trait_is("is_empty"), None, True),
    (trait_is("is_empty"), "", True),
    (trait_is("is_empty"), [], True),
    (trait_is("is_empty"), {}, True),
    (trait_is("is_empty"), 0, False),
    (trait_is("before", "2026-01-01"), "2025-12-31T23:59:59Z", True),
    (trait_is("before", "2026-01-01"), "2026-01-01T00:30:00+01:00", True),  # 23:30 UTC
    (trait_is("before", "2026-01-01"), "2026-01-01", False),  # the same instant
    (trait_is("before", "2026-01-01"), "2025-12-31T23:00:00-01:00", False),  # 00:00 UTC
    (trait_is("before", "2026-01-01"), "2025-12-31T23:59:59", True),  # no offset: UTC
    (trait_is("before", "2026-01-01T10:00:00+02:00"), "2026-01-01T07:59:59Z", True),
    (trait_is("before", "2026-01-01T10:00:00+02:00"), "2026-01-01T08:00:00Z", False),
    (trait_is("before", "2026-01-01"), "last year", False),
    (trait_is("before", "2026-01-01"), 20251231, False),
    (trait_is("before", "2026-01-01"), ABSENT, False),
    (trait_is("after", "2026-01-01"), "2026-01-01T00:00:01Z", True),
    (trait_is("after", "2026-01-01"), "2026-01-01T00:30:00+01:00", False),
    (trait_is("after", "2026-01-01"), "2026-01-01", False),
    (trait_is("after", "2026-01-01"), None, False),
    # NOW is 2026-01-15T12:00Z
    (trait_is("within_last_days", 30), "2026-01-10", True),
    (trait_is("within_last_days", 30), "2025-12-16T12:00:01Z", True),
    (trait_is("within_last_days", 30), "2025-12-16T12:00:00Z", False),  # exactly 30 days
    (trait_is("within_last_days", 30), "2025-12-16T13:00:00+01:00", False),  # the same
    (trait_is("within_last_days", 30), "2026-01-15T13:00:00+01:00", True),  # exactly now
    (trait_is("within_last_days", 30), "2026-01-15T12:00:01Z", False),  # the future
    (trait_is("within_last_days", 0.5), "2026-01-15T00:00:01Z", True),
    (trait_is("within_last_days", 0.5), "2026-01-15T00:00:00Z", False),
    (trait_is("within_last_days", 30), "not a date", False),
    (trait_is("within_last_days", 30), ABSENT, False),
]


@pytest.mark.parametrize(("condition", "actual", "expected"), TRAIT_TABLE)
def test_trait_operators(condition: dict[str, Any], actual: Any, expected: bool) -> None:
    traits = {} if actual is ABSENT else {"t": actual}
    assert member(condition, traits=traits) is expected
    nested = {**condition, "trait": "profile.t"}  # a dotted name reads nested objects
    assert member(nested, traits={"profile": traits}) is expected


def test_dotted_names_read_nested_objects_and_lists() -> None:
    traits = {"address": {"city": "Paris"}, "orders": [{"sku": "A1"}], "a.b": "flat"}
    assert member({"trait": "address.city", "op": "eq", "value": "Paris"}, traits=traits)
    assert member({"trait": "orders.0.sku", "op": "eq", "value": "A1"}, traits=traits)
    assert not member({"trait": "orders.1.sku", "op": "exists"}, traits=traits)
    assert not member({"trait": "address.city.name", "op": "exists"}, traits=traits)
    assert not member({"trait": "a.b", "op": "exists"}, traits=traits)  # a dot always nests


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-5, 5) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=4,
)


@given(op=st.sampled_from(["eq", "neq"]), expected=st.text(max_size=3), actual=json_values)
def test_text_equality_means_what_the_shared_comparison_means(
    op: str, expected: str, actual: Any
) -> None:
    # the evaluator's shortcut for the commonest condition must not drift from conditions.py
    assert member(trait_is(op, expected), traits={"t": actual}) is Comparison(op, expected).test(
        actual
    )


COMPUTED_TABLE: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    ({"computed": "orders", "op": "eq", "value": 0}, {}, True),  # a missing count is 0
    ({"computed": "orders", "op": "eq", "value": 0}, {"orders": None}, True),
    ({"computed": "orders", "op": "exists"}, {}, True),
    ({"computed": "orders", "op": "gte", "value": 3}, {"orders": 3}, True),
    ({"computed": "orders", "op": "in", "value": [1, 2]}, {"orders": 3}, False),
    ({"computed": "revenue", "op": "gt", "value": 100}, {"revenue": 100.5}, True),
    ({"computed": "revenue", "op": "gt", "value": 100}, {}, False),  # a missing sum is missing
    ({"computed": "revenue", "op": "is_empty"}, {}, True),
    ({"computed": "revenue", "op": "neq", "value": 5}, {}, True),
    # the order operators of a time compare instants, not strings
    ({"computed": "first_seen", "op": "lt", "value": "2026-01-01"},
     {"first_seen": "2026-01-01T00:30:00+01:00"}, True),
    ({"computed": "first_seen", "op": "lte", "value": "2026-01-01"},
     {"first_seen": "2025-12-31T23:00:00-01:00"}, True),
    ({"computed": "first_seen", "op": "gt", "value": "2026-01-01"},
     {"first_seen": "2025-12-31T23:00:00-01:00"}, False),
    ({"computed": "first_seen", "op": "gte", "value": "2026-01-01"},
     {"first_seen": "2025-12-31T23:00:00-01:00"}, True),
    ({"computed": "first_seen", "op": "before", "value": "2026-01-01"}, {"first_seen": None},
     False),
    ({"computed": "last_seen", "op": "within_last_days", "value": 7},
     {"last_seen": "2026-01-10T00:00:00Z"}, True),
    ({"computed": "last_seen", "op": "within_last_days", "value": 7},
     {"last_seen": "2026-01-08T12:00:00Z"}, False),
    ({"computed": "last_seen", "op": "exists"}, {"last_seen": None}, False),
    ({"computed": "categories", "op": "contains", "value": "shoes"},
     {"categories": ["bags", "shoes"]}, True),
    ({"computed": "categories", "op": "contains", "value": "shoes"}, {"categories": []}, False),
    ({"computed": "categories", "op": "is_empty"}, {"categories": []}, True),
    ({"computed": "brand", "op": "eq", "value": "Acme"}, {"brand": "Acme"}, True),
    ({"computed": "brand", "op": "starts_with", "value": "Ac"}, {}, False),
]  # fmt: skip


@pytest.mark.parametrize(("condition", "computed", "expected"), COMPUTED_TABLE)
def test_computed_trait_operators(
    condition: dict[str, Any], computed: dict[str, Any], expected: bool
) -> None:
    assert member(condition, computed=computed) is expected


def implicit(condition: dict[str, Any]) -> str:
    node = parse(condition).root
    assert isinstance(node, EventCondition)
    return node.implicit_trait


TWICE = {"event": "Order Completed", "count": {"op": "gte", "value": 2}, "window": {"days": 30}}
VIEWED = {"event": "Cart Viewed", "performed": True, "window": {"days": 7}}
NOT_VIEWED = {**VIEWED, "performed": False}
SIGNED_UP = {"event": "Signed Up", "first_time": {"op": "within_last_days", "value": 7}}
LAST_ORDER = {"event": "Order Completed", "last_time": {"op": "before", "value": "2026-01-01"}}


@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        (TWICE, 2, True),
        (TWICE, 1, False),
        (TWICE, None, False),
        (TWICE, ABSENT, False),
        ({**TWICE, "count": {"op": "eq", "value": 0}}, ABSENT, True),
        ({**TWICE, "count": {"op": "neq", "value": 1}}, 3, True),
        ({**TWICE, "count": {"op": "lt", "value": 3}}, 2, True),
        ({**TWICE, "count": {"op": "lte", "value": 1}}, 2, False),
        ({**TWICE, "count": {"op": "gt", "value": 1}}, 2, True),
        (VIEWED, 1, True),
        (VIEWED, 0, False),
        (VIEWED, ABSENT, False),
        (NOT_VIEWED, 0, True),
        (NOT_VIEWED, ABSENT, True),
        (NOT_VIEWED, 4, False),
        (SIGNED_UP, "2026-01-14T09:00:00+02:00", True),
        (SIGNED_UP, "2026-01-01", False),
        (SIGNED_UP, None, False),
        (SIGNED_UP, ABSENT, False),
        (LAST_ORDER, "2025-12-31", True),
        (LAST_ORDER, "2026-01-01T00:00:00Z", False),
        (LAST_ORDER, ABSENT, False),
        ({"event": "Signed Up", "first_time": {"op": "is_empty"}}, ABSENT, True),
        ({"event": "Signed Up", "first_time": {"op": "exists"}}, "2026-01-01", True),
    ],
)
def test_event_conditions_read_their_implicit_trait(
    condition: dict[str, Any], value: Any, expected: bool
) -> None:
    computed = {} if value is ABSENT else {implicit(condition): value}
    assert member(condition, computed=computed) is expected


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"and": [{"audience": "aud_vip"}, {"consent": "marketing"}]}, False),
        ({"or": [{"audience": "aud_vip"}, {"consent": "marketing"}]}, True),
        ({"or": [{"consent": "sms"}, {"consent": "marketing"}]}, False),
        ({"not": {"consent": "marketing"}}, True),
        ({"not": {"audience": "aud_vip"}}, False),
        ({"and": [{"audience": "aud_vip"}, {"not": {"consent": "sms"}}]}, True),
        ({"and": [{"audience": "aud_vip"}] * 3 + [{"consent": "email"}]}, True),
        ({"and": [{"audience": "aud_vip"}] * 3 + [{"consent": "sms"}]}, False),
        ({"or": [{"consent": "sms"}] * 3 + [{"audience": "aud_vip"}]}, True),
        ({"or": [{"consent": "sms"}] * 4}, False),
        ({"and": [{"audience": "aud_vip"}]}, True),
        ({"or": [{"consent": "sms"}]}, False),
        ({"not": {"not": {"audience": "aud_vip"}}}, True),
    ],
)
def test_and_or_not_membership_and_consent(doc: dict[str, Any], expected: bool) -> None:
    facts = ProfileFacts(
        audiences=frozenset({"aud_vip"}),
        consent={"email": True, "sms": False, "marketing": "yes"},  # type: ignore[dict-item]
    )
    assert evaluate(parse(doc), facts, NOW).member is expected


def test_consent_must_be_granted_explicitly() -> None:
    assert member({"consent": "email"}, consent={"email": True})
    assert not member({"consent": "email"}, consent={"email": False})
    assert not member({"consent": "email"}, consent={})
    assert not member({"audience": "aud_vip"}, audiences=frozenset())


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def next_change(doc: dict[str, Any], now: datetime = NOW, **facts: Any) -> datetime | None:
    return evaluate(parse(doc), ProfileFacts(**facts), now).next_change


def test_next_change_when_a_date_leaves_the_window() -> None:
    doc = trait_is("within_last_days", 30)
    traits = {"t": "2026-01-01T00:00:00Z"}
    assert evaluate(
        parse(doc), ProfileFacts(traits=traits), at("2026-01-10T00:00:00Z")
    ) == Evaluation(True, at("2026-01-31T00:00:00+00:00"))
    assert not member(doc, at("2026-01-31T00:00:00Z"), traits=traits)
    assert member(doc, at("2026-01-30T23:59:59.999999Z"), traits=traits)
    assert next_change(doc, at("2026-01-31T00:00:00Z"), traits=traits) is None  # gone for good


def test_next_change_when_a_future_date_arrives() -> None:
    doc = trait_is("within_last_days", 1)
    traits = {"t": "2026-02-01T10:00:00+01:00"}
    assert next_change(doc, traits=traits) == at("2026-02-01T09:00:00Z")
    assert next_change(doc, at("2026-02-01T09:00:00Z"), traits=traits) == at("2026-02-02T09:00:00Z")


def test_next_change_is_the_soonest_of_all_date_conditions() -> None:
    doc = {
        "and": [
            {"trait": "a", "op": "within_last_days", "value": 30},
            {"not": {"trait": "b", "op": "within_last_days", "value": 10}},
            {"trait": "c", "op": "before", "value": "2026-01-16"},
        ]
    }
    traits = {"a": "2026-01-01", "b": "2026-01-14", "c": "2026-01-15"}
    assert next_change(doc, traits=traits) == at("2026-01-24T00:00:00Z")
    # even where the result will not change then (a superset is allowed)
    assert next_change(doc, traits={**traits, "a": "junk"}) == at("2026-01-24T00:00:00Z")


def test_next_change_of_event_and_computed_times() -> None:
    traits = {implicit(SIGNED_UP): "2026-01-10T06:00:00Z"}
    assert next_change(SIGNED_UP, computed=traits) == at("2026-01-17T06:00:00Z")
    last_seen = {"computed": "last_seen", "op": "within_last_days", "value": 1}
    assert next_change(last_seen, computed={"last_seen": "2026-01-15"}) == at(
        "2026-01-16T00:00:00Z"
    )


@pytest.mark.parametrize(
    "doc",
    [
        trait_is("before", "2026-02-01"),
        trait_is("after", "2026-02-01"),
        LAST_ORDER,
        TWICE,  # windowed counts expire in the computed-trait engine, not here
        {"computed": "first_seen", "op": "gt", "value": "2026-02-01"},
        {"trait": "nothing", "op": "within_last_days", "value": 3},  # the trait is missing
    ],
)
def test_no_next_change_without_a_relative_date(doc: dict[str, Any]) -> None:
    facts = {"t": "2026-01-20"}
    assert next_change(doc, traits=facts, computed={"first_seen": "2026-01-20"}) is None


def test_next_change_beyond_the_calendar_is_its_last_moment() -> None:
    doc = trait_is("within_last_days", 36500)
    now = datetime(9999, 1, 1, tzinfo=UTC)
    change = next_change(doc, now, traits={"t": "9990-01-01"})
    assert change is not None and change > now
    assert member(doc, now, traits={"t": "9990-01-01"})


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(parse(PLAN_IS_PRO), ProfileFacts(), datetime(2026, 1, 1))


PLAN_IS_PRO = trait_is("eq", "pro")


def test_definitions_compiled_once_do_not_leak_into_each_other() -> None:
    # compiled programs are cached per definition, by id; ids are reused once one is freed
    seen: set[int] = set()
    for i in range(300):
        definition = parse(trait_is("eq", str(i)))
        seen.add(id(definition))
        assert evaluate(definition, ProfileFacts(traits={"t": str(i)}), NOW).member
        del definition
    assert len(seen) < 300  # the test did meet a reused id
    first = parse(trait_is("eq", "a"))
    second = parse(trait_is("eq", "a"))
    assert evaluate(first, ProfileFacts(traits={"t": "a"}), NOW).member
    assert evaluate(second, ProfileFacts(traits={"t": "a"}), NOW).member


# Definitions over date traits, facts and a moment: membership between now and next_change
# must be what it is at now, and next_change must lie after now.
OFFSETS = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
moments = st.datetimes(
    min_value=datetime(2025, 1, 1),
    max_value=datetime(2027, 1, 1),
    timezones=st.sampled_from(OFFSETS),
)


def written(moment: datetime, form: int) -> str:
    if form == 0:
        return moment.date().isoformat()  # midnight UTC of that date
    if form == 1:
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if form == 2:
        return moment.replace(tzinfo=None).isoformat()  # no offset: UTC
    return moment.isoformat()


dates = st.builds(written, moments, st.integers(0, 3))
NAMES = ["a", "b", "c", "d"]
date_conditions = st.one_of(
    st.builds(
        lambda name, op, day: {"trait": name, "op": op, "value": day},
        st.sampled_from(NAMES),
        st.sampled_from(["before", "after"]),
        dates,
    ),
    st.builds(
        lambda name, days: {"trait": name, "op": "within_last_days", "value": days},
        st.sampled_from(NAMES),
        st.integers(1, 400) | st.floats(0.01, 400),
    ),
    st.builds(
        lambda days: {"computed": "last_seen", "op": "within_last_days", "value": days},
        st.floats(0.01, 60),
    ),
    st.builds(
        lambda days: {**SIGNED_UP, "first_time": {"op": "within_last_days", "value": days}},
        st.integers(1, 60),
    ),
    st.sampled_from([trait_is("exists"), {"trait": "a", "op": "eq", "value": "2026-01-01"}]),
)
trees = st.recursive(
    date_conditions,
    lambda inner: st.one_of(
        st.builds(lambda parts: {"and": parts}, st.lists(inner, min_size=1, max_size=4)),
        st.builds(lambda parts: {"or": parts}, st.lists(inner, min_size=1, max_size=4)),
        st.builds(lambda part: {"not": part}, inner),
    ),
    max_leaves=8,
)
trait_values = st.one_of(dates, dates, st.just("not a date"), st.none(), st.integers())


@settings(max_examples=400, deadline=None)
@given(
    doc=trees,
    traits=st.dictionaries(st.sampled_from([*NAMES, "t"]), trait_values),
    times=st.tuples(trait_values, trait_values),
    now=moments,
    samples=st.lists(st.floats(0, 1), max_size=8),
)
def test_nothing_changes_before_next_change(
    doc: dict[str, Any],
    traits: dict[str, Any],
    times: tuple[Any, Any],
    now: datetime,
    samples: list[float],
) -> None:
    definition = parse(doc)
    facts = ProfileFacts(
        traits=traits, computed={"last_seen": times[0], implicit(SIGNED_UP): times[1]}
    )
    result = evaluate(definition, facts, now)
    if result.next_change is None:
        span = 1_000 * 86_400_000_000  # then nothing changes, as far as we look
    else:
        assert result.next_change > now
        span = (result.next_change - now) // timedelta(microseconds=1)
    offsets = {1, span - 1, *(1 + int(sample * (span - 2)) for sample in samples)}
    for offset in sorted(offset for offset in offsets if 0 < offset < span):
        later = now + timedelta(microseconds=offset)
        assert evaluate(definition, facts, later).member is result.member, later
