"""Forms generated from a JSON schema (a pydantic model's `model_json_schema()`): the fields
to render (`form_fields`), what to show in them (`shown_values`), the posted form read back
into values for the model (`read_form`), and pydantic's errors put next to the field they
concern, in plain words (`field_errors`). `templates/macros/schema_form.html` renders them.

Destination configs use it, so a third-party plugin gets a form for its config model for
free; CRM objects and workflow steps can use it the same way.

What becomes what:

| schema | control |
| --- | --- |
| string, `format: password` (a `SecretStr`) | password input; on edit "stored, leave blank" |
| string (`format: uri`, or a name like `url`, `endpoint`) | URL input |
| string, `enum` / `Literal` | select (checkboxes for a list of them) |
| number, integer | number input with the schema's bounds |
| boolean | checkbox |
| list of strings or numbers | textarea, one a line |
| object of strings (`dict[str, str]`) | textarea, `Name: value` a line |
| nested model | a fieldset of its fields |
| anything else | JSON textarea |

Numbers with a default are tuning knobs: they fold under "Advanced settings".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from markupsafe import Markup, escape
from pydantic import ValidationError

MISSING: Any = object()
ACRONYMS = {"url": "URL", "id": "ID", "api": "API", "http": "HTTP", "https": "HTTPS", "ip": "IP"}
ACRONYMS |= {"sql": "SQL", "json": "JSON", "csv": "CSV", "sms": "SMS", "ssl": "SSL", "tls": "TLS"}
UNITS = {"seconds", "minutes", "hours", "days", "ms", "bytes", "percent"}
URL_NAMES = re.compile(r"(^|_)(url|uri|endpoint|webhook|host)$")
REMOVE_SUFFIX = "__remove"


class FormInput(Protocol):
    """What a posted form offers (Starlette's FormData, or a dict of lists in tests)."""

    def get(self, key: str, /) -> Any: ...

    def getlist(self, key: str, /) -> list[Any]: ...


@dataclass
class FormField:
    key: str  # the property's name
    path: tuple[str, ...]  # from the top of the model
    name: str  # the input's name: the prefix and the dotted path
    label: str
    kind: str  # text url secret number integer boolean choice choices lines pairs json group
    required: bool = False
    nullable: bool = False
    default: Any = MISSING
    hint: Markup | None = None
    options: list[tuple[str, str]] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)  # option text → the schema's value
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    item_kind: str = "text"  # of a `lines` field: text, number or integer
    url_like: bool = False
    advanced: bool = False
    children: list[FormField] = field(default_factory=list)

    @property
    def id(self) -> str:
        return "field-" + re.sub(r"[^A-Za-z0-9_-]", "-", self.name)

    @property
    def step(self) -> str:
        return "1" if self.kind == "integer" else "any"

    @property
    def has_default(self) -> bool:
        return self.default is not MISSING


# ---------- schema → fields ----------


def humanise(key: str) -> str:
    """`timeout_seconds` → `Timeout (seconds)`, `audience_id` → `Audience ID`."""
    words = [word for word in re.split(r"[_\s]+", key) if word]
    if not words:
        return key
    unit = words.pop() if len(words) > 1 and words[-1].lower() in UNITS else None
    shown = [ACRONYMS.get(word.lower(), word.lower()) for word in words]
    shown[0] = shown[0][:1].upper() + shown[0][1:]
    return " ".join(shown) + (f" ({unit.lower()})" if unit else "")


def hint_markup(text: str | None) -> Markup | None:
    """A description with its `code` spans as <code>, everything else escaped."""
    if not text:
        return None
    parts = str(escape(text)).split("`")
    html = "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))
    return Markup(html)


def _resolve(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """`prop` with `$ref` (and a lone `allOf` wrapper) replaced by the definition."""
    merged = dict(prop)
    while True:
        if "$ref" in merged:
            target = defs.get(str(merged.pop("$ref")).rsplit("/", 1)[-1], {})
            merged = {**target, **merged}
        elif isinstance(merged.get("allOf"), list) and len(merged["allOf"]) == 1:
            merged = {**merged.pop("allOf")[0], **merged}
        else:
            return merged


def _variant(prop: dict[str, Any], defs: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The one non-null variant of an `anyOf` (and whether null was allowed)."""
    options = prop.get("anyOf") or prop.get("oneOf")
    if not isinstance(options, list):
        return prop, prop.get("type") == "null"
    resolved = [_resolve(option, defs) for option in options]
    real = [option for option in resolved if option.get("type") != "null"]
    nullable = len(real) < len(resolved)
    outer = {k: v for k, v in prop.items() if k not in ("anyOf", "oneOf")}
    if len(real) == 1:
        return {**real[0], **outer}, nullable
    return {**outer, "type": "__mixed__"}, nullable


def _scalar_kind(prop: Mapping[str, Any]) -> str | None:
    kind = prop.get("type")
    if kind in ("string", "number", "integer"):
        return "text" if kind == "string" else str(kind)
    return None


def _choices(values: Iterable[Any]) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    options, lookup = [], {}
    for value in values:
        text = value if isinstance(value, str) else json.dumps(value)
        options.append((text, str(value)))
        lookup[text] = value
    return options, lookup


def _build(
    key: str,
    prop: Mapping[str, Any],
    *,
    required: bool,
    defs: Mapping[str, Any],
    path: tuple[str, ...],
    prefix: str,
) -> FormField:
    prop, nullable = _variant(_resolve(prop, defs), defs)
    title = prop.get("title")
    auto_title = key.replace("_", " ").title()
    label = humanise(key) if not title or title == auto_title else str(title)
    item = FormField(
        key=key,
        path=path,
        name=prefix + ".".join(path),
        label=label,
        kind="json",
        required=required,
        nullable=nullable,
        default=prop.get("default", MISSING),
        hint=hint_markup(prop.get("description")),
        minimum=prop.get("minimum", prop.get("exclusiveMinimum")),
        maximum=prop.get("maximum", prop.get("exclusiveMaximum")),
        min_length=prop.get("minLength"),
        max_length=prop.get("maxLength"),
    )
    kind = prop.get("type")
    if prop.get("format") == "password" or prop.get("writeOnly"):
        item.kind = "secret"
    elif "enum" in prop or "const" in prop:
        item.kind = "choice"
        item.options, item.values = _choices(prop.get("enum", [prop.get("const")]))
    elif kind == "string":
        item.kind = "url" if prop.get("format") in ("uri", "url") else "text"
        item.url_like = item.kind == "url" or bool(URL_NAMES.search(key.lower()))
    elif kind in ("number", "integer"):
        item.kind = str(kind)
        item.advanced = item.has_default and not required
    elif kind == "boolean":
        item.kind = "boolean"
    elif kind == "array":
        items, _ = _variant(_resolve(prop.get("items", {}), defs), defs)
        if "enum" in items:
            item.kind = "choices"
            item.options, item.values = _choices(items["enum"])
        elif _scalar_kind(items):
            item.kind, item.item_kind = "lines", str(_scalar_kind(items))
    elif kind == "object":
        extra = prop.get("additionalProperties")
        if isinstance(prop.get("properties"), dict) and prop["properties"]:
            item.kind = "group"
            item.children = _fields(prop, defs=defs, path=path, prefix=prefix)
        elif isinstance(extra, dict) and _resolve(extra, defs).get("type") == "string":
            item.kind = "pairs"
    return item


def _fields(
    schema: Mapping[str, Any], *, defs: Mapping[str, Any], path: tuple[str, ...], prefix: str
) -> list[FormField]:
    required = set(schema.get("required", []))
    return [
        _build(key, prop, required=key in required, defs=defs, path=(*path, key), prefix=prefix)
        for key, prop in (schema.get("properties") or {}).items()
    ]


def form_fields(schema: Mapping[str, Any], *, prefix: str = "") -> list[FormField]:
    """The fields of an object schema, in the model's order; input names start with
    `prefix` (`config.` keeps a config's `name` apart from the form's own)."""
    return _fields(schema, defs=schema.get("$defs", {}), path=(), prefix=prefix)


def walk(fields: Iterable[FormField]) -> Iterable[FormField]:
    """Every field, a group's children after it."""
    for item in fields:
        yield item
        yield from walk(item.children)


# ---------- values → what the inputs show ----------


def _get(values: Mapping[str, Any] | None, path: Sequence[str]) -> Any:
    current: Any = values
    for part in path:
        if not isinstance(current, Mapping) or part not in current:
            return MISSING
        current = current[part]
    return current


def _text(item: FormField, value: Any) -> Any:
    if value is MISSING or value is None:
        return False if item.kind == "boolean" else ([] if item.kind == "choices" else "")
    if item.kind == "boolean":
        return bool(value)
    if item.kind == "choices":
        return [text for text, option in item.values.items() if option in value]
    if item.kind == "lines" and isinstance(value, list):
        return "\n".join(str(part) for part in value)
    if item.kind == "pairs" and isinstance(value, Mapping):
        return "\n".join(f"{name}: {text}" for name, text in value.items())
    if item.kind == "json":
        return json.dumps(value, indent=2, ensure_ascii=False)
    if item.kind == "choice":
        return value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def shown_values(fields: Iterable[FormField], values: Mapping[str, Any] | None) -> dict[str, Any]:
    """What each input shows (by input name) for `values`, or the defaults where `values`
    lacks a field. Secrets always show empty: they are never sent back to a browser."""
    shown: dict[str, Any] = {}
    for item in walk(fields):
        if item.kind in ("group", "secret"):
            shown[item.name] = ""
            continue
        value = _get(values, item.path)
        shown[item.name] = _text(item, item.default if value is MISSING else value)
    return shown


# ---------- the posted form → values ----------


@dataclass
class ReadForm:
    values: dict[str, Any]  # for the model (raw strings where pydantic should judge)
    errors: dict[str, str]  # input name → what is wrong, for what could not be read at all
    shown: dict[str, Any]  # what the inputs show when the form comes back with errors


def _number(text: str, kind: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text  # pydantic says it is not a number, in words
    if kind == "integer" and number.is_integer():
        return int(number)
    return number


def _pairs(text: str) -> dict[str, str] | None:
    found: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            return None
        found[name.strip()] = value.strip()
    return found


def _blank(item: FormField, *, keep_missing: bool) -> Any:
    """What an empty input means: the default, null, or (required) nothing at all."""
    if item.has_default:
        return item.default
    if item.nullable:
        return None
    return MISSING if keep_missing else None


def read_form(
    fields: Iterable[FormField],
    form: FormInput,
    *,
    stored_secrets: Iterable[str] = (),
    keep_secret: Any = MISSING,
) -> ReadForm:
    """The posted values for the model. A blank secret whose field is in `stored_secrets`
    (paths joined by dots) reads as `keep_secret` (the store's "unchanged" token), unless
    its "remove" box is ticked."""
    reader = _Reader(form, set(stored_secrets), keep_secret)
    reader.read(list(fields), reader.result.values)
    return reader.result


class _Reader:
    def __init__(self, form: FormInput, stored: set[str], keep: Any) -> None:
        self.form, self.stored, self.keep = form, stored, keep
        self.result = ReadForm({}, {}, {})

    def read(self, fields: list[FormField], into: dict[str, Any]) -> None:
        for item in fields:
            if item.kind == "group":
                child: dict[str, Any] = {}
                self.read(item.children, child)
                into[item.key] = child
                continue
            value = _read_one(item, self.form, self.stored, self.keep, self.result)
            if value is not MISSING:
                into[item.key] = value


def _read_one(
    item: FormField, form: FormInput, stored: set[str], keep: Any, result: ReadForm
) -> Any:
    if item.kind == "boolean":
        result.shown[item.name] = form.get(item.name) is not None
        return result.shown[item.name]
    if item.kind == "choices":
        picked = [str(text) for text in form.getlist(item.name)]
        result.shown[item.name] = picked
        return [item.values[text] for text in picked if text in item.values]
    raw = form.get(item.name)
    text = raw if isinstance(raw, str) else ""
    if item.kind == "secret":
        result.shown[item.name] = ""
        if text:
            return text
        dotted = ".".join(item.path)
        if form.get(item.name + REMOVE_SUFFIX) is not None:
            return None
        if dotted in stored and keep is not MISSING:
            return keep
        return None if item.nullable or item.has_default else MISSING
    result.shown[item.name] = text
    if item.kind not in ("json", "pairs", "lines"):
        text = text.strip()
    if not text.strip():
        return _blank(item, keep_missing=True)
    if item.kind in ("number", "integer"):
        return _number(text, item.kind)
    if item.kind == "choice":
        return item.values.get(text, text)
    if item.kind == "lines":
        parts = [line.strip() for line in text.splitlines() if line.strip()]
        if item.item_kind in ("number", "integer"):
            return [_number(part, item.item_kind) for part in parts]
        return parts
    if item.kind == "pairs":
        pairs = _pairs(text)
        if pairs is None:
            result.errors[item.name] = "Write one a line, as Name: value."
            return MISSING
        return pairs
    if item.kind == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            result.errors[item.name] = f"This is not valid JSON: {exc.msg.lower()} ({where})."
            return MISSING
    return text


# ---------- pydantic's errors → next to their field ----------


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."


def _number_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int | float) else str(value)


def plain_message(error: Mapping[str, Any]) -> str:
    """One pydantic error in words a marketer reads without knowing pydantic."""
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    message = str(error.get("msg", "This value is not valid"))
    if kind == "missing":
        return "Fill this in."
    if kind == "value_error":
        return _sentence(message.removeprefix("Value error, "))
    if kind == "extra_forbidden":
        return "This setting is not known here; remove it."
    bounds = {
        "greater_than": "Use a number above {gt}.",
        "greater_than_equal": "Use {ge} or more.",
        "less_than": "Use a number below {lt}.",
        "less_than_equal": "Use {le} or less.",
    }
    if kind in bounds:
        return bounds[kind].format(**{k: _number_text(v) for k, v in ctx.items()})
    if kind == "string_too_short":
        count = ctx.get("min_length", 1)
        return "Fill this in." if count == 1 else f"Use at least {count} characters."
    if kind == "string_too_long":
        return f"Use at most {_number_text(ctx.get('max_length'))} characters."
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "Enter a whole number, like 10."
    if kind in ("float_parsing", "float_type", "finite_number"):
        return "Enter a number, like 2.5."
    if kind in ("bool_parsing", "bool_type"):
        return "Choose yes or no."
    if kind in ("literal_error", "enum"):
        return f"Choose one of: {ctx.get('expected', 'the options given')}."
    if kind.startswith("url"):
        return "Enter a full address, like https://example.com/hook."
    if kind == "string_pattern_mismatch":
        return "This is not in the expected format."
    return _sentence(message)


def field_errors(exc: ValidationError, fields: Iterable[FormField]) -> dict[str, str]:
    """Each error under the input name of the field it concerns (the deepest field whose
    path starts its location); errors about the whole model go under ""."""
    by_path = {item.path: item.name for item in walk(fields)}
    errors: dict[str, str] = {}
    for error in exc.errors():
        location = tuple(str(part) for part in error.get("loc", ()))
        name = ""
        for size in range(len(location), 0, -1):
            if location[:size] in by_path:
                name = by_path[location[:size]]
                break
        errors.setdefault(name, plain_message(error))
    return errors
