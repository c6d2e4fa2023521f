"""Masking of personal data for roles without `pii:read` (analysts): they see that a value
exists and its shape, never the value."""

from __future__ import annotations

from typing import Any

PII_IDENTITY_TYPES = frozenset({"email", "phone"})
PII_TRAITS = frozenset(
    {
        "email",
        "phone",
        "name",
        "first_name",
        "last_name",
        "firstname",
        "lastname",
        "username",
        "address",
        "street",
        "postal_code",
        "postalcode",
        "zip",
        "birthday",
        "birthdate",
        "ip",
        "avatar",
    }
)
MASK = "***"


def mask_value(value: Any) -> Any:
    if isinstance(value, str) and value:
        local, at, _domain = value.partition("@")
        return f"{local[:1]}{MASK}@{MASK}" if at else f"{value[:1]}{MASK}"
    if isinstance(value, dict):
        return {key: mask_value(item) for key, item in value.items()}
    return MASK if value is not None else None


def mask_traits(traits: dict[str, Any] | None) -> dict[str, Any] | None:
    if traits is None:
        return None
    return {
        name: mask_value(value) if name.lower().replace("-", "_") in PII_TRAITS else value
        for name, value in traits.items()
    }


def mask_profile(body: dict[str, Any]) -> dict[str, Any]:
    traits, identities = mask_traits(body["traits"]), mask_identities(body["identities"])
    return {**body, "traits": traits, "identities": identities}


def mask_summary(item: dict[str, Any]) -> dict[str, Any]:
    """A search result (`search.search_profiles`) with its name, email and phone masked."""
    return {**item, **{key: mask_value(item[key]) for key in ("name", "email", "phone")}}


def mask_identities(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**item, "value": mask_value(item["value"])} if item["type"] in PII_IDENTITY_TYPES else item
        for item in items
    ]


def mask_event(item: dict[str, Any]) -> dict[str, Any]:
    context = item.get("context")
    if isinstance(context, dict):
        context = {**context}
        if isinstance(context.get("traits"), dict):
            context["traits"] = mask_traits(context["traits"])
        if "ip" in context:
            context["ip"] = mask_value(context["ip"])
    traits = item.get("traits")
    return {
        **item,
        "traits": mask_traits(traits) if isinstance(traits, dict) else traits,
        "context": context,
    }


def mask_merge(merge: dict[str, Any]) -> dict[str, Any]:
    """A merge's linking identifiers ("type:value") with personal values hidden."""
    identifiers = []
    for item in merge["identifiers"]:
        kind, _, value = item.partition(":")
        identifiers.append(f"{kind}:{MASK}" if kind in PII_IDENTITY_TYPES else f"{kind}:{value}")
    return {**merge, "identifiers": identifiers}
