"""The Segment HTTP Tracking API as a client sees it, on both store backends."""

from __future__ import annotations

import base64
import gzip
from datetime import datetime

import httpx
import pytest

from tessera.ingest.api import ROUTES, SHORT_ROUTES
from tessera.ingest.sources import set_source_enabled
from tests.conftest import LiveTessera
from tests.ingest.helpers import post, stored

MESSAGES = {
    "identify": {"userId": "u1", "traits": {"email": "jo@example.com"}},
    "track": {"userId": "u1", "event": "Order Completed", "properties": {"total": 12.5}},
    "page": {"anonymousId": "a1", "name": "Home", "properties": {"path": "/"}},
    "screen": {"userId": "u1", "name": "Settings"},
    "group": {"userId": "u1", "groupId": "acme", "traits": {"plan": "pro"}},
    "alias": {"userId": "u1", "previousId": "a1"},
}


@pytest.mark.parametrize(
    "path",
    [p for p, kind in ROUTES.items() if kind]
    + [s for s, t in SHORT_ROUTES.items() if t != "batch"],
)
def test_every_single_call_path_stores_its_type(live: LiveTessera, path: str) -> None:
    kind = ROUTES.get(path) or SHORT_ROUTES[path]
    response = post(live, f"/v1/{path}", {**MESSAGES[kind], "messageId": f"m-{path}"})
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}
    [row] = stored(live)
    assert row["type"] == kind
    assert row["message_id"] == f"m-{path}"
    assert row["payload"]["type"] == kind


@pytest.mark.parametrize("path", ["batch", "import", "b"])
def test_batch_paths_store_every_message_in_order(live: LiveTessera, path: str) -> None:
    batch = [{**body, "type": kind, "messageId": f"m-{kind}"} for kind, body in MESSAGES.items()]
    response = post(live, f"/v1/{path}", {"batch": batch})
    assert response.status_code == 200, response.text
    assert [(r["type"], r["message_id"]) for r in stored(live)] == [
        (kind, f"m-{kind}") for kind in MESSAGES
    ]


def test_payload_keeps_full_detail(live: LiveTessera) -> None:
    message = {
        "userId": 42,
        "event": "Order Completed",
        "properties": {"total": 12.5, "items": [{"sku": "a", "qty": 2}], "note": "ünïcødé ✓"},
        "context": {"ip": "1.2.3.4", "traits": {"email": "jo@example.com"}},
        "integrations": {"All": True},
        "messageId": "m1",
    }
    assert post(live, "/v1/track", message).status_code == 200
    [row] = stored(live)
    payload = row["payload"]
    assert payload["userId"] == "42" and row["user_id"] == "42"
    assert payload["properties"] == message["properties"]
    assert payload["context"] == message["context"]
    assert payload["integrations"] == {"All": True}
    assert "writeKey" not in payload


def test_write_key_in_body_is_accepted_and_not_stored(live: LiveTessera) -> None:
    response = post(
        live, "/v1/track", {"writeKey": live.write_key, "userId": "u", "event": "E"}, auth=None
    )
    assert response.status_code == 200, response.text
    batch = {"writeKey": live.write_key, "batch": [{"type": "track", "userId": "u", "event": "F"}]}
    assert post(live, "/v1/batch", batch, auth=None).status_code == 200
    assert [r["name"] for r in stored(live)] == ["E", "F"]
    assert all("writeKey" not in r["payload"] for r in stored(live))


@pytest.mark.parametrize(
    ("auth", "headers", "status", "fragment"),
    [
        (None, {}, 401, "no write key"),
        (("not-a-key", ""), {}, 401, "is not known"),
        (None, {"Authorization": "Bearer abc"}, 401, "Basic auth"),
        (None, {"Authorization": "Basic %%%"}, 401, "not valid Basic auth"),
        (None, {"Authorization": "Basic " + base64.b64encode(b":").decode()}, 401, "empty"),
    ],
)
def test_missing_or_bad_write_key_is_401_and_nothing_is_stored(
    live: LiveTessera,
    auth: tuple[str, str] | None,
    headers: dict[str, str],
    status: int,
    fragment: str,
) -> None:
    response = post(live, "/v1/track", {"userId": "u", "event": "E"}, auth=auth, headers=headers)
    assert response.status_code == status
    assert fragment in response.json()["message"]
    # Segment's Python SDKs read `code`; without it they retry a permanent error.
    assert response.json()["code"] == "unauthorized"
    assert stored(live) == []


def test_disabled_source_is_refused(live: LiveTessera) -> None:
    with live.engine.begin() as conn:
        set_source_enabled(conn, name=live.source.name, enabled=False)
    # A fresh server, so that the write key cache does not remember the enabled source.
    from tessera.app import create_app
    from tessera.local_server import serve_in_thread

    with serve_in_thread(create_app(live.settings, engine=live.engine)) as url:
        response = httpx.post(
            f"{url}/v1/track", auth=(live.write_key, ""), json={"userId": "u", "event": "E"}
        )
    assert response.status_code == 403
    assert "disabled" in response.json()["message"]
    assert stored(live) == []


def test_text_plain_and_gzip_bodies_are_read(live: LiveTessera) -> None:
    body = b'{"userId": "u", "event": "Plain", "messageId": "p"}'
    assert (
        post(live, "/v1/track", content=body, headers={"Content-Type": "text/plain"}).status_code
        == 200
    )
    zipped = gzip.compress(b'{"batch": [{"type": "track", "userId": "u", "event": "Zipped"}]}')
    response = post(
        live,
        "/v1/batch",
        content=zipped,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 200, response.text
    assert [r["name"] for r in stored(live)] == ["Plain", "Zipped"]


@pytest.mark.parametrize(
    ("headers", "status", "fragment"),
    [
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "Content-Type"),
        ({"Content-Type": "application/json", "Content-Encoding": "br"}, 415, "Content-Encoding"),
        ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, 400, "gzip"),
    ],
)
def test_unreadable_bodies_are_refused_by_name(
    live: LiveTessera, headers: dict[str, str], status: int, fragment: str
) -> None:
    response = post(live, "/v1/track", content=b'{"userId": "u", "event": "E"}', headers=headers)
    assert response.status_code == status
    assert fragment in response.json()["message"]


def test_truncated_gzip_is_400(live: LiveTessera) -> None:
    zipped = gzip.compress(b'{"userId": "u", "event": "E"}' * 20)[:-12]
    response = post(live, "/v1/track", content=zipped, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 400
    assert "truncated" in response.json()["message"]


def test_cors_preflight_and_response_headers(live: LiveTessera) -> None:
    preflight = httpx.options(
        f"{live.url}/v1/t",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    response = post(
        live,
        "/v1/t",
        content=b'{"userId": "u", "event": "E"}',
        headers={"Origin": "https://shop.example", "Content-Type": "text/plain"},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    # The management side is not opened to other origins.
    health = httpx.get(f"{live.url}/healthz", headers={"Origin": "https://shop.example"})
    assert "access-control-allow-origin" not in health.headers


def test_message_without_message_id_gets_one(live: LiveTessera) -> None:
    assert post(live, "/v1/track", {"userId": "u", "event": "E"}).status_code == 200
    [row] = stored(live)
    assert row["message_id"] == row["payload"]["messageId"]
    assert len(row["message_id"]) == 36


def test_batch_context_and_integrations_are_merged_into_items(live: LiveTessera) -> None:
    body = {
        "context": {"library": {"name": "x"}, "ip": "9.9.9.9"},
        "integrations": {"All": False},
        "batch": [
            {"type": "track", "userId": "u", "event": "A"},
            {
                "type": "track",
                "userId": "u",
                "event": "B",
                "context": {"ip": "1.1.1.1"},
                "integrations": {"Mixpanel": True},
            },
        ],
    }
    assert post(live, "/v1/batch", body).status_code == 200
    first, second = (r["payload"] for r in stored(live))
    assert first["context"] == {"library": {"name": "x"}, "ip": "9.9.9.9"}
    assert first["integrations"] == {"All": False}
    assert second["context"] == {"library": {"name": "x"}, "ip": "1.1.1.1"}
    assert second["integrations"] == {"All": False, "Mixpanel": True}


def test_unknown_paths_and_methods_are_clear(live: LiveTessera) -> None:
    assert httpx.post(f"{live.url}/v1/nope").status_code == 404
    response = httpx.get(f"{live.url}/v1/track")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_received_at_is_the_server_clock(live: LiveTessera) -> None:
    before = datetime.now().astimezone()
    assert post(live, "/v1/track", {"userId": "u", "event": "E"}).status_code == 200
    after = datetime.now().astimezone()
    [row] = stored(live)
    assert before <= row["received_at"] <= after
    assert row["payload"]["receivedAt"].endswith("Z")
