"""Comparisons and property filters shared by computed traits and audiences.

A comparison is `{"op": ..., "value": ...}` tested against one value that may be missing.
A property filter nests `and` / `or` / `not` over `{"property": "dotted.path", "op", "value"}`
and is tested against an event's `properties` (or `traits`). Parsing validates the whole
document up front and raises `InvalidDefinition` naming the JSON path of the bad part, so
evaluation on the processor's hot path never meets a malformed condition.

Semantics, chosen to match what a marketer means:
- A missing value (or JSON null) fails every test except `neq`, `exists` (false) and
  `is_empty` (true).
- `lt`/`lte`/`gt`/`gte` with a number compare numerically, also against numeric strings
  ("49.90"); with a string they compare strings (so ISO dates order correctly).
- `eq`/`neq` compare numbers numerically (`1 == 1.0`) and everything else exactly;
  `true` never equals `1`.
- `contains` tests a substring of a string, or membership of a list.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tessera.errors import InvalidDefinition

MISSING: Any = object()

SCALAR_OPS = ("eq", "neq")
ORDER_OPS = ("lt", "lte", "gt", "gte")
TEXT_OPS = ("contains", "starts_with")
VALUELESS_OPS = ("exists", "is_empty")
COMPARISON_OPS = (*SCALAR_OPS, *ORDER_OPS, *TEXT_OPS, "in", *VALUELESS_OPS)
MAX_LIST = 1000
MAX_DEPTH = 16


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def as_number(value: Any) -> float | None:
    """A number, or a string that spells one; None otherwise."""
    if is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None  # NaN and inf do not compare
    return None


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bool) or is_number(value)


def _equal(actual: Any, expected: Any) -> bool:
    if is_number(expected) and is_number(actual):
        return float(actual) == float(expected)
    return type(actual) is type(expected) and bool(actual == expected)


@dataclass(frozen=True, slots=True)
class Comparison:
    op: str
    value: Any = None

    def test(self, actual: Any) -> bool:
        if actual is None:
            actual = MISSING
        op, expected = self.op, self.value
        if op == "exists":
            return actual is not MISSING
        if op == "is_empty":
            return actual is MISSING or actual in ("", [], {})
        if actual is MISSING:
            return op == "neq"
        if op == "eq":
            return _equal(actual, expected)
        if op == "neq":
            return not _equal(actual, expected)
        if op == "in":
            return any(_equal(actual, item) for item in expected)
        if op == "contains":
            if isinstance(actual, str):
                return isinstance(expected, str) and expected in actual
            if isinstance(actual, list):
                return any(_equal(item, expected) for item in actual)
            return False
        if op == "starts_with":
            return isinstance(actual, str) and actual.startswith(expected)
        return _order(op, actual, expected)


def _order(op: str, actual: Any, expected: Any) -> bool:
    left: Any
    right: Any
    if is_number(expected):
        left, right = as_number(actual), float(expected)
        if left is None:
            return False
    elif isinstance(actual, str):
        left, right = actual, expected
    else:
        return False
    if op == "lt":
        return bool(left < right)
    if op == "lte":
        return bool(left <= right)
    if op == "gt":
        return bool(left > right)
    return bool(left >= right)


def parse_comparison(doc: Mapping[str, Any], path: str) -> Comparison:
    """Validate `{"op", "value"}` (the caller has taken out its own keys)."""
    op = doc.get("op")
    if op not in COMPARISON_OPS:
        raise InvalidDefinition(
            f"unknown operator {op!r}; use one of {', '.join(COMPARISON_OPS)}", path=f"{path}.op"
        )
    value = doc.get("value")
    where = f"{path}.value"
    if op in VALUELESS_OPS:
        if "value" in doc:
            raise InvalidDefinition(f"{op!r} takes no value", path=where)
        return Comparison(op)
    if "value" not in doc:
        raise InvalidDefinition(f"{op!r} needs a value", path=where)
    if op in SCALAR_OPS and not _is_scalar(value):
        raise InvalidDefinition(
            f"{op!r} compares with a string, number, boolean or null", path=where
        )
    if op in ORDER_OPS and not (is_number(value) or isinstance(value, str)):
        raise InvalidDefinition(
            f"{op!r} compares with a number or a string (an ISO date orders as a string), "
            f"not {value!r}",
            path=where,
        )
    if op in TEXT_OPS and not isinstance(value, str):
        raise InvalidDefinition(f"{op!r} needs a string, not {value!r}", path=where)
    if op == "in":
        if not isinstance(value, list) or not value or len(value) > MAX_LIST:
            raise InvalidDefinition(f"'in' needs a list of 1 to {MAX_LIST} values", path=where)
        if not all(_is_scalar(item) for item in value):
            raise InvalidDefinition("'in' lists strings, numbers, booleans or null", path=where)
    return Comparison(op, value)


def lookup(data: Mapping[str, Any] | None, dotted: str) -> Any:
    """The value at `a.b.c` in nested objects (list items by index), or MISSING."""
    current: Any = data
    for part in dotted.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return MISSING
    return current


PropertyFilter = Callable[[Mapping[str, Any] | None], bool]


def match_all(_properties: Mapping[str, Any] | None) -> bool:
    return True


def parse_property_filter(doc: Any, path: str = "$", *, depth: int = 0) -> PropertyFilter:
    """Compile a property filter document into a predicate over an event's properties."""
    if depth > MAX_DEPTH:
        raise InvalidDefinition(f"nested deeper than {MAX_DEPTH} levels", path=path)
    if not isinstance(doc, Mapping):
        raise InvalidDefinition(f"a condition is an object, not {doc!r}", path=path)
    for junction in ("and", "or"):
        if junction in doc:
            only_keys(doc, {junction}, path)
            parts = doc[junction]
            if not isinstance(parts, list) or not parts:
                raise InvalidDefinition(
                    f"{junction!r} needs a non-empty list", path=f"{path}.{junction}"
                )
            children = [
                parse_property_filter(part, f"{path}.{junction}[{i}]", depth=depth + 1)
                for i, part in enumerate(parts)
            ]
            if junction == "and":
                return lambda props: all(child(props) for child in children)
            return lambda props: any(child(props) for child in children)
    if "not" in doc:
        only_keys(doc, {"not"}, path)
        child = parse_property_filter(doc["not"], f"{path}.not", depth=depth + 1)
        return lambda props: not child(props)
    name = doc.get("property")
    if not isinstance(name, str) or not name or len(name) > 255:
        raise InvalidDefinition(
            "a property condition names its property: "
            '{"property": "total", "op": "gt", "value": 50}',
            path=path,
        )
    only_keys(doc, {"property", "op", "value"}, path)
    comparison = parse_comparison(doc, path)
    return lambda props: comparison.test(lookup(props, name))


def only_keys(doc: Mapping[str, Any], allowed: set[str], path: str) -> None:
    """Refuse keys a definition does not know, so a typo is an error, not a silent no-op."""
    extra = sorted(set(doc) - allowed)
    if extra:
        raise InvalidDefinition(
            f"unexpected key {extra[0]!r} here (expected {', '.join(sorted(allowed))})", path=path
        )
