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
# Paths taken from one object; those after them are counted as left out.
MAX_PATHS = 200
# Longest event name or path kept (the columns' size): the stage leaves a longer path out,
# and cuts a longer event name.
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
    data: Mapping[str, Any],
    *,
    max_depth: int = MAX_DEPTH,
    max_paths: int = MAX_PATHS,
    only: frozenset[str] | None = None,
) -> tuple[list[tuple[str, str]], int]:
    """`(path, json type)` for each leaf of `data` in key order, at most `max_paths`, and
    how many more there were. Objects are entered up to `max_depth` levels; an empty
    object, or one at the last level, is a leaf of type "object". Lists are leaves
    ("array"): their items' shapes vary and conditions address them by index. `only`
    keeps just those top-level keys.

    It runs for every event the processor applies, so it is one plain walk: `json_type`
    inlined (a dict lookup by the value's type, the date test only for strings shaped
    like one), no limit tested per key. The walk's work is bounded by the payload's size
    (ingest's limit), what it keeps by `max_paths`; paths too long for the catalog are
    the stage's to leave out, once per distinct path rather than per event."""
    found: list[tuple[str, str]] = []
    if only is not None:
        data = {key: value for key, value in data.items() if key in only}
    _walk(data, "", 1, found, max_depth)
    left_out = len(found) - max_paths
    if left_out <= 0:
        return found, 0
    del found[max_paths:]
    return found, left_out


def _walk(
    data: Mapping[str, Any], prefix: str, depth: int, found: list[tuple[str, str]], max_depth: int
) -> None:
    """`flatten`'s recursion (a module function: a closure made per call cost more)."""
    append, kind_of = found.append, _TYPES.get
    for key, value in data.items():
        kind = type(value)
        if kind is str:
            dated = len(value) >= 10 and value[4] == "-" and looks_like_datetime(value)
            append((prefix + key, DATETIME if dated else STRING))
        elif kind is dict and value and depth < max_depth:
            _walk(value, prefix + key + ".", depth + 1, found, max_depth)
        else:
            append((prefix + key, kind_of(kind, STRING)))


def context_paths(context: Mapping[str, Any]) -> tuple[list[tuple[str, str]], int]:
    """The paths of `context`'s filterable fields (`CONTEXT_FIELDS`), two levels deep."""
    return flatten(context, max_depth=CONTEXT_DEPTH, only=CONTEXT_FIELDS)
