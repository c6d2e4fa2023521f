"""Unmerge: a wrong merge is split, events re-attributed, traits re-derived, pair blocked."""

from __future__ import annotations

import httpx
import pytest

from tessera.auth.tokens import create_token
from tessera.processor import reset_derived_state, wait_until_caught_up
from tests.conftest import LiveTessera
from tests.identity.helpers import process, snapshot
from tests.ingest.helpers import post


def call(live: LiveTessera, method: str, path: str, token: str, **kwargs: object) -> httpx.Response:
    return httpx.request(
        method,
        f"{live.url}/api/v1/profiles/{path}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        **kwargs,
    )


@pytest.fixture
def admin(live: LiveTessera) -> str:
    with live.engine.begin() as conn:
        return create_token(conn, name="admin", role="admin")[0]


# A library kiosk's anonymous id was reused by two people with no user id: the shared
# identifier merged them. The rules cannot know; a person undoes it.
KIOSK = [
    {
        "type": "identify",
        "anonymousId": "kiosk",
        "traits": {"email": "ann@example.com", "name": "Ann"},
        "timestamp": "2026-11-01T10:00:00Z",
    },
    {
        "type": "track",
        "anonymousId": "kiosk",
        "event": "Book Borrowed",
        "timestamp": "2026-11-01T10:05:00Z",
    },
    {
        "type": "identify",
        "anonymousId": "bob-phone",
        "traits": {"email": "bob@example.com", "name": "Bob"},
        "timestamp": "2026-11-02T09:00:00Z",
    },
    {
        "type": "identify",
        "anonymousId": "kiosk",
        "context": {"traits": {"email": "bob@example.com"}},
        "timestamp": "2026-11-02T09:30:00Z",
        "messageId": "the-bad-link",
    },
    {
        "type": "track",
        "anonymousId": "bob-phone",
        "event": "Book Returned",
        "timestamp": "2026-11-02T10:00:00Z",
    },
]


def test_unmerge_splits_reattributes_and_blocks(live: LiveTessera, admin: str) -> None:
    assert post(live, "/v1/batch", {"batch": KIOSK}).status_code == 200
    wait_until_caught_up(live.engine)
    merged = call(live, "GET", "email:ann@example.com", admin).json()
    assert call(live, "GET", "email:bob@example.com", admin).json()["id"] == merged["id"]
    [merge] = call(live, "GET", "email:ann@example.com/merges", admin).json()
    assert merge["message_id"] == "the-bad-link"

    response = call(
        live, "POST", "email:ann@example.com/unmerge", admin, json={"merge_id": merge["id"]}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["restored_id"] == merge["absorbed_id"]
    assert result["blocked_identifiers"] == merge["identifiers"]

    ann = call(live, "GET", "email:ann@example.com", admin).json()
    bob = call(live, "GET", "email:bob@example.com", admin).json()
    assert ann["id"] != bob["id"]
    assert ann["traits"]["name"] == "Ann" and bob["traits"]["name"] == "Bob"
    assert ann["event_count"] + bob["event_count"] == len(KIOSK)
    assert [
        e["event"]
        for e in call(live, "GET", f"{bob['id']}/events", admin, params={"type": "track"}).json()[
            "items"
        ]
    ] == ["Book Returned"]
    assert call(live, "GET", f"{ann['id']}/merges", admin).json() == []

    # A rebuild from the log keeps the block, so it reaches the same split.
    before = snapshot(live.engine)
    with live.engine.begin() as conn:
        reset_derived_state(conn)
    process(live.engine)
    wait_until_caught_up(live.engine)
    assert snapshot(live.engine) == before

    # The same link arriving again does not merge them again.
    again = {**KIOSK[3], "messageId": "the-bad-link-again", "timestamp": "2026-11-03T09:30:00Z"}
    assert post(live, "/v1/batch", {"batch": [again]}).status_code == 200
    wait_until_caught_up(live.engine)
    assert (
        call(live, "GET", "email:ann@example.com", admin).json()["id"]
        != call(live, "GET", "email:bob@example.com", admin).json()["id"]
    )


def test_unmerge_needs_a_merge_of_this_profile_and_write_permission(
    live: LiveTessera, admin: str
) -> None:
    assert post(live, "/v1/batch", {"batch": KIOSK}).status_code == 200
    wait_until_caught_up(live.engine)
    missing = call(live, "POST", "email:ann@example.com/unmerge", admin, json={"merge_id": 999})
    assert missing.status_code == 404
    assert "has no merge 999" in missing.json()["message"]
    malformed = call(live, "POST", "email:ann@example.com/unmerge", admin, json={"merge_id": "x"})
    assert malformed.status_code == 422
    with live.engine.begin() as conn:
        analyst = create_token(conn, name="analyst", role="analyst")[0]
    refused = call(live, "POST", "email:ann@example.com/unmerge", analyst, json={"merge_id": 1})
    assert refused.status_code == 403
