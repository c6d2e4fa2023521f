"""Flattening a payload object into dotted paths with observed types: every path names a
value an audience condition would find there, of the type reported, within the bounds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.conditions import MISSING, lookup
from tessera.schema.observe import (
    JSON_TYPES,
    MAX_DEPTH,
    MAX_PATHS,
    context_paths,
    flatten,
    json_type,
)
from tests.examples import examples

# Keys as SDKs send them: no dots (a dotted path could not name them), some that look odd.
keys = st.text(alphabet="abcxyz_-09 $é", min_size=1, max_size=8)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet="ab-:T0123456789Z+ ", max_size=26),
    st.sampled_from(["2026-12-04", "2026-12-04T10:00:00Z", "2026-02-30", "1999-01-01 00:00"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=40,
)
objects = st.dictionaries(keys, json_values, max_size=6)


def leaves(data: dict[str, Any], depth: int = 1) -> int:
    """The paths `flatten` should report when no limit is reached."""
    count = 0
    for value in data.values():
        if isinstance(value, dict) and value and depth < MAX_DEPTH:
            count += leaves(value, depth + 1)
        else:
            count += 1
    return count


@given(data=objects)
@settings(max_examples=examples(300))
def test_every_path_names_a_value_of_its_type(data: dict[str, Any]) -> None:
    paths, left_out = flatten(data)
    assert left_out == 0
    assert len(paths) == leaves(data)
    assert len({path for path, _ in paths}) == len(paths)
    for path, kind in paths:
        assert kind in JSON_TYPES
        value = lookup(data, path)
        assert value is not MISSING
        assert json_type(value) == kind
        assert len(path.split(".")) <= MAX_DEPTH
        if kind == "object":
            # Objects are leaves only when empty or at the depth limit.
            assert value == {} or len(path.split(".")) == MAX_DEPTH


@given(data=objects, max_paths=st.integers(1, 5), max_depth=st.integers(1, 3))
@settings(max_examples=examples(200))
def test_limits_hold_and_what_is_left_out_is_counted(
    data: dict[str, Any], max_paths: int, max_depth: int
) -> None:
    paths, left_out = flatten(data, max_paths=max_paths, max_depth=max_depth)
    assert len(paths) <= max_paths
    assert all(len(path.split(".")) <= max_depth for path, _ in paths)
    full, _ = flatten(data, max_depth=max_depth)
    assert paths == full[: len(paths)]  # the first paths, in key order
    assert left_out == max(0, len(full) - max_paths)


@given(value=json_values)
@settings(max_examples=examples(200))
def test_the_type_of_a_value(value: Any) -> None:
    kind = json_type(value)
    expected = {
        type(None): "null",
        bool: "boolean",
        int: "integer",
        float: "number",
        list: "array",
        dict: "object",
    }.get(type(value))
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            expected = "string"
        else:
            # Extended ISO dates only (`2026-12-04...`), as people write and SDKs send them.
            extended = value[4:5] == value[7:8] == "-" and 10 <= len(value) <= 40
            expected = "datetime" if extended else "string"
    assert kind == expected


def test_dates_and_strings_apart() -> None:
    assert json_type("2026-12-04") == "datetime"
    assert json_type("2026-12-04T10:00:00Z") == "datetime"
    assert json_type("2026-12-04T10:00:00.123+02:00") == "datetime"
    assert json_type("2026-13-04") == "string"
    assert json_type("12/04/2026") == "string"
    assert json_type("20261204") == "string"
    assert json_type("") == "string"
    assert json_type(True) == "boolean"
    assert json_type(1) == "integer"
    assert json_type(1.5) == "number"


def test_a_hostile_payload_is_bounded() -> None:
    wide = {f"key{i}": i for i in range(10_000)}
    paths, left_out = flatten(wide)
    assert len(paths) == MAX_PATHS
    assert left_out == 10_000 - MAX_PATHS

    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(500):
        deep = {"a": deep}
    paths, left_out = flatten(deep)
    assert paths == [(".".join(["a"] * MAX_DEPTH), "object")]
    assert left_out == 0


def test_context_keeps_the_fields_people_filter_on() -> None:
    paths, _ = context_paths(
        {
            "campaign": {"source": "newsletter", "medium": "email"},
            "page": {"url": "https://shop.example/", "path": "/"},
            "traits": {"email": "jo@example.com"},
            "ip": "192.0.2.1",
            "library": {"name": "analytics.js", "version": "4.1.0"},
            "device": {"nested": {"too": {"deep": 1}}},
        }
    )
    assert sorted(path for path, _ in paths) == [
        "campaign.medium",
        "campaign.source",
        "device.nested",
        "library.name",
        "library.version",
        "page.path",
        "page.url",
    ]
