"""What one payload object shows of its shape: its paths, flattened with dots, each with
its observed JSON type, within bounds a hostile payload cannot stretch.

Pure functions, so the batch stage stays a loop over dictionaries and the property tests
can drive them alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

# Levels below the object flattened: `a.b.c.d.e`. A non-empty object at the last level is
# recorded as "object" rather than entered.
MAX_DEPTH = 5
# Paths taken from one object; the keys after them are counted as left out.
MAX_PATHS = 200
# Longest event name or path kept (the columns' size); a longer path is left out, a longer
# event name cut.
MAX_TEXT = 255

STRING, DATETIME, INTEGER, NUMBER = "string", "datetime", "integer", "number"
BOOLEAN, ARRAY, OBJECT, NULL = "boolean", "array", "object", "null"
JSON_TYPES = (STRING, DATETIME, INTEGER, NUMBER, BOOLEAN, ARRAY, OBJECT, NULL)

_TYPES: dict[type, str] = {
    bool: BOOLEAN,
    int: INTEGER,
    float: NUMBER,
    list: ARRAY,
    dict: OBJECT,
    type(None): NULL,
}

# The `context` fields people filter on (Segment's common fields), taken across all events;
# the rest of context (traits, consent, identifiers) is read elsewhere or not a filter.
CONTEXT_FIELDS = frozenset(
    {
        "app",
        "campaign",
        "channel",
        "device",
        "library",
        "locale",
        "location",
        "network",
        "os",
        "page",
        "referrer",
        "screen",
        "timezone",
        "userAgent",
    }
)
CONTEXT_DEPTH = 2


def looks_like_datetime(text: str) -> bool:
    """True for an ISO-8601 date or date-time, as the audience language's date operators
    read one (`datetime.fromisoformat`); the cheap test first, since most strings fail it."""
    if not 10 <= len(text) <= 40 or text[4] != "-" or text[7] != "-" or not text[:4].isdigit():
        return False
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def json_type(value: Any) -> str:
    """The JSON type of a parsed value, with integers apart from other numbers and ISO
    dates apart from other strings."""
    kind = type(value)
    if kind is str:
        return DATETIME if looks_like_datetime(value) else STRING
    return _TYPES.get(kind, STRING)


def flatten(
    data: Mapping[str, Any], *, max_depth: int = MAX_DEPTH, max_paths: int = MAX_PATHS
) -> tuple[list[tuple[str, str]], int]:
    """`(path, json type)` for each leaf of `data` in key order, and how many keys were
    left out: past `max_paths`, or making a path longer than `MAX_TEXT` (a key left out
    counts once, whatever it holds). Objects are entered up to `max_depth` levels; an
    empty object, or one at the last level, is a leaf of type "object". Lists are leaves
    ("array"): their items' shapes vary and conditions address them by index."""
    found: list[tuple[str, str]] = []

    def walk(data: Mapping[str, Any], prefix: str, depth: int) -> int:
        left_out = 0
        for index, (key, value) in enumerate(data.items()):
            if len(found) >= max_paths:
                return left_out + len(data) - index
            path = prefix + key if prefix else key
            if len(path) > MAX_TEXT:
                left_out += 1
            elif type(value) is dict and value and depth < max_depth:
                left_out += walk(value, path + ".", depth + 1)
            else:
                found.append((path, json_type(value)))
        return left_out

    left_out = walk(data, "", 1)
    return found, left_out


def context_paths(context: Mapping[str, Any]) -> tuple[list[tuple[str, str]], int]:
    """The paths of `context`'s filterable fields (`CONTEXT_FIELDS`), two levels deep."""
    chosen = {key: value for key, value in context.items() if key in CONTEXT_FIELDS}
    if not chosen:
        return [], 0
    return flatten(chosen, max_depth=CONTEXT_DEPTH)
