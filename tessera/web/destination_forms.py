"""The destination editors' forms and the API's JSON, both ways: subscriptions (what a
destination receives), field mapping (with hashing of personal data) and consent.

A form posts rows as numbered fields (`sub-0-type`, `map-2-source`); reading them gives the
same document the API takes (`subscriptions.py`, `mapping.py` describe it), and an error the
service raises with a JSON path (`$.subscriptions[1].audiences[0]`) lands on the row and
control it names. An editor's buttons (add a rule, remove a row) post the form back with an
`editor` action: the page comes back with the change and nothing is saved.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tessera.activation.mapping import HASHES
from tessera.activation.subscriptions import CHANGES
from tessera.conditions import COMPARISON_OPS, VALUELESS_OPS
from tessera.errors import InvalidDefinition
from tessera.web.schema_form import FormInput

OPERATORS = [
    ("eq", "is"),
    ("neq", "is not"),
    ("gt", "is more than"),
    ("gte", "is at least"),
    ("lt", "is less than"),
    ("lte", "is at most"),
    ("contains", "contains"),
    ("starts_with", "starts with"),
    ("in", "is one of"),
    ("exists", "is set"),
    ("is_empty", "is empty"),
]
assert {op for op, _ in OPERATORS} == set(COMPARISON_OPS)
EVENT_TYPE_LABELS = {
    "track": "Track (actions)",
    "identify": "Identify (who)",
    "page": "Page views",
    "screen": "Screen views",
    "group": "Group (accounts)",
    "alias": "Alias",
}
HASH_LABELS = [
    ("", "Send as it is"),
    ("email", "Hash as email"),
    ("phone", "Hash as phone"),
    ("sha256", "Hash the value"),
]
HASH_WORDS = {"email": "email, SHA-256", "phone": "phone, SHA-256", "sha256": "SHA-256"}
assert {value for value, _ in HASH_LABELS if value} == set(HASHES)
# Suggestions for the mapping's source fields (a <datalist>); any dotted path works.
SOURCE_SUGGESTIONS = [
    "profile.id",
    "profile.traits.email",
    "profile.traits.phone",
    "profile.traits.first_name",
    "profile.traits.last_name",
    "profile.identities.user_id",
    "event.event",
    "event.properties.total",
    "event.properties.currency",
    "audience.name",
    "traits",
]
HASHED_IDENTIFIERS = [
    {"source": "profile.traits.email", "target": "email_sha256", "hash": "email"},
    {"source": "profile.traits.phone", "target": "phone_sha256", "hash": "phone"},
]
ROW = re.compile(r"^(sub|map)-(\d+)-")


def _rows(form: FormInput, prefix: str, keys: Any) -> list[int]:
    """The row numbers present in a posted form, in order."""
    found = set()
    for key in keys:
        match = ROW.match(key)
        if match and match.group(1) == prefix:
            found.add(int(match.group(2)))
    return sorted(found)


def _lines(text: Any) -> list[str]:
    if not isinstance(text, str):
        return []
    return [line.strip() for line in re.split(r"[\n,]", text) if line.strip()]


# ---------- condition values: typed in a text box ----------


def parse_value(text: str) -> Any:
    """`50` is a number, `true`/`false`/`null` what they say, `"50"` (quoted) the text 50,
    anything else text as typed."""
    text = text.strip()
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str | int | float | bool) or value is None else text


def show_value(value: Any) -> str:
    """The inverse of parse_value: text that would read as something else is quoted."""
    if isinstance(value, list):
        return ", ".join(show_value(item) for item in value)
    if isinstance(value, str):
        return json.dumps(value) if parse_value(value) != value or "," in value else value
    return json.dumps(value)


# ---------- subscriptions ----------


@dataclass
class Condition:
    property: str = ""
    op: str = "eq"
    value: str = ""


@dataclass
class SubscriptionRow:
    type: str
    event_types: list[str] = field(default_factory=list)
    event_names: str = ""
    conditions: list[Condition] = field(default_factory=list)
    where_json: str | None = None  # a filter too rich for the rows (or, not, nesting)
    audiences: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=lambda: list(CHANGES))
    traits: str = ""


def _conditions(where: Any) -> list[Condition] | None:
    """A filter as rows joined by "and"; None when it needs more than that."""
    if where is None:
        return []
    parts = where.get("and") if isinstance(where, dict) and list(where) == ["and"] else [where]
    rows = []
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, dict) or "property" not in part:
            return None
        rows.append(Condition(str(part["property"]), str(part.get("op", "eq")), ""))
        if "value" in part:
            rows[-1].value = show_value(part["value"])
    return rows if parts else None


def subscription_rows(doc: Any) -> list[SubscriptionRow]:
    """The API's subscriptions as editor rows."""
    rows = []
    for item in doc if isinstance(doc, list) else []:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "events":
            row = SubscriptionRow(
                "events",
                event_types=list(item.get("event_types", [])),
                event_names="\n".join(item.get("event_names", [])),
            )
            conditions = _conditions(item.get("where"))
            if conditions is None:
                row.where_json = json.dumps(item["where"], indent=2)
            else:
                row.conditions = conditions
            rows.append(row)
        elif kind == "audience":
            changes = list(item.get("changes") or CHANGES)
            rows.append(
                SubscriptionRow("audience", audiences=list(item["audiences"]), changes=changes)
            )
        elif kind == "traits":
            rows.append(SubscriptionRow("traits", traits="\n".join(item.get("traits", []))))
    return rows


def read_subscription_rows(form: FormInput, keys: Any) -> list[SubscriptionRow]:
    rows = []
    for index in _rows(form, "sub", keys):
        at = f"sub-{index}-"
        kind = str(form.get(at + "type") or "")
        row = SubscriptionRow(kind)
        if kind == "events":
            row.event_types = [str(x) for x in form.getlist(at + "event_types")]
            row.event_names = str(form.get(at + "event_names") or "")
            if form.get(at + "where_json") is not None:
                row.where_json = str(form.get(at + "where_json"))
            else:
                props = form.getlist(at + "where_property")
                ops = form.getlist(at + "where_op")
                values = form.getlist(at + "where_value")
                for number, prop in enumerate(props):
                    op = str(ops[number]) if number < len(ops) else "eq"
                    value = str(values[number]) if number < len(values) else ""
                    row.conditions.append(Condition(str(prop), op, value))
        elif kind == "audience":
            row.audiences = [str(x) for x in form.getlist(at + "audiences")]
            row.changes = [str(x) for x in form.getlist(at + "changes")]
        elif kind == "traits":
            row.traits = str(form.get(at + "traits") or "")
        rows.append(row)
    return rows


def _where(row: SubscriptionRow, index: int, errors: dict[str, str]) -> Any:
    if row.where_json is not None:
        if not row.where_json.strip():
            return None
        try:
            return json.loads(row.where_json)
        except ValueError:
            errors[f"sub-{index}-where"] = "This is not valid JSON; check the brackets and quotes."
            return None
    parts = []
    for condition in row.conditions:
        if not condition.property.strip():
            continue  # an empty row is no condition
        part: dict[str, Any] = {"property": condition.property.strip(), "op": condition.op}
        if condition.op == "in":
            part["value"] = [
                parse_value(text) for text in condition.value.split(",") if text.strip()
            ]
        elif condition.op not in VALUELESS_OPS:
            part["value"] = parse_value(condition.value)
        parts.append(part)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"and": parts}


def subscriptions_document(rows: list[SubscriptionRow], errors: dict[str, str]) -> list[Any]:
    """The rows as the API's document (what cannot be read goes into `errors`)."""
    doc: list[Any] = []
    for index, row in enumerate(rows):
        if row.type == "events":
            item: dict[str, Any] = {"type": "events"}
            if row.event_types:
                item["event_types"] = row.event_types
            names = _lines(row.event_names)
            if names:
                item["event_names"] = names
            where = _where(row, index, errors)
            if where is not None:
                item["where"] = where
            doc.append(item)
        elif row.type == "audience":
            if not row.changes:
                errors[f"sub-{index}-changes"] = "Tick entries, exits or both."
            doc.append({"type": "audience", "audiences": row.audiences, "changes": row.changes})
        elif row.type == "traits":
            names = _lines(row.traits)
            doc.append({"type": "traits", "traits": names} if names else {"type": "traits"})
        else:
            doc.append({"type": row.type})
    return doc


def apply_subscription_action(rows: list[SubscriptionRow], action: str) -> list[SubscriptionRow]:
    """add-events / add-audience / add-traits / remove-N / add-condition-N /
    remove-condition-N-M: the editor's buttons."""
    if action.startswith("add-condition-"):
        index = int(action.rsplit("-", 1)[1])
        if index < len(rows):
            rows[index].conditions.append(Condition())
    elif action.startswith("remove-condition-"):
        index, number = (int(part) for part in action.split("-")[2:4])
        if index < len(rows) and number < len(rows[index].conditions):
            del rows[index].conditions[number]
    elif action.startswith("add-"):
        kind = action.removeprefix("add-")
        if kind in ("events", "audience", "traits"):
            rows.append(SubscriptionRow(kind))
    elif action.startswith("remove-"):
        index = int(action.removeprefix("remove-"))
        if index < len(rows):
            del rows[index]
    return rows


def added_rule(rows: list[SubscriptionRow], action: str) -> int | None:
    """The number of the rule an editor action just added (it takes the focus)."""
    return len(rows) - 1 if action in ("add-events", "add-audience", "add-traits") else None


# ---------- mapping ----------


@dataclass
class MappingRow:
    source: str = ""
    target: str = ""
    hash: str = ""


def mapping_rows(doc: Any) -> tuple[list[MappingRow], bool]:
    """The API's mapping as editor rows, and whether only mapped fields are sent."""
    if not isinstance(doc, dict):
        return [], False
    rows = [
        MappingRow(str(item.get("source", "")), str(item.get("target", "")), item.get("hash") or "")
        for item in doc.get("fields", [])
        if isinstance(item, dict)
    ]
    return rows, bool(doc.get("only_mapped", False))


def read_mapping_rows(form: FormInput, keys: Any) -> tuple[list[MappingRow], bool]:
    rows = [
        MappingRow(
            str(form.get(f"map-{index}-source") or "").strip(),
            str(form.get(f"map-{index}-target") or "").strip(),
            str(form.get(f"map-{index}-hash") or ""),
        )
        for index in _rows(form, "map", keys)
    ]
    return rows, form.get("only_mapped") is not None


def mapping_document(rows: list[MappingRow], only_mapped: bool) -> dict[str, Any]:
    """The rows as the API's document; rows left blank are dropped."""
    fields = []
    for row in rows:
        if not row.source and not row.target:
            continue
        item: dict[str, Any] = {"source": row.source}
        if row.target and row.target != row.source:
            item["target"] = row.target
        if row.hash:
            item["hash"] = row.hash
        fields.append(item)
    if not fields and not only_mapped:
        return {}
    return {"fields": fields, "only_mapped": only_mapped}


def apply_mapping_action(rows: list[MappingRow], action: str) -> list[MappingRow]:
    """add-field / remove-field-N / add-hashed-ids: the editor's buttons."""
    if action == "add-field":
        rows.append(MappingRow())
    elif action == "add-hashed-ids":
        have = {row.source for row in rows}
        rows.extend(MappingRow(**item) for item in HASHED_IDENTIFIERS if item["source"] not in have)
    elif action.startswith("remove-field-"):
        index = int(action.removeprefix("remove-field-"))
        if index < len(rows):
            del rows[index]
    return rows


# ---------- consent ----------


def consent_list(text: str) -> list[str]:
    return sorted({part.strip() for part in text.split(",") if part.strip()})


# ---------- service errors → controls ----------

PATH = re.compile(r"^\$\.(subscriptions|mapping\.fields)\[(\d+)\](?:\.(\w+))?")


def error_key(exc: InvalidDefinition) -> str:
    """The control an error's JSON path points at (`sub-1-audiences`, `map-0-hash`), the
    editor as a whole (`subscriptions`, `mapping`, `consent`), or "" for the form."""
    match = PATH.match(exc.path)
    if match:
        section, index, part = match.groups()
        if section == "subscriptions":
            part = {"event_names": "event_names", "where": "where"}.get(part or "", part)
            return f"sub-{index}-{part or 'type'}"
        return f"map-{index}-{part or 'target'}"
    for prefix, key in (
        ("$.subscriptions", "subscriptions"),
        ("$.mapping", "mapping"),
        ("$.consent", "consent"),
    ):
        if exc.path.startswith(prefix):
            return key
    return ""


def error_text(exc: InvalidDefinition) -> str:
    """The service's message without its JSON path, as a sentence."""
    text = exc.message.removeprefix(f"{exc.path}: ")
    text = text.replace("GET /api/v1/audiences lists them", "pick one from the list")
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


# ---------- in words, for the overview and read-only readers ----------


def _quoted(names: list[str], limit: int = 6) -> str:
    shown = [f"“{name}”" for name in names[:limit]]
    more = len(names) - limit
    text = ", ".join(shown)
    return text + (f" and {more} more" if more > 0 else "")


def _condition_words(where: Any) -> str:
    rows = _conditions(where)
    if rows is None:
        return "a custom filter"
    labels = dict(OPERATORS)
    parts = []
    for row in rows:
        words = f"{row.property} {labels.get(row.op, row.op)}"
        parts.append(f"{words} {row.value}" if row.op not in VALUELESS_OPS else words)
    return " and ".join(parts)


def describe_subscriptions(doc: Any, audience_names: dict[str, str]) -> list[str]:
    """Each subscription as a sentence: what the destination receives."""
    lines = []
    for item in doc if isinstance(doc, list) else []:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "events":
            types = item.get("event_types") or []
            names = item.get("event_names") or []
            what = "All events" if not types and not names else "Events"
            if len(types) == 1:
                what = f"{types[0].capitalize()} events"
            elif types:
                what += " of type " + ", ".join(types)
            if names:
                what += " named " + _quoted(names)
            if item.get("where"):
                what += " where " + _condition_words(item["where"])
            lines.append(what)
        elif kind == "audience":
            changes = item.get("changes") or list(CHANGES)
            verb = {
                ("entered",): "People entering",
                ("exited",): "People leaving",
            }.get(tuple(changes), "People entering and leaving")
            named = [audience_names.get(a, a) for a in item.get("audiences", [])]
            lines.append(f"{verb} {_quoted(named)}")
        elif kind == "traits":
            names = item.get("traits") or []
            lines.append("Changes of " + (", ".join(names) if names else "any trait"))
    return lines


def describe_mapping(doc: Any) -> list[str]:
    rows, only_mapped = mapping_rows(doc)
    lines = []
    for row in rows:
        target = row.target or row.source
        text = f"{row.source} → {target}"
        if row.hash:
            text += f" (hashed as {HASH_WORDS[row.hash]})"
        lines.append(text)
    if rows and only_mapped:
        lines.append("Only these fields are sent.")
    return lines
