"""An audience definition in words, for people: "All of: plan is one of “pro”, “team”;
performed Order Completed at least 2 times in the last 30 days, where total is more than 50".

`describe_audience` turns a stored (valid) document into a tree of `Phrase`s that a page
renders as nested lists; it never raises on a part it does not know, it shows it as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

OPERATOR_WORDS = {
    "eq": "is",
    "neq": "is not",
    "lt": "is less than",
    "lte": "is at most",
    "gt": "is more than",
    "gte": "is at least",
    "contains": "contains",
    "starts_with": "starts with",
    "in": "is one of",
    "exists": "is set",
    "is_empty": "is empty or missing",
    "before": "is before",
    "after": "is after",
    "within_last_days": "is within the last",
}
COUNT_WORDS = {
    "eq": "exactly",
    "neq": "other than",
    "lt": "fewer than",
    "lte": "at most",
    "gt": "more than",
    "gte": "at least",
}
TIME_WORDS = {
    "before": "before",
    "after": "after",
    "within_last_days": "within the last",
    "lt": "before",
    "lte": "on or before",
    "gt": "after",
    "gte": "on or after",
    "exists": "at some time",
    "is_empty": "never",
}


@dataclass
class Phrase:
    """One line of the description, with the lines under it (the members of a group)."""

    text: str
    children: list[Phrase] = field(default_factory=list)


def describe_audience(document: Any, *, audience_names: Mapping[str, str]) -> Phrase:
    """The definition as a tree of phrases; `audience_names` names referenced audiences."""
    return _node(document, audience_names)


def _node(doc: Any, names: Mapping[str, str]) -> Phrase:
    if not isinstance(doc, Mapping):
        return Phrase(_json(doc))
    if "and" in doc or "or" in doc:
        key = "and" if "and" in doc else "or"
        parts = doc[key] if isinstance(doc[key], list) else []
        heading = "All of these are true:" if key == "and" else "At least one of these is true:"
        return Phrase(heading, [_node(part, names) for part in parts])
    if "not" in doc:
        inner = doc["not"]
        if isinstance(inner, Mapping) and ("and" in inner or "or" in inner):
            key = "and" if "and" in inner else "or"
            parts = inner[key] if isinstance(inner[key], list) else []
            heading = "Not all of these are true:" if key == "and" else "None of these is true:"
            return Phrase(heading, [_node(part, names) for part in parts])
        if isinstance(inner, Mapping) and inner.get("performed") is True:
            return Phrase(_event({**inner, "performed": False}))
        described = _node(inner, names)
        return Phrase(f"Not: {described.text}", described.children)
    if "trait" in doc:
        return Phrase(f"{doc['trait']} {_test(doc)}")
    if "computed" in doc:
        return Phrase(f"computed trait {doc['computed']} {_test(doc)}")
    if "event" in doc:
        return Phrase(_event(doc))
    if "audience" in doc:
        audience = str(doc["audience"])
        name = names.get(audience)
        return Phrase(f"is in the audience “{name}”" if name else f"is in the audience {audience}")
    if "consent" in doc:
        return Phrase(f"agreed to {doc['consent']}")
    return Phrase(_json(doc))


def _test(doc: Mapping[str, Any]) -> str:
    op = str(doc.get("op"))
    words = OPERATOR_WORDS.get(op, op)
    if op in ("exists", "is_empty") or "value" not in doc:
        return words
    value = doc["value"]
    if op == "within_last_days":
        return f"{words} {_number(value)} {'day' if value == 1 else 'days'}"
    if op in ("before", "after"):
        return f"{words} {_moment(value)}"
    if isinstance(value, list):
        return f"{words} {', '.join(_value(item) for item in value)}"
    return f"{words} {_value(value)}"


def _event(doc: Mapping[str, Any]) -> str:
    event = str(doc["event"])
    window = _window(doc.get("window"))
    if "performed" in doc:
        if doc["performed"] is False:
            text = f"did not perform {event}{window or ' ever'}"
        else:
            text = f"performed {event}{window}"
    elif "count" in doc and isinstance(doc["count"], Mapping):
        count = doc["count"]
        times = "time" if count.get("value") == 1 else "times"
        amount = COUNT_WORDS.get(str(count.get("op")), str(count.get("op")))
        text = f"performed {event} {amount} {_value(count.get('value'))} {times}{window}"
    else:
        measure = "first_time" if "first_time" in doc else "last_time"
        test = doc.get(measure)
        which = "first" if measure == "first_time" else "last"
        if isinstance(test, Mapping):
            op = str(test.get("op"))
            when = TIME_WORDS.get(op, op)
            if op == "is_empty":
                text = f"never performed {event}"
            elif op == "exists":
                text = f"performed {event} at some time"
            elif op == "within_last_days":
                days = test.get("value")
                text = f"{which} performed {event} within the last {_number(days)} "
                text += "day" if days == 1 else "days"
            else:
                text = f"{which} performed {event} {when} {_moment(test.get('value'))}"
        else:
            text = f"{which} performed {event}"
    if "where" in doc:
        text += f", where {_filter(doc['where'])}"
    return text


def _window(window: Any) -> str:
    if not isinstance(window, Mapping) or len(window) != 1:
        return ""
    unit, amount = next(iter(window.items()))
    if amount == 1:
        return f" in the last {'day' if unit == 'days' else 'hour'}"
    return f" in the last {_number(amount)} {unit}"


def _filter(doc: Any) -> str:
    """A property filter in one line; groups inside groups in brackets."""
    if not isinstance(doc, Mapping):
        return _json(doc)
    for key, joiner in (("and", " and "), ("or", " or ")):
        if key in doc and isinstance(doc[key], list):
            parts = [_filter(part) for part in doc[key]]
            return joiner.join(f"({part})" if _is_group(sub) else part
                               for part, sub in zip(parts, doc[key], strict=True))  # fmt: skip
    if "not" in doc:
        return f"not ({_filter(doc['not'])})"
    if "property" in doc:
        return f"{doc['property']} {_test(doc)}"
    return _json(doc)


def _is_group(doc: Any) -> bool:
    return isinstance(doc, Mapping) and ("and" in doc or "or" in doc)


def _value(value: Any) -> str:
    if isinstance(value, str):
        return f"“{value}”"
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    return _json(value)


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _value(value)
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,}"
    return f"{int(value):,}"


def _moment(value: Any) -> str:
    """An ISO date as "31 Jan 2026"; a date-time keeps its time and offset."""
    if not isinstance(value, str):
        return _value(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return f"“{value}”"
    if len(value) <= 10:
        return f"{moment.day} {moment:%b %Y}"
    text = f"{moment.day} {moment:%b %Y, %H:%M}"
    offset = moment.strftime("%z")  # empty when the value has none: then it is UTC
    if offset in ("", "+0000"):
        return f"{text} UTC"
    return f"{text} (UTC{offset[:3]}:{offset[3:]})"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


KIND_WORDS = {
    "count": "Number of",
    "sum": "Sum of {property} over",
    "avg": "Average {property} over",
    "min": "Lowest {property} over",
    "max": "Highest {property} over",
    "first": "First {property} seen on",
    "last": "Latest {property} seen on",
    "most_frequent": "Most frequent {property} on",
    "unique_list": "Up to {limit} distinct values of {property} on",
    "first_time": "Time of the first",
    "last_time": "Time of the latest",
}


def describe_computed_trait(definition: Mapping[str, Any]) -> str:
    """A computed trait's definition in one sentence: "Sum of total over Order Completed
    events, in the last 30 days"."""
    kind = str(definition.get("kind"))
    words = KIND_WORDS.get(kind, kind).format(
        property=definition.get("property", "a property"), limit=definition.get("limit", 10)
    )
    event = definition.get("event") or {}
    if not isinstance(event, Mapping):
        event = {}
    name, kind_of_call = event.get("name"), event.get("type")
    one = kind in ("first_time", "last_time")  # the time of one event, not a tally of many
    if name:
        subject = f"{name} event" if one else f"{name} events"
    elif kind_of_call:
        subject = f"{kind_of_call} call" if one else f"{kind_of_call} calls"
    else:
        subject = "event" if one else "all events"
    text = f"{words} {subject}"
    if "where" in event:
        text += f" where {_filter(event['where'])}"
    window = _window(definition.get("window"))
    return text + ("," + window if window else "")
