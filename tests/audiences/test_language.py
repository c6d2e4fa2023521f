"""The audience language: what it refuses (and where), what it depends on, and round trips."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.audiences.language import (
    AudienceDefinition,
    Dependencies,
    EventCondition,
    parse_audience,
)
from tessera.errors import InvalidDefinition

KINDS = {
    "orders_30d": "count",
    "revenue": "sum",
    "avg_order": "avg",
    "first_seen": "first_time",
    "last_seen": "last_time",
    "categories": "unique_list",
    "favourite_brand": "most_frequent",
}
# Existing audiences and their direct references. aud_b already includes aud_a, so aud_a
# may not include aud_b; aud_x and aud_y are a cycle that bad data could contain.
GRAPH: dict[str, frozenset[str]] = {
    "aud_vip": frozenset(),
    "aud_a": frozenset(),
    "aud_b": frozenset({"aud_a"}),
    "aud_c": frozenset({"aud_b", "aud_vip"}),
    "aud_x": frozenset({"aud_y"}),
    "aud_y": frozenset({"aud_x"}),
}
PLAN = {"trait": "plan", "op": "eq", "value": "pro"}


def parse(doc: Any, audience_id: str | None = None) -> AudienceDefinition:
    return parse_audience(
        doc, computed_kinds=KINDS, audience_references=GRAPH.get, audience_id=audience_id
    )


def nested(levels: int) -> dict[str, Any]:
    doc: dict[str, Any] = PLAN
    for _ in range(levels):
        doc = {"not": doc}
    return doc


INVALID: list[tuple[str, Any, str, str]] = [
    # (case, document, path, part of the message)
    ("not an object", ["plan"], "$", "a condition is an object, not ['plan']"),
    ("no shape", {"op": "eq"}, "$", "one of the keys and, or, not, trait"),
    ("unknown operator", {"trait": "plan", "op": "equals", "value": "pro"}, "$.op",
     "unknown operator 'equals'; use one of eq, neq"),
    ("nested unknown operator", {"and": [PLAN, {"or": [PLAN, {"trait": "x", "op": "is"}]}]},
     "$.and[1].or[1].op", "unknown operator 'is'"),
    ("missing operator", {"trait": "plan", "value": "pro"}, "$.op", "missing 'op'"),
    ("eq with a list", {"trait": "plan", "op": "eq", "value": ["pro"]}, "$.value", "'eq'"),
    ("exists with a value", {"trait": "plan", "op": "exists", "value": 1}, "$.value",
     "'exists' takes no value"),
    ("infinite number", {"trait": "ltv", "op": "gt", "value": float("inf")}, "$.value",
     "finite"),
    ("empty trait name", {"trait": "", "op": "exists"}, "$.trait", "not ''"),
    ("empty dotted part", {"trait": "address..city", "op": "exists"}, "$.trait",
     "'address..city'"),
    ("unknown key", {"trait": "plan", "op": "eq", "value": "pro", "negate": True}, "$",
     "unexpected key 'negate'"),
    ("two shapes", {"and": [PLAN], "or": [PLAN]}, "$", "unexpected key 'or'"),
    ("unknown key under not", {"not": PLAN, "note": "x"}, "$", "unexpected key 'note'"),
    ("empty and", {"and": []}, "$.and", "'and' needs a non-empty list"),
    ("or of an object", {"or": {"trait": "plan"}}, "$.or", "'or' needs a non-empty list"),
    ("not of a list", {"not": [PLAN]}, "$.not", "a condition is an object"),
    ("bad date", {"trait": "signup", "op": "before", "value": "2026-13-01"}, "$.value",
     "ISO-8601 date or date-time (\"2026-01-31\""),
    ("date as a number", {"trait": "signup", "op": "after", "value": 20260101}, "$.value",
     "not 20260101"),
    ("date missing", {"trait": "signup", "op": "after"}, "$.value", "'after' needs a value"),
    ("zero days", {"trait": "signup", "op": "within_last_days", "value": 0}, "$.value",
     "above 0 and at most 36500, not 0"),
    ("too many days", {"trait": "signup", "op": "within_last_days", "value": 36501},
     "$.value", "not 36501"),
    ("days as text", {"trait": "signup", "op": "within_last_days", "value": "30"}, "$.value",
     "not '30'"),
    ("days as a boolean", {"trait": "signup", "op": "within_last_days", "value": True},
     "$.value", "not True"),
    ("unknown computed trait", {"computed": "orders_7d", "op": "exists"}, "$.computed",
     "unknown computed trait 'orders_7d'; known computed traits: avg_order, categories"),
    ("computed by number", {"computed": 7, "op": "exists"}, "$.computed",
     "unknown computed trait 7"),
    ("text op on a sum", {"computed": "revenue", "op": "contains", "value": "1"}, "$.op",
     "'revenue', a sum computed trait, cannot use 'contains'; use one of eq, neq, lt"),
    ("date op on a count", {"computed": "orders_30d", "op": "before", "value": "2026-01-01"},
     "$.op", "cannot use 'before'"),
    ("text value on a sum", {"computed": "revenue", "op": "gt", "value": "100"}, "$.value",
     "compares with numbers, not '100'"),
    ("text in a numeric list", {"computed": "avg_order", "op": "in", "value": [1, "2"]},
     "$.value", "not '2'"),
    ("null on a count", {"computed": "orders_30d", "op": "eq", "value": None}, "$.value",
     "not None"),
    ("eq on a time", {"computed": "first_seen", "op": "eq", "value": "2026-01-01"}, "$.op",
     "a first_time computed trait, cannot use 'eq'"),
    ("order op on a time with text", {"computed": "last_seen", "op": "lt", "value": "soon"},
     "$.value", "not 'soon'"),
    ("eq on a list", {"computed": "categories", "op": "eq", "value": "shoes"}, "$.op",
     "use one of contains, exists, is_empty"),
    ("unknown audience", {"audience": "aud_nope"}, "$.audience", "unknown audience 'aud_nope'"),
    ("audience id not text", {"audience": 42}, "$.audience", "not 42"),
    ("existing cycle", {"and": [PLAN, {"audience": "aud_x"}]}, "$.and[1].audience",
     "aud_x → aud_y → aud_x"),
    ("bad consent category", {"consent": "e mail"}, "$.consent", "not 'e mail'"),
    ("empty event name", {"event": "", "performed": True}, "$.event", "not ''"),
    ("count and performed", {"event": "Order Completed", "count": {"op": "gte", "value": 2},
     "performed": True}, "$", "not both 'count' and 'performed'"),
    ("no measure", {"event": "Order Completed", "window": {"days": 7}}, "$",
     "exactly one of count, performed, first_time, last_time"),
    ("unknown event key", {"event": "E", "performed": True, "within": 7}, "$",
     "unexpected key 'within'"),
    ("performed as text", {"event": "E", "performed": "yes"}, "$.performed", "not 'yes'"),
    ("count op", {"event": "E", "count": {"op": "between", "value": 2}}, "$.count.op",
     "unknown count operator 'between'"),
    ("negative count", {"event": "E", "count": {"op": "gte", "value": -1}}, "$.count.value",
     "whole number from 0"),
    ("fractional count", {"event": "E", "count": {"op": "gte", "value": 1.5}},
     "$.count.value", "not 1.5"),
    ("count key", {"event": "E", "count": {"op": "gte", "value": 1, "unit": "x"}}, "$.count",
     "unexpected key 'unit'"),
    ("count as a number", {"event": "E", "count": 2}, "$.count", '{"op": ..., "value": ...}'),
    ("zero-day window", {"event": "E", "performed": True, "window": {"days": 0}},
     "$.window.days", "from 1 to 3650, not 0"),
    ("long hour window", {"event": "E", "performed": True, "window": {"hours": 8761}},
     "$.window.hours", "from 1 to 8760"),
    ("fractional window", {"event": "E", "performed": True, "window": {"days": 1.5}},
     "$.window.days", "not 1.5"),
    ("weeks window", {"event": "E", "performed": True, "window": {"weeks": 1}}, "$.window",
     "{\"days\": N} or {\"hours\": N}"),
    ("two-unit window", {"event": "E", "performed": True, "window": {"days": 1, "hours": 1}},
     "$.window", "not {'days': 1, 'hours': 1}"),
    ("window on first_time", {"event": "E", "first_time": {"op": "exists"},
     "window": {"days": 7}}, "$.window", "'first_time' looks at all time"),
    ("first_time op", {"event": "E", "first_time": {"op": "contains", "value": "x"}},
     "$.first_time.op", "'first_time' cannot use 'contains'"),
    ("last_time date", {"event": "E", "last_time": {"op": "after", "value": "last week"}},
     "$.last_time.value", "not 'last week'"),
    ("bad where", {"event": "E", "performed": True,
     "where": {"property": "total", "op": "bigger", "value": 1}}, "$.where.op",
     "unknown operator 'bigger'"),
    ("nested bad where", {"event": "E", "performed": True,
     "where": {"and": [{"property": "a", "op": "exists"}, {"op": "exists"}]}},
     "$.where.and[1]", "names its property"),
    ("too deep", nested(16), "$" + ".not" * 16, "deeper than 16 levels"),
    ("too many conditions", {"or": [PLAN] * 201}, "$.or[200]", "more than 200 conditions"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("doc", "path", "message"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_definitions_name_the_path_and_the_bad_value(
    doc: Any, path: str, message: str
) -> None:
    with pytest.raises(InvalidDefinition) as caught:
        parse(doc)
    assert caught.value.path == path
    assert message in caught.value.message
    assert caught.value.to_dict()["path"] == path


def test_limits_are_inclusive() -> None:
    parse(nested(15))  # 16 levels: fifteen `not`s and the condition
    parse({"or": [PLAN] * 200})
    parse({"trait": "signup", "op": "within_last_days", "value": 36500})
    parse({"event": "E", "performed": True, "window": {"days": 3650}})
    parse({"event": "E", "performed": True, "window": {"hours": 8760}})
    parse({"event": "E", "count": {"op": "eq", "value": 0}})


@pytest.mark.parametrize(
    ("doc", "audience_id", "path", "cycle"),
    [
        ({"audience": "aud_a"}, "aud_a", "$.audience", "aud_a → aud_a"),
        ({"audience": "aud_b"}, "aud_a", "$.audience", "aud_a → aud_b → aud_a"),
        (
            {"or": [{"audience": "aud_vip"}, {"not": {"audience": "aud_c"}}]},
            "aud_a",
            "$.or[1].not.audience",
            "aud_a → aud_c → aud_b → aud_a",
        ),
    ],
)
def test_membership_cycles_are_refused_with_their_path(
    doc: dict[str, Any], audience_id: str, path: str, cycle: str
) -> None:
    with pytest.raises(InvalidDefinition) as caught:
        parse(doc, audience_id=audience_id)
    assert caught.value.path == path
    assert cycle in caught.value.message


def test_references_without_a_cycle_are_accepted() -> None:
    # aud_c reaches aud_a, but a new audience (no id yet) or another one is not in a cycle
    assert parse({"audience": "aud_c"}).dependencies.audiences == {"aud_c"}
    assert parse({"audience": "aud_c"}, audience_id="aud_new").dependencies.audiences == {"aud_c"}
    # an existing audience's references are replaced by the new definition, so aud_b may
    # drop aud_a and include aud_vip
    assert parse({"audience": "aud_vip"}, audience_id="aud_b").dependencies.audiences == {"aud_vip"}


def test_the_resolver_is_asked_once_per_audience() -> None:
    asked: list[str] = []

    def references(audience: str) -> frozenset[str] | None:
        asked.append(audience)
        return GRAPH.get(audience)

    doc = {"and": [{"audience": "aud_c"}, {"audience": "aud_b"}, {"audience": "aud_c"}]}
    parse_audience(doc, computed_kinds=KINDS, audience_references=references)
    assert sorted(asked) == ["aud_a", "aud_b", "aud_c", "aud_vip"]


def test_a_long_chain_of_references_does_not_overflow_the_stack() -> None:
    chain = {f"aud_{i}": frozenset({f"aud_{i + 1}"}) for i in range(5000)}
    chain["aud_5000"] = frozenset()
    definition = parse_audience(
        {"audience": "aud_0"}, computed_kinds={}, audience_references=chain.get
    )
    assert definition.dependencies.audiences == {"aud_0"}
    chain["aud_5000"] = frozenset({"aud_new"})
    with pytest.raises(InvalidDefinition, match=r"aud_new → aud_0 → aud_1 → .* → aud_new"):
        parse_audience(
            {"audience": "aud_0"},
            computed_kinds={},
            audience_references=chain.get,
            audience_id="aud_new",
        )


EVERYTHING: dict[str, Any] = {
    "and": [
        {"trait": "plan", "op": "in", "value": ["pro", "team"]},
        {"trait": "address.city", "op": "eq", "value": "Paris"},
        {"trait": "signup_at", "op": "within_last_days", "value": 30},
        {"trait": "birthday", "op": "before", "value": "2000-01-01"},
        {"not": {"trait": "email", "op": "is_empty"}},
        {"computed": "revenue", "op": "gte", "value": 100},
        {"computed": "last_seen", "op": "after", "value": "2026-01-01T00:00:00+01:00"},
        {"computed": "categories", "op": "contains", "value": "shoes"},
        {
            "or": [
                {
                    "event": "Order Completed",
                    "where": {"property": "total", "op": "gt", "value": 50},
                    "count": {"op": "gte", "value": 2},
                    "window": {"days": 30},
                },
                {"event": "Cart Viewed", "performed": False, "window": {"hours": 48}},
                {"event": "Signed Up", "first_time": {"op": "within_last_days", "value": 7}},
                {"event": "Order Completed", "last_time": {"op": "exists"}},
            ]
        },
        {"audience": "aud_vip"},
        {"consent": "marketing"},
    ]
}


def test_to_document_round_trips() -> None:
    definition = parse(EVERYTHING)
    assert definition.to_document() == EVERYTHING
    assert parse(definition.to_document()) == definition
    assert parse(definition.to_document()).to_document() == definition.to_document()


def test_the_definition_does_not_share_the_callers_lists() -> None:
    doc: dict[str, Any] = {
        "and": [
            {"trait": "plan", "op": "in", "value": ["pro"]},
            {"event": "E", "where": {"property": "p", "op": "eq", "value": 1}, "performed": True},
        ]
    }
    definition = parse(doc)
    doc["and"][0]["value"].append("team")
    doc["and"][1]["where"]["value"] = 2
    document = definition.to_document()
    assert document["and"][0]["value"] == ["pro"]
    assert document["and"][1]["where"]["value"] == 1
    document["and"][0]["value"].append("x")
    assert definition.to_document()["and"][0]["value"] == ["pro"]


def test_dependencies() -> None:
    definition = parse(EVERYTHING)
    implicit = {trait["name"] for trait in definition.implicit_traits}
    assert definition.dependencies == Dependencies(
        events=frozenset({"Order Completed", "Cart Viewed", "Signed Up"}),
        traits=frozenset({"plan", "address", "signup_at", "birthday", "email"}),
        computed=frozenset({"revenue", "last_seen", "categories"}) | implicit,
        audiences=frozenset({"aud_vip"}),
        consent=True,
        time_dependent=True,
    )
    plain = parse({"or": [PLAN, {"trait": "signup", "op": "after", "value": "2026-01-01"}]})
    assert plain.dependencies == Dependencies(
        events=frozenset(),
        traits=frozenset({"plan", "signup"}),
        computed=frozenset(),
        audiences=frozenset(),
        consent=False,
        time_dependent=False,
    )


@pytest.mark.parametrize(
    ("doc", "time_dependent"),
    [
        ({"trait": "signup", "op": "within_last_days", "value": 1}, True),
        ({"trait": "signup", "op": "before", "value": "2026-01-01"}, False),
        ({"computed": "last_seen", "op": "within_last_days", "value": 0.5}, True),
        ({"computed": "last_seen", "op": "lt", "value": "2026-01-01"}, False),
        ({"event": "E", "performed": True, "window": {"days": 7}}, True),
        ({"event": "E", "count": {"op": "gt", "value": 1}, "window": {"hours": 1}}, True),
        ({"event": "E", "performed": True}, False),
        ({"event": "E", "first_time": {"op": "within_last_days", "value": 7}}, True),
        ({"event": "E", "last_time": {"op": "before", "value": "2026-01-01"}}, False),
        ({"not": {"event": "E", "last_time": {"op": "within_last_days", "value": 7}}}, True),
    ],
)
def test_time_dependence(doc: dict[str, Any], time_dependent: bool) -> None:
    assert parse(doc).dependencies.time_dependent is time_dependent


def implicit_name(condition: dict[str, Any]) -> str:
    node = parse(condition).root
    assert isinstance(node, EventCondition)
    return node.implicit_trait


ORDERS_OVER_50 = {
    "event": "Order Completed",
    "where": {
        "and": [{"property": "total", "op": "gt", "value": 50}, {"property": "x", "op": "exists"}]
    },
    "count": {"op": "gte", "value": 2},
    "window": {"days": 30},
}


def test_implicit_traits_are_documents_named_by_their_meaning() -> None:
    definition = parse(ORDERS_OVER_50)
    (trait,) = definition.implicit_traits
    assert trait == {
        "name": trait["name"],
        "kind": "count",
        "event": {"name": "Order Completed", "where": ORDERS_OVER_50["where"]},
        "window": {"days": 30},
    }
    assert re.fullmatch(r"_evt_[0-9a-f]{16}", trait["name"])
    assert parse({"event": "E", "last_time": {"op": "exists"}}).implicit_traits == (
        {"name": implicit_name({"event": "E", "last_time": {"op": "exists"}}),
         "kind": "last_time", "event": {"name": "E"}},
    )  # fmt: skip


def test_identical_event_conditions_share_one_implicit_trait() -> None:
    name = implicit_name(ORDERS_OVER_50)
    # the comparison is the audience's, the count is the trait's: all of these read it
    assert implicit_name({**ORDERS_OVER_50, "count": {"op": "lt", "value": 9}}) == name
    performed = {k: v for k, v in ORDERS_OVER_50.items() if k != "count"}
    assert implicit_name({**performed, "performed": False}) == name
    # key order does not matter
    reordered = {
        "window": {"days": 30},
        "count": {"value": 2, "op": "gte"},
        "where": {"and": [{"op": "gt", "value": 50, "property": "total"},
                          {"op": "exists", "property": "x"}]},
        "event": "Order Completed",
    }  # fmt: skip
    assert implicit_name(reordered) == name
    # one trait for the definition even when two conditions read it
    definition = parse({"or": [ORDERS_OVER_50, {**performed, "performed": True}]})
    assert [trait["name"] for trait in definition.implicit_traits] == [name]


@pytest.mark.parametrize(
    "change",
    [
        {"event": "Order Refunded"},
        {"window": {"days": 31}},
        {"window": {"hours": 30}},
        {"where": {"property": "total", "op": "gt", "value": 50}},
        {"where": {"and": [{"property": "total", "op": "gt", "value": 51},
                           {"property": "x", "op": "exists"}]}},
    ],
)  # fmt: skip
def test_different_event_conditions_read_different_implicit_traits(
    change: dict[str, Any],
) -> None:
    assert implicit_name({**ORDERS_OVER_50, **change}) != implicit_name(ORDERS_OVER_50)


def test_all_time_and_first_last_read_different_implicit_traits() -> None:
    names = {
        implicit_name({"event": "E", "performed": True}),
        implicit_name({"event": "E", "performed": True, "window": {"days": 1}}),
        implicit_name({"event": "E", "first_time": {"op": "exists"}}),
        implicit_name({"event": "E", "last_time": {"op": "exists"}}),
    }
    assert len(names) == 4
    assert implicit_name({"event": "E", "first_time": {"op": "exists"}}) == implicit_name(
        {"event": "E", "first_time": {"op": "before", "value": "2026-01-01"}}
    )


# Junk built from the language's own words reaches much deeper than random JSON alone.
WORDS = [
    "and", "or", "not", "trait", "computed", "event", "audience", "consent", "op", "value",
    "where", "count", "performed", "first_time", "last_time", "window", "days", "hours",
    "property", "eq", "neq", "lt", "gte", "in", "contains", "exists", "is_empty", "before",
    "after", "within_last_days", "plan", "revenue", "first_seen", "categories", "aud_b",
    "aud_x", "aud_a", "marketing", "2026-01-01", "2026-01-01T10:00:00+02:00", "",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.sampled_from(WORDS),
    st.text(max_size=12),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(WORDS), inner, max_size=5),
        st.dictionaries(st.text(max_size=5), inner, max_size=2),
    ),
    max_leaves=30,
)


def sometimes_junk(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.integers(0, 9).flatmap(lambda pick: junk if pick == 0 else valid)


OPERATORS = st.sampled_from(
    ["eq", "neq", "lt", "lte", "gt", "gte", "contains", "starts_with", "in", "exists",
     "is_empty", "before", "after", "within_last_days"]
)  # fmt: skip
VALUES = st.one_of(
    scalars,
    st.sampled_from(["2026-01-01", "2026-01-01T10:00:00Z", "2026-01-01T10:00:00-05:00"]),
    st.floats(0, 40000),
    st.lists(scalars, max_size=3),
)


def comparison(**names: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {key: sometimes_junk(strategy) for key, strategy in names.items()}
        | {"op": sometimes_junk(OPERATORS)},
        optional={"value": sometimes_junk(VALUES)},
    )


where = st.recursive(
    comparison(property=st.sampled_from(["total", "sku", "a.b"])),
    lambda inner: st.one_of(
        st.builds(lambda parts: {"and": parts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda part: {"not": part}, inner),
    ),
    max_leaves=4,
)
event = st.fixed_dictionaries(
    {"event": sometimes_junk(st.sampled_from(["Order Completed", "Cart Viewed"]))},
    optional={
        "where": sometimes_junk(where),
        "count": sometimes_junk(comparison()),
        "performed": sometimes_junk(st.booleans()),
        "first_time": sometimes_junk(comparison()),
        "last_time": sometimes_junk(comparison()),
        "window": sometimes_junk(
            st.dictionaries(st.sampled_from(["days", "hours"]), st.integers(-1, 9000), max_size=2)
        ),
    },
)
leaf = st.one_of(
    comparison(trait=st.sampled_from(["plan", "signup", "address.city"])),
    comparison(computed=st.sampled_from(list(KINDS))),
    event,
    st.fixed_dictionaries(
        {
            "audience": sometimes_junk(
                st.sampled_from(["aud_vip", "aud_a", "aud_b", "aud_c", "aud_c", "aud_x", "aud_new"])
            )
        }
    ),
    st.fixed_dictionaries({"consent": sometimes_junk(st.just("marketing"))}),
)
near_valid = st.recursive(
    sometimes_junk(leaf),
    lambda inner: st.one_of(
        st.builds(lambda parts: {"and": parts}, st.lists(inner, min_size=1, max_size=4)),
        st.builds(lambda parts: {"or": parts}, st.lists(inner, min_size=1, max_size=4)),
        st.builds(lambda part: {"not": part}, inner),
    ),
    max_leaves=6,
)


@settings(max_examples=1000, deadline=None)
@given(doc=st.one_of(junk, near_valid), audience_id=st.sampled_from([None, "aud_a", "aud_vip"]))
def test_junk_raises_nothing_but_invalid_definition(doc: Any, audience_id: str | None) -> None:
    try:
        definition = parse(doc, audience_id=audience_id)
    except InvalidDefinition as error:
        assert error.path.startswith("$")
        return
    assert parse(definition.to_document(), audience_id=audience_id) == definition
