"""The profile API through a live server: lookups, timeline, lineage, auth, latency."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tessera.auth.tokens import create_token
from tessera.processor import wait_until_caught_up
from tests.conftest import LiveTessera
from tests.ingest.helpers import post


@pytest.fixture
def token(live: LiveTessera) -> Iterator[str]:
    with live.engine.begin() as conn:
        token, _ = create_token(conn, name="tests", role="admin")
    yield token


def get(live: LiveTessera, path: str, token: str | None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(
        f"{live.url}/api/v1/profiles/{path}", headers=headers, params=params, timeout=30
    )


JOURNEY = [
    {"type": "page", "anonymousId": "anon-1", "name": "Home", "timestamp": "2026-11-01T10:00:00Z"},
    {
        "type": "track",
        "anonymousId": "anon-1",
        "event": "Product Viewed",
        "properties": {"sku": "S1"},
        "timestamp": "2026-11-01T10:01:00Z",
    },
    {
        "type": "identify",
        "anonymousId": "anon-1",
        "userId": "u1",
        "traits": {"email": "Jo@Example.com", "name": "Jo"},
        "timestamp": "2026-11-01T10:02:00Z",
    },
    {
        "type": "track",
        "userId": "u1",
        "event": "Order Completed",
        "properties": {"total": 40},
        "timestamp": "2026-11-01T10:03:00Z",
    },
    {
        "type": "group",
        "userId": "u1",
        "groupId": "acme",
        "traits": {"plan": "b2b"},
        "timestamp": "2026-11-01T10:04:00Z",
    },
]


def send_journey(live: LiveTessera) -> None:
    response = post(live, "/v1/batch", {"batch": JOURNEY})
    assert response.status_code == 200, response.text
    wait_until_caught_up(live.engine)


def test_profile_by_every_kind_of_reference(live: LiveTessera, token: str) -> None:
    send_journey(live)
    by_email = get(live, "email:JO@example.com", token)
    assert by_email.status_code == 200, by_email.text
    body = by_email.json()
    for field in (
        "id",
        "traits",
        "identities",
        "computed_traits",
        "audiences",
        "consent",
        "created_at",
        "updated_at",
    ):
        assert field in body
    assert body["traits"] == {"email": "Jo@Example.com", "name": "Jo"}
    assert {"type": "user_id", "value": "u1"} in body["identities"]
    assert body["accounts"][0]["group_id"] == "acme"
    assert body["provenance"]["name"]["source"] == live.source.name
    for ref in ("user_id:u1", "anonymous_id:anon-1", body["id"]):
        assert get(live, ref, token).json()["id"] == body["id"]


@pytest.mark.parametrize(
    ("ref", "status", "fragment"),
    [
        ("email:nobody@example.com", 404, "no profile has email"),
        ("prf_999999", 404, "no profile has id"),
        ("not-a-ref", 400, "neither a profile id"),
        ("Bad Type:x", 400, "not an identifier type"),
        ("email:not-an-email", 400, "not a usable email"),
        ("user_id:null", 400, "not a usable user_id"),
        ("group_id:acme", 400, "names an account"),
    ],
)
def test_unknown_and_malformed_references(
    live: LiveTessera, token: str, ref: str, status: int, fragment: str
) -> None:
    response = get(live, ref, token)
    assert response.status_code == status
    assert fragment in response.json()["message"]


def test_timeline_newest_first_with_filters_and_cursor(live: LiveTessera, token: str) -> None:
    send_journey(live)
    page = get(live, "user_id:u1/events", token, limit=2).json()
    assert [item["type"] for item in page["items"]] == ["group", "track"]
    assert page["items"][1]["event"] == "Order Completed"
    assert page["items"][1]["properties"] == {"total": 40}
    assert page["items"][1]["source"] == live.source.name
    rest = get(live, "user_id:u1/events", token, limit=10, cursor=page["next_cursor"]).json()
    assert [item["type"] for item in rest["items"]] == ["identify", "track", "page"]
    assert rest["next_cursor"] is None
    tracks = get(live, "user_id:u1/events", token, type="track", name="Product Viewed").json()
    assert [item["event"] for item in tracks["items"]] == ["Product Viewed"]
    bad = get(live, "user_id:u1/events", token, cursor="garbage!")
    assert bad.status_code == 400


def test_identities_and_merges_endpoints(live: LiveTessera, token: str) -> None:
    batch = [
        {"type": "page", "anonymousId": "laptop"},
        {"type": "page", "anonymousId": "phone"},
        {"type": "identify", "anonymousId": "laptop", "userId": "u9"},
        {"type": "identify", "anonymousId": "phone", "userId": "u9", "messageId": "phone-login"},
    ]
    assert post(live, "/v1/batch", {"batch": batch}).status_code == 200
    wait_until_caught_up(live.engine)
    identities = get(live, "user_id:u9/identities", token).json()
    assert [(i["type"], i["value"]) for i in identities] == [
        ("anonymous_id", "laptop"),
        ("anonymous_id", "phone"),
        ("user_id", "u9"),
    ]
    [merge] = get(live, "user_id:u9/merges", token).json()
    assert merge["rule"] == "identifier"
    assert merge["identifiers"] == ["anonymous_id:phone"]
    assert merge["message_id"] == "phone-login"
    assert get(live, f"{merge['absorbed_id']}", token).json()["id"] == merge["survivor_id"]


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (None, "send an API token"),
        ("Basic abc", "Bearer"),
        ("Bearer tsk_unknown", "unknown or revoked"),
    ],
)
def test_requests_without_a_valid_token_get_401(
    live: LiveTessera, header: str | None, fragment: str
) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx.get(f"{live.url}/api/v1/profiles/user_id:u1", headers=headers)
    assert response.status_code == 401
    assert fragment in response.json()["message"]


def test_a_write_key_is_not_a_token(live: LiveTessera) -> None:
    response = get(live, "user_id:u1", live.write_key)
    assert response.status_code == 401
    assert "write key" in response.json()["message"]


def test_a_revoked_token_is_refused(live: LiveTessera, token: str) -> None:
    with live.engine.begin() as conn:
        temp, principal = create_token(conn, name="temp", role="analyst")
    assert get(live, "user_id:u1", temp).status_code == 404
    revoked = httpx.delete(
        f"{live.url}/api/v1/tokens/{principal.token_id}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert revoked.status_code == 204
    assert get(live, "user_id:u1", temp).status_code == 401


def test_a_tracked_event_shows_in_the_profile_within_a_second(
    live: LiveTessera, token: str
) -> None:
    started = time.monotonic()
    assert (
        post(live, "/v1/identify", {"userId": "fast", "traits": {"plan": "pro"}}).status_code == 200
    )
    while get(live, "user_id:fast", token).status_code != 200:
        assert time.monotonic() - started < 5, "the profile did not appear"
        time.sleep(0.01)
    # Seconds are generous here; benchmarks/identity.py measures the real latency.
    assert get(live, "user_id:fast", token).json()["traits"] == {"plan": "pro"}


def test_readyz_reports_processor_lag(live: LiveTessera) -> None:
    send_journey(live)
    body = httpx.get(f"{live.url}/readyz").json()
    assert body["processor"]["running"] is True
    assert body["processor"]["lag_events"] == 0
    assert body["processor"]["position"] == body["event_log"]["head_seq"]


def test_metrics_expose_lag_and_ingest_counters(live: LiveTessera) -> None:
    send_journey(live)
    response = httpx.get(f"{live.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = {
        line.split()[0]: float(line.split()[1])
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["tessera_processor_lag_events"] == 0
    assert values["tessera_processor_position"] == len(JOURNEY)
    assert values["tessera_ingest_committed_events_total"] == len(JOURNEY)
    assert "# TYPE tessera_processor_oldest_waiting_seconds gauge" in response.text


def test_identifiers_dropped_by_the_rules_are_counted(live: LiveTessera) -> None:
    shared = {"anonymousId": "shared-tablet"}
    batch = [
        {"type": "identify", "userId": "mum", **shared},
        {"type": "identify", "userId": "son", **shared},
    ]
    assert post(live, "/v1/batch", {"batch": batch}).status_code == 200
    wait_until_caught_up(live.engine)
    text = httpx.get(f"{live.url}/metrics").text
    reason = "linking would exceed an identifier limit"
    assert f'tessera_identity_dropped_identifiers_total{{reason="{reason}"}} 1' in text
