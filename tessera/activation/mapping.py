"""Per-destination field mapping, with per-field hashing of personal data the way ad
platforms expect it: SHA-256 of the normalised email (trimmed, lower-cased) or phone (E.164).

    {"fields": [{"source": "profile.traits.email", "target": "email_sha256", "hash": "email"},
                {"source": "event.properties.total", "target": "value"}],
     "only_mapped": false}

With `only_mapped` false the message keeps everything else, and a hashed source is removed
so its clear value never leaves; with `only_mapped` true the message is `messageId`, `kind`,
`timestamp` and the mapped fields. A missing source leaves its target out.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tessera.conditions import MISSING, lookup, only_keys
from tessera.errors import InvalidDefinition
from tessera.identity.extract import normalise_email, normalise_phone

HASHES = ("email", "phone", "sha256")
KEPT = ("messageId", "kind", "timestamp")
MAX_FIELDS = 200


@dataclass(frozen=True)
class FieldMap:
    source: str
    target: str
    hash: str | None


@dataclass(frozen=True)
class FieldMapping:
    fields: tuple[FieldMap, ...] = ()
    only_mapped: bool = False

    def apply(self, message: dict[str, Any], *, phone_region: str) -> dict[str, Any]:
        if not self.fields:
            return message
        if self.only_mapped:
            out: dict[str, Any] = {key: message[key] for key in KEPT if key in message}
        else:
            out = copy.deepcopy(message)
            for item in self.fields:
                if item.hash is not None:
                    _remove(out, item.source)
        for item in self.fields:
            value = lookup(message, item.source)
            if value is MISSING or value is None:
                continue
            if item.hash is not None:
                value = hash_value(value, item.hash, phone_region=phone_region)
                if value is None:
                    continue
            _put(out, item.target, value)
        return out


def hash_value(value: Any, kind: str, *, phone_region: str) -> str | None:
    """SHA-256 hex of the normalised value; None when it is not a valid email or phone."""
    text = value if isinstance(value, str) else str(value)
    if kind == "email":
        normalised = normalise_email(text)
    elif kind == "phone":
        normalised = normalise_phone(text, phone_region)
    else:
        normalised = text
    if normalised is None:
        return None
    return hashlib.sha256(normalised.encode()).hexdigest()


def _path(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise InvalidDefinition("a field is a dotted path like profile.traits.email", path=path)
    if any(not part for part in value.split(".")):
        raise InvalidDefinition(f"{value!r} has an empty part", path=path)
    return value


def parse_mapping(doc: Any, *, root: str = "$") -> FieldMapping:
    """Validate a mapping document; errors name the JSON path (below `root`)."""
    if doc is None or doc == {}:
        return FieldMapping()
    if not isinstance(doc, Mapping):
        raise InvalidDefinition("the mapping is an object with fields", path=root)
    only_keys(doc, {"fields", "only_mapped"}, root)
    raw = doc.get("fields", [])
    if not isinstance(raw, list) or len(raw) > MAX_FIELDS:
        raise InvalidDefinition(f"fields is a list of at most {MAX_FIELDS}", path=f"{root}.fields")
    only_mapped = doc.get("only_mapped", False)
    if not isinstance(only_mapped, bool):
        raise InvalidDefinition("only_mapped is true or false", path=f"{root}.only_mapped")
    fields: list[FieldMap] = []
    for i, item in enumerate(raw):
        path = f"{root}.fields[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidDefinition("a field is an object with a source", path=path)
        only_keys(item, {"source", "target", "hash"}, path)
        source = _path(item.get("source"), f"{path}.source")
        target = _path(item.get("target", source), f"{path}.target")
        if target in KEPT or target.split(".")[0] in KEPT:
            raise InvalidDefinition(f"{target!r} is kept as it is; map to another name", path=path)
        kind = item.get("hash")
        if kind is not None and kind not in HASHES:
            raise InvalidDefinition(
                f"unknown hash {kind!r}; use {', '.join(HASHES)}", path=f"{path}.hash"
            )
        fields.append(FieldMap(source, target, kind))
    return FieldMapping(tuple(fields), only_mapped)


def _remove(data: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    current: Any = data
    for part in parents:
        if not isinstance(current, dict) or part not in current:
            return
        current = current[part]
    if isinstance(current, dict):
        current.pop(last, None)


def _put(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    current = data
    for part in parents:
        child = current.get(part)
        if not isinstance(child, dict):
            child = {}
            current[part] = child
        current = child
    current[last] = value
