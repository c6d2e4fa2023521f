"""Subscriptions, field mapping, retry timing and the HTTP outcome rules, without a server:
parsers refuse anything malformed with the JSON path, never with another exception."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.activation.delivery import backoff_seconds
from tessera.activation.http import check, retry_after
from tessera.activation.mapping import hash_value, parse_mapping
from tessera.activation.plugins import DeliveryFailed
from tessera.activation.segment import to_segment, trait_name
from tessera.activation.subscriptions import parse_subscriptions
from tessera.errors import InvalidDefinition

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
subscription_like = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["events", "audience", "traits", "other"])},
        optional={
            "event_types": json_values,
            "event_names": json_values,
            "where": json_values,
            "audiences": json_values,
            "changes": json_values,
            "traits": json_values,
        },
    ),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(doc=st.one_of(json_values, subscription_like))
def test_subscriptions_parse_or_name_the_problem(doc: Any) -> None:
    try:
        parse_subscriptions(doc, known_audiences={"aud_1"})
    except InvalidDefinition as exc:
        assert exc.path.startswith("$")


@settings(max_examples=300, deadline=None)
@given(
    doc=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {
                "fields": st.lists(
                    st.dictionaries(
                        st.sampled_from(["source", "target", "hash", "x"]), json_values
                    ),
                    max_size=3,
                )
            },
            optional={"only_mapped": json_values},
        ),
    )
)
def test_mappings_parse_or_name_the_problem(doc: Any) -> None:
    try:
        mapping = parse_mapping(doc)
    except InvalidDefinition as exc:
        assert exc.path.startswith("$")
        return
    mapping.apply({"messageId": "m", "kind": "event", "profile": {"traits": {}}}, phone_region="US")


def test_event_subscriptions_match_type_name_and_properties() -> None:
    subs = parse_subscriptions(
        [
            {
                "type": "events",
                "event_names": ["Order Completed"],
                "where": {"property": "total", "op": "gt", "value": 50},
            }
        ],
        known_audiences=set(),
    )
    order = {"type": "track", "event": "Order Completed", "properties": {"total": 70}}
    assert subs.wants_event(order)
    assert not subs.wants_event({**order, "properties": {"total": 5}})
    assert not subs.wants_event({**order, "event": "Cart Viewed"})
    assert not subs.wants_event({"type": "page", "name": "Order Completed"})
    pages = parse_subscriptions(
        [{"type": "events", "event_types": ["page"]}], known_audiences=set()
    )
    assert pages.wants_event({"type": "page", "name": "Home"})
    assert not pages.wants_change("aud_1", "entered")


def test_subscription_errors_name_the_path() -> None:
    with pytest.raises(InvalidDefinition, match=r"\$\[0\]\.event_types\[0\]"):
        parse_subscriptions([{"type": "events", "event_types": ["click"]}], known_audiences=set())
    with pytest.raises(InvalidDefinition, match="aud_2"):
        parse_subscriptions(
            [{"type": "audience", "audiences": ["aud_2"]}], known_audiences={"aud_1"}
        )
    with pytest.raises(InvalidDefinition, match="unexpected key"):
        parse_subscriptions([{"type": "traits", "trait": ["x"]}], known_audiences=set())


def test_trait_subscriptions_any_or_named() -> None:
    named = parse_subscriptions([{"type": "traits", "traits": ["plan"]}], known_audiences=set())
    assert named.wanted_traits({"plan": "pro", "email": "x"}) == {"plan": "pro"}
    anything = parse_subscriptions(
        [{"type": "traits", "traits": ["plan"]}, {"type": "traits"}], known_audiences=set()
    )
    assert anything.wanted_traits({"plan": "pro", "email": "x"}) == {"plan": "pro", "email": "x"}
    none = parse_subscriptions([], known_audiences=set())
    assert none.wanted_traits({"plan": "pro"}) == {}


def test_hashing_normalises_emails_and_phones_and_drops_the_clear_value() -> None:
    expected = hashlib.sha256(b"jo@example.com").hexdigest()
    assert hash_value(" Jo@Example.COM ", "email", phone_region="US") == expected
    assert (
        hash_value("+44 20 7946 0958", "phone", phone_region="US")
        == hashlib.sha256(b"+442079460958").hexdigest()
    )
    assert hash_value("not a phone", "phone", phone_region="US") is None
    mapping = parse_mapping(
        {"fields": [{"source": "profile.traits.email", "target": "hashed.email", "hash": "email"}]}
    )
    out = mapping.apply(
        {"messageId": "m", "profile": {"traits": {"email": "jo@example.com", "plan": "pro"}}},
        phone_region="US",
    )
    assert out["hashed"] == {"email": expected}
    assert out["profile"]["traits"] == {"plan": "pro"}
    only = parse_mapping(
        {"fields": [{"source": "profile.traits.plan", "target": "plan"}], "only_mapped": True}
    )
    assert only.apply(
        {"messageId": "m", "kind": "event", "profile": {"traits": {"plan": "pro"}}},
        phone_region="US",
    ) == {"messageId": "m", "kind": "event", "plan": "pro"}


@given(attempts=st.integers(min_value=0, max_value=200))
def test_backoff_doubles_with_jitter_and_stays_under_the_cap(attempts: int) -> None:
    delay = backoff_seconds(attempts, base=1.0, cap=300.0)
    full = min(300.0, 2.0**attempts)
    assert full * 0.5 <= delay <= full


def _response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers, text="nope")


def test_http_outcomes() -> None:
    check(_response(204))
    with pytest.raises(DeliveryFailed) as throttled:
        check(_response(429, {"Retry-After": "7"}))
    assert throttled.value.throttled and throttled.value.retry_after == 7.0
    for status in (500, 503, 408):
        with pytest.raises(DeliveryFailed) as retried:
            check(_response(status))
        assert not retried.value.permanent
    for status in (400, 401, 404, 413):
        with pytest.raises(DeliveryFailed) as refused:
            check(_response(status))
        assert refused.value.permanent and refused.value.status == status
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after("soon") is None


def test_segment_calls_for_each_kind() -> None:
    profile = {"id": "prf_1", "identities": {"user_id": ["u1"]}, "traits": {}}
    event = {"type": "track", "event": "X", "userId": "u1", "receivedAt": "r", "writeKey": "k"}
    [call] = to_segment({"messageId": "m1", "kind": "event", "profile": profile, "event": event})
    assert call == {"type": "track", "event": "X", "userId": "u1", "messageId": "m1"}
    entered = to_segment(
        {
            "messageId": "aud-1",
            "kind": "audience.entered",
            "timestamp": "t",
            "profile": profile,
            "audience": {"id": "aud_1", "name": "VIP customers (EU)"},
        }
    )
    assert [c["type"] for c in entered] == ["track", "identify"]
    assert entered[0]["event"] == "Audience Entered" and entered[0]["userId"] == "u1"
    assert entered[1]["traits"] == {"vip_customers_eu": True}
    assert trait_name("!!!") == "audience"
    anonymous = {"id": "prf_2", "identities": {}, "traits": {}}
    [identify] = to_segment(
        {
            "messageId": "t-1",
            "kind": "traits.changed",
            "profile": anonymous,
            "traits": {"plan": "pro"},
        }
    )
    assert identify["anonymousId"] == "prf_2" and identify["traits"] == {"plan": "pro"}
