"""Identifier extraction and normalisation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.identity.config import IdentityRules
from tessera.identity.extract import Identifier, extract_identifiers, normalise

RULES = IdentityRules(default_region="GB")


def idents(payload: dict[str, Any], rules: IdentityRules = RULES) -> list[str]:
    return [str(ident) for ident in extract_identifiers(payload, rules)]


def test_all_sources_of_identifiers_in_priority_order() -> None:
    payload = {
        "type": "identify",
        "userId": "u1",
        "anonymousId": "a1",
        "traits": {"email": "  Jo.Smith@Example.COM ", "phone": "020 7946 0958"},
        "context": {
            "traits": {"email": "jo@work.example"},
            "device": {"id": "dev-1", "advertisingId": "ad-1"},
            "externalIds": [
                {"type": "crm_id", "id": "C-9", "collection": "users"},
                {"type": "Bad Type!", "id": "x"},
            ],
        },
    }
    assert idents(payload) == [
        "user_id:u1",
        "email:jo.smith@example.com",
        "email:jo@work.example",
        "phone:+442079460958",
        "anonymous_id:a1",
        "device_id:dev-1",
        "advertising_id:ad-1",
        "crm_id:C-9",
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+44 20 7946 0958", "+442079460958"),
        ("020 7946 0958", "+442079460958"),
        ("(212) 555-0143", None),  # a US number without country code is not a GB number
        ("+1 (212) 555-0143", "+12125550143"),
        ("not a phone", None),
        ("12", None),
    ],
)
def test_phones_become_e164_under_the_default_region(raw: str, expected: str | None) -> None:
    assert normalise("phone", raw, RULES) == expected


def test_us_region_reads_us_national_numbers() -> None:
    assert (
        normalise("phone", "(212) 555-0143", IdentityRules(default_region="US")) == "+12125550143"
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "  ",
        "null",
        "NULL",
        "undefined",
        "anonymous",
        "0",
        "-1",
        "000-000",
        "0000",
        "test@example.com",
        " Test@Example.com ",
    ],
)
def test_blocked_values_never_become_identifiers(value: str) -> None:
    payload = {
        "type": "identify",
        "userId": value,
        "anonymousId": value,
        "traits": {"email": value},
    }
    assert idents(payload) == []


def test_invalid_emails_and_odd_types_are_ignored() -> None:
    payload = {
        "type": "identify",
        "userId": 42,
        "anonymousId": True,
        "traits": {"email": "not-an-email", "phone": ["+44"]},
        "context": {"device": "laptop", "externalIds": "nope"},
    }
    assert idents(payload) == ["user_id:42"]


def test_traits_of_track_calls_are_not_identity_traits() -> None:
    # Only identify's `traits` and any call's `context.traits` describe the person.
    payload = {
        "type": "group",
        "userId": "u",
        "groupId": "g",
        "traits": {"email": "boss@acme.example"},
    }
    assert idents(payload) == ["user_id:u"]


def test_configured_blocked_values_replace_the_defaults() -> None:
    rules = IdentityRules(blocked_values=frozenset({"guest"}))
    assert idents({"userId": "guest", "anonymousId": "null"}, rules) == ["anonymous_id:null"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=15,
)


@given(
    payload=st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["identify", "track", "alias", "group"]),
            "userId": json_values,
            "anonymousId": json_values,
            "traits": json_values,
            "context": st.fixed_dictionaries(
                {},
                optional={"traits": json_values, "device": json_values, "externalIds": json_values},
            ),
        },
    )
)
@settings(max_examples=300, deadline=None)
def test_extraction_never_fails_and_yields_clean_identifiers(payload: dict[str, Any]) -> None:
    found = extract_identifiers(payload, RULES)
    assert len(found) == len(set(found))
    for ident in found:
        assert isinstance(ident, Identifier)
        assert ident.value and len(ident.value) <= 255 and "\x00" not in ident.value
        assert not RULES.is_blocked(ident.value)
