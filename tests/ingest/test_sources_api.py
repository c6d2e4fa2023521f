"""Sources through the management API: the write key shown once, disable and enable, a new
key, and the refused messages each source keeps with their reasons."""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import sqlalchemy as sa

from tessera.auth.tokens import create_token
from tessera.ingest.models import sources as sources_table
from tests.conftest import LiveTessera
from tests.ingest.helpers import post, stored

T = TypeVar("T")


@pytest.fixture
def admin(live: LiveTessera) -> str:
    with live.engine.begin() as conn:
        return create_token(conn, name="root", role="admin")[0]


def api(live: LiveTessera, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method,
        f"{live.url}/api/v1/{path}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        **kwargs,
    )


def eventually(check: Callable[[], T | None], what: str, timeout: float = 15) -> T:
    """`check()` once it returns something: refusals reach the store within a flush."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        time.sleep(0.05)


def refusals(live: LiveTessera, token: str, source_id: int, **params: Any) -> list[Any]:
    response = api(live, "GET", f"sources/{source_id}/refusals", token, params=params)
    assert response.status_code == 200, response.text
    return list(response.json())


def test_a_created_source_shows_its_key_once(live: LiveTessera, admin: str) -> None:
    created = api(live, "POST", "sources", admin, json={"name": "web shop"})
    assert created.status_code == 201, created.text
    body = created.json()
    key = body["write_key"]
    assert len(key) == 32 and body["write_key_prefix"] == key[:6]
    assert body["enabled"] is True and body["events_today"] == 0
    assert key in body["snippets"]["curl"] and key in body["snippets"]["python"]
    assert live.url in body["snippets"]["node"]

    # The key works at once, and is never shown again: not listed, not fetched, not stored.
    assert post(live, "/v1/track", {"userId": "u", "event": "E"}, auth=(key, "")).status_code == 200
    listed = api(live, "GET", "sources", admin)
    one = api(live, "GET", f"sources/{body['id']}", admin)
    assert key not in listed.text and key not in one.text
    assert {item["name"] for item in listed.json()} == {live.source.name, "web shop"}
    with live.engine.connect() as conn:
        row = conn.execute(sa.select(sources_table).where(sources_table.c.id == body["id"])).one()
    assert key not in str(tuple(row))

    def counted() -> dict[str, Any] | None:
        source = dict(api(live, "GET", f"sources/{body['id']}", admin).json())
        return source if source["events_today"] == 1 else None

    assert eventually(counted, "today's count")["last_event_at"] is not None
    audit = api(live, "GET", "audit", admin, params={"action": "source.create"}).json()["items"]
    assert [entry["target"] for entry in audit] == ["source:web shop"]
    assert key not in str(audit)


def test_a_taken_name_and_a_blank_one_are_refused(live: LiveTessera, admin: str) -> None:
    taken = api(live, "POST", "sources", admin, json={"name": live.source.name})
    assert taken.status_code == 409 and "already exists" in taken.json()["message"]
    blank = api(live, "POST", "sources", admin, json={"name": "   "})
    assert blank.status_code == 400 and "1 to 200 characters" in blank.json()["message"]
    assert api(live, "GET", "sources/999999", admin).status_code == 404


def test_a_disabled_source_is_refused_and_the_refusal_kept(live: LiveTessera, admin: str) -> None:
    source_id = live.source.id
    assert post(live, "/v1/track", {"userId": "u", "event": "Before"}).status_code == 200
    patched = api(live, "PATCH", f"sources/{source_id}", admin, json={"enabled": False})
    assert patched.status_code == 200 and patched.json()["enabled"] is False

    # No wait for the write key cache: this server forgot the source when it changed.
    refused = post(live, "/v1/track", {"userId": "u", "event": "After"})
    assert refused.status_code == 403
    assert refused.json()["message"] == f"the source {live.source.name!r} is disabled"
    assert [event["name"] for event in stored(live)] == ["Before"]

    [refusal] = eventually(lambda: refusals(live, admin, source_id), "the refusal")
    assert refusal["status"] == 403 and refusal["code"] == "forbidden"
    assert refusal["reason"] == refused.json()["message"]

    assert api(live, "PATCH", f"sources/{source_id}", admin, json={"enabled": True}).is_success
    assert post(live, "/v1/track", {"userId": "u", "event": "Again"}).status_code == 200
    actions = [
        entry["action"]
        for entry in api(live, "GET", "audit", admin, params={"actor": "token:root"}).json()[
            "items"
        ]
    ]
    assert actions == ["source.enable", "source.disable"]


def test_refused_messages_are_kept_with_their_reasons(live: LiveTessera, admin: str) -> None:
    limit = live.settings.ingest_max_message_bytes
    oversized = {"userId": "u", "event": "Big", "properties": {"blob": "x" * (limit + 10)}}
    too_large = post(live, "/v1/track", oversized)
    assert too_large.status_code == 413
    batch = {
        "writeKey": live.write_key,
        "batch": [
            {"type": "track", "userId": "u", "event": "Fine", "messageId": "ok-1"},
            {"type": "track", "userId": "u", "messageId": "no-name"},
            {"type": "track", "userId": "u", "event": "Big", "messageId": "big", **oversized},
        ],
    }
    partly = post(live, "/v1/batch", batch, auth=None)
    assert partly.status_code == 400 and partly.json()["accepted"] == 1
    not_json = post(
        live,
        "/v1/track",
        content=gzip.compress(b'{"userId": "u", "event": '),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert not_json.status_code == 400

    def four() -> list[Any] | None:
        rows = refusals(live, admin, live.source.id)
        return rows if len(rows) == 4 else None

    found = eventually(four, "four refusals")
    by_reason = {row["reason"]: row for row in found}
    assert by_reason[too_large.json()["message"]]["status"] == 413
    for rejected in partly.json()["rejected"]:
        row = by_reason[rejected["reason"]]
        assert (row["status"], row["message_id"]) == (400, rejected["messageId"])
        # The message itself (the big one cut short), without the write key it came with.
        assert f'"messageId":"{rejected["messageId"]}"' in row["excerpt"]
        assert len(row["excerpt"]) <= 1_000 and live.write_key not in row["excerpt"]
    assert orjson.loads(by_reason["track needs 'event', the name of the event"]["excerpt"]) == {
        "type": "track",
        "userId": "u",
        "messageId": "no-name",
    }
    unreadable = next(row for row in found if "not valid JSON" in row["reason"])
    assert unreadable["excerpt"] == '{"userId": "u", "event": '

    # Paging: what came after a refusal one has seen, oldest first.
    later = refusals(live, admin, live.source.id, after_id=found[1]["id"])
    assert [row["id"] for row in later] == [row["id"] for row in found[2:]]
    assert refusals(live, admin, live.source.id, limit=1) == found[-1:]


def test_unknown_write_keys_are_counted_not_kept(live: LiveTessera, admin: str) -> None:
    for _ in range(3):
        response = post(live, "/v1/track", {"userId": "u", "event": "E"}, auth=("nope" * 8, ""))
        assert response.status_code == 401
    metrics = httpx.get(f"{live.url}/metrics", timeout=30).text
    assert 'tessera_ingest_refused_unattributed_total{status="401"} 3' in metrics
    live.app.state.ingest_activity.flush()
    with live.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM source_refusals")).scalar_one() == 0


def test_a_new_write_key_replaces_the_old(live: LiveTessera, admin: str) -> None:
    rotated = api(live, "POST", f"sources/{live.source.id}/write-key", admin)
    assert rotated.status_code == 200, rotated.text
    key = rotated.json()["write_key"]
    assert key != live.write_key and key in rotated.json()["snippets"]["curl"]
    old = post(live, "/v1/track", {"userId": "u", "event": "E"})
    assert old.status_code == 401
    assert post(live, "/v1/track", {"userId": "u", "event": "E"}, auth=(key, "")).status_code == 200
    assert api(live, "POST", "sources/999999/write-key", admin).status_code == 404


def test_roles_without_sources_manage_are_refused(live: LiveTessera) -> None:
    with live.engine.begin() as conn:
        marketer = create_token(conn, name="m", role="marketer")[0]
        analyst = create_token(conn, name="a", role="analyst")[0]
    assert api(live, "GET", "sources", marketer).status_code == 200
    refused = api(live, "POST", "sources", analyst, json={"name": "sneaky"})
    assert refused.status_code == 403
    assert api(live, "GET", f"sources/{live.source.id}/live", analyst).status_code == 403
