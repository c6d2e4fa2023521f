"""How a profile's parts read on its page: the header (name, email, phone, company), traits
with their provenance, timeline events and merges, turned into plain values the templates
print. It formats what the services return (already masked for the reader's role); it
reads nothing itself."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import orjson

EVENT_TYPES = ("track", "page", "screen", "identify", "group", "alias")
TYPE_LABELS = {
    "track": "Track",
    "page": "Page",
    "screen": "Screen",
    "identify": "Identify",
    "group": "Group",
    "alias": "Alias",
}
RULES = {"identifier": "a shared identifier", "alias": "an alias call"}
SUMMARY_ITEMS = 3
SUMMARY_VALUE = 60  # characters of one property in an event's line; the payload has all
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_ISO_MOMENT = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def label(name: str) -> str:
    """`first_name` and `firstName` read as "First name"."""
    words = _CAMEL.sub(" ", name).replace("_", " ").replace("-", " ").split()
    text = " ".join(words).lower()
    return text[:1].upper() + text[1:] if text else name


def text(value: Any) -> str:
    """A trait or property value in words: JSON only for what has structure."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def moment(value: Any) -> datetime | None:
    """A string that is an ISO 8601 date and time (a `created_at` trait), read as one."""
    if not isinstance(value, str) or not _ISO_MOMENT.match(value):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _first(traits: dict[str, Any], *names: str) -> Any:
    for name in names:
        value = traits.get(name)
        if value not in (None, ""):
            return value
    return None


def _identity(profile: dict[str, Any], kind: str) -> str | None:
    for item in profile["identities"]:
        if item["type"] == kind:
            return str(item["value"])
    return None


def _company(profile: dict[str, Any]) -> str | None:
    company = _first(profile["traits"], "company", "company_name", "companyName")
    if isinstance(company, dict):
        company = company.get("name")
    if company:
        return str(company)
    for account in profile["accounts"]:
        return str(account["traits"].get("name") or account["group_id"])
    return None


def _initials(name: str | None, email: str | None) -> str:
    words = [word for word in (name or "").split() if word[:1].isalpha()]
    if words:
        return "".join(word[0] for word in words[:2]).upper()
    return (email or "")[:1].upper()


def header(profile: dict[str, Any]) -> dict[str, Any]:
    """Who this is at a glance, from traits first and identifiers second."""
    traits = profile["traits"]
    name = _first(traits, "name", "full_name", "fullName")
    if name is None:
        parts = [
            _first(traits, "first_name", "firstName", "firstname"),
            _first(traits, "last_name", "lastName", "lastname"),
        ]
        name = " ".join(str(part) for part in parts if part) or None
    email = _first(traits, "email") or _identity(profile, "email")
    phone = _first(traits, "phone") or _identity(profile, "phone")
    user_id = _identity(profile, "user_id")
    return {
        "id": profile["id"],
        "name": str(name) if name else None,
        "title": str(name or email or user_id or "Anonymous visitor"),
        "email": str(email) if email else None,
        "phone": str(phone) if phone else None,
        "company": _company(profile),
        "user_id": user_id,
        "initials": _initials(str(name) if name else None, str(email) if email else None),
        "created_at": profile["created_at"],
        "updated_at": profile["updated_at"],
        "event_count": profile["event_count"],
        "identifiers": len(profile["identities"]),
        "merged": len(profile["merged_ids"]),
        "audiences": len(profile.get("audiences", [])),
    }


def traits(profile: dict[str, Any], origins: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each trait with where its value came from: the source, the event and its time."""
    found = []
    for name, value in sorted(profile["traits"].items(), key=lambda pair: pair[0].lower()):
        provenance = profile["provenance"].get(name, {})
        origin = origins.get(name)
        event = None
        if origin is not None:
            kind = TYPE_LABELS.get(origin["type"], origin["type"])
            event = f"{kind} · {origin['event']}" if origin["event"] else kind
        found.append(
            {
                "name": name,
                "label": label(name),
                "value": text(value),
                "moment": moment(value),
                "structured": isinstance(value, (dict, list)),
                "source": provenance.get("source") or "unknown source",
                "message_id": provenance.get("message_id"),
                "timestamp": provenance.get("timestamp"),
                "event": event,
            }
        )
    return found


def _clip(value: str) -> str:
    return value if len(value) <= SUMMARY_VALUE else value[: SUMMARY_VALUE - 1] + "…"


def _pairs(values: Any) -> str:
    if not isinstance(values, dict):
        return ""
    shown = [
        f"{label(key)}: {_clip(text(value))}"
        for key, value in values.items()
        if not isinstance(value, (dict, list)) and value not in (None, "")
    ]
    return " · ".join(shown[:SUMMARY_ITEMS])


def _title(item: dict[str, Any]) -> str:
    kind = item["type"]
    if kind == "track":
        return str(item.get("event") or "Event")
    if kind in ("page", "screen"):
        name = item.get("name")
        return f"Viewed {name}" if name else f"Viewed a {kind}"
    if kind == "group":
        account = (item.get("traits") or {}).get("name")
        return f"Joined {account}" if isinstance(account, str) and account else "Joined an account"
    return {"identify": "Identified", "alias": "Linked an id"}.get(kind, label(kind))


def _consent(item: dict[str, Any]) -> str:
    """ "Consent: email granted · advertising refused", from the event's context."""
    consent = (item.get("context") or {}).get("consent")
    preferences = consent.get("categoryPreferences") if isinstance(consent, dict) else None
    if not isinstance(preferences, dict) or not preferences:
        return ""
    said = [f"{name} {'granted' if value else 'refused'}" for name, value in preferences.items()]
    return "Consent: " + " · ".join(said)


def _summary(item: dict[str, Any]) -> str:
    return _described(item) or _consent(item)


def _described(item: dict[str, Any]) -> str:
    kind = item["type"]
    if kind == "identify":
        names = [label(name) for name in (item.get("traits") or {})]
        if not names:
            context = item.get("context") or {}
            names = [label(name) for name in (context.get("traits") or {})]
        if not names:
            return ""
        more = len(names) - SUMMARY_ITEMS
        listed = ", ".join(names[:SUMMARY_ITEMS]).lower()
        return f"Set {listed}" + (f" and {more} more" if more > 0 else "")
    if kind == "group":
        return _pairs(item.get("traits"))
    properties = item.get("properties") or {}
    if kind in ("page", "screen") and isinstance(properties, dict):
        # Where they were, not the full URL, referrer and query the payload holds anyway.
        shown = [properties[key] for key in ("path", "title") if properties.get(key)]
        if shown:
            return " · ".join(_clip(text(value)) for value in shown)
    return _pairs(properties)


def event(item: dict[str, Any]) -> dict[str, Any]:
    """A timeline entry: a title and a line of its properties, its payload as pretty JSON."""
    payload = {key: value for key, value in item.items() if value is not None and key != "seq"}
    return {
        "seq": item["seq"],
        "type": item["type"],
        "type_label": TYPE_LABELS.get(item["type"], label(item["type"])),
        "title": _title(item),
        "summary": _summary(item),
        "source": item.get("source"),
        "timestamp": item["timestamp"],
        "message_id": item["messageId"],
        "payload": orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode(),
    }


def merge(item: dict[str, Any]) -> dict[str, Any]:
    """A merge in words, for the history and its Unmerge dialog."""
    identifiers = item["identifiers"]
    return {
        **item,
        "reason": RULES.get(item["rule"], item["rule"]),
        "through": ", ".join(identifiers) if identifiers else "no identifier recorded",
    }
