"""Pull a person's identifiers out of an event and normalise them for matching.

Identifiers come from the event's own fields (userId, anonymousId, previousId of an alias),
from `traits` and `context.traits` (email, phone), from the device in the context
(`context.device.id`, `context.device.advertisingId`) and from `context.externalIds`
(custom types such as `crm_id`). Emails are trimmed and lower-cased, phones become E.164;
blocked values and values that do not parse are left out, so they never match anything.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from tessera.identity.config import ACCOUNT_TYPES, TYPE_NAME, IdentityRules

MAX_VALUE_LENGTH = 255
# A tuple, not `str | int | float`: that builds a UnionType on every call (hot path).
_SCALARS = (str, int, float)


class Identifier(NamedTuple):
    """One normalised identifier. A NamedTuple: hashed and compared in C, on the hot path."""

    type: str
    value: str

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


@functools.lru_cache(maxsize=65_536)
def normalise_email(raw: str) -> str | None:
    candidate = raw.strip().lower()
    if not candidate or len(candidate) > MAX_VALUE_LENGTH:
        return None
    try:
        validate_email(candidate, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        return None
    return candidate


@functools.lru_cache(maxsize=65_536)
def normalise_phone(raw: str, region: str) -> str | None:
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, _SCALARS):
        return None
    text = (value if isinstance(value, str) else str(value)).strip()
    if not text or len(text) > MAX_VALUE_LENGTH or "\x00" in text:
        return None
    return text


def normalise(kind: str, raw: Any, rules: IdentityRules) -> str | None:
    """The matching form of `raw` as an identifier of `kind`, or None if it cannot match."""
    text = _text(raw)
    if text is None or rules.is_blocked(text):
        return None
    if kind == "email":
        email = normalise_email(text)
        return None if email is None or rules.is_blocked(email) else email
    if kind == "phone":
        return normalise_phone(text, rules.default_region)
    return text


def _traits(payload: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    if payload.get("type") in ("identify",) and isinstance(payload.get("traits"), dict):
        found.append(payload["traits"])
    context = payload.get("context")
    if isinstance(context, dict) and isinstance(context.get("traits"), dict):
        found.append(context["traits"])
    return found


_MEMO_SIZE = 100_000


def identifier(kind: str, raw: Any, rules: IdentityRules) -> Identifier | None:
    """`raw` as a normalised identifier of `kind`, or None if it cannot match; remembered
    per rules for text (emails and phones take a parser each time otherwise)."""
    if raw.__class__ is not str:
        value = normalise(kind, raw, rules)
        return None if value is None else Identifier(kind, value)
    memo = rules.normalised
    key = (kind, raw)
    try:
        return memo[key]
    except KeyError:
        pass
    value = normalise(kind, raw, rules)
    found = None if value is None else Identifier(kind, value)
    if len(memo) >= _MEMO_SIZE:
        memo.clear()
    memo[key] = found
    return found


def extract_identifiers(payload: dict[str, Any], rules: IdentityRules) -> list[Identifier]:
    """The person identifiers of one stored event, deduplicated, highest priority first."""
    found: set[Identifier] = set()

    def add(kind: str, raw: Any) -> None:
        if raw is None:
            return
        ident = identifier(kind, raw, rules)
        if ident is not None:
            found.add(ident)

    add("user_id", payload.get("userId"))
    add("anonymous_id", payload.get("anonymousId"))
    for traits in _traits(payload):
        add("email", traits.get("email"))
        add("phone", traits.get("phone"))
    context = payload.get("context")
    if isinstance(context, dict):
        device = context.get("device")
        if isinstance(device, dict):
            add("device_id", device.get("id"))
            add("advertising_id", device.get("advertisingId"))
        external = context.get("externalIds")
        if isinstance(external, list):
            for item in external[:50]:
                if isinstance(item, dict) and isinstance(item.get("type"), str):
                    kind = item["type"].strip().lower()
                    if TYPE_NAME.match(kind) and kind not in ACCOUNT_TYPES:
                        add(kind, item.get("id"))
    return sorted(found, key=lambda ident: (rules.rank(ident.type), ident.type, ident.value))


def alias_previous(payload: dict[str, Any], rules: IdentityRules) -> str | None:
    """The normalised `previousId` of an alias call."""
    if payload.get("type") != "alias":
        return None
    return normalise("user_id", payload.get("previousId"), rules)


def group_id(payload: dict[str, Any], rules: IdentityRules) -> str | None:
    if payload.get("type") != "group":
        return None
    return normalise("group_id", payload.get("groupId"), rules)
