"""Spec validation, limits and rejection reasons: bad messages are named, good ones kept."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import pytest

from tests.conftest import LiveTessera
from tests.ingest.helpers import post, stored


@pytest.mark.parametrize(
    ("path", "message", "reason"),
    [
        ("track", {"event": "E"}, "needs a 'userId' or an 'anonymousId'"),
        (
            "track",
            {"userId": "", "anonymousId": None, "event": "E"},
            "needs a 'userId' or an 'anonymousId'",
        ),
        ("track", {"userId": "u"}, "track needs 'event'"),
        ("track", {"userId": "u", "event": 12}, "'event' must be a string, got a number"),
        ("group", {"userId": "u"}, "group needs 'groupId'"),
        ("alias", {"userId": "u"}, "alias needs 'previousId'"),
        ("alias", {"anonymousId": "a", "previousId": "p"}, "alias needs 'userId'"),
        (
            "track",
            {"userId": "u", "event": "E", "properties": [1, 2]},
            "'properties' must be an object, got an array",
        ),
        ("identify", {"userId": "u", "traits": "x"}, "'traits' must be an object, got a string"),
        (
            "identify",
            {"userId": "u", "context": {"traits": 5}},
            "'context.traits' must be an object",
        ),
        ("track", {"userId": {"id": 1}, "event": "E"}, "'userId' must be a string, got an object"),
        ("track", {"userId": True, "event": "E"}, "'userId' must be a string, got a boolean"),
        ("track", {"userId": "u" * 256, "event": "E"}, "the limit is 255"),
        ("track", {"userId": "u\u0000", "event": "E"}, "NUL character"),
        ("track", {"userId": "u", "event": "E\u0000"}, "NUL character"),
        (
            "track",
            {"userId": "u", "event": "E", "timestamp": "yesterday"},
            "'timestamp' is not an ISO-8601",
        ),
        (
            "track",
            {"userId": "u", "event": "E", "timestamp": 1700000000},
            "'timestamp' must be an ISO-8601 string",
        ),
        (
            "track",
            {"userId": "u", "event": "E", "sentAt": "2026-13-45T00:00:00Z"},
            "'sentAt' is not an ISO-8601",
        ),
    ],
)
def test_invalid_single_message_is_400_with_reason(
    live: LiveTessera, path: str, message: dict[str, Any], reason: str
) -> None:
    response = post(live, f"/v1/{path}", {**message, "messageId": "bad-1"})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["success"] is False and body["accepted"] == 0
    [rejected] = body["rejected"]
    assert rejected["index"] == 0 and rejected["messageId"] == "bad-1"
    assert reason in rejected["reason"]
    assert stored(live) == []


def test_batch_keeps_good_messages_and_names_each_bad_one(live: LiveTessera) -> None:
    batch = [
        {"type": "track", "userId": "u", "event": "Good 1"},
        {"userId": "u", "event": "no type", "messageId": "m-1"},
        {"type": "launch", "userId": "u"},
        {"type": "identify", "userId": "u", "traits": {"plan": "pro"}},
        "not an object",
        {"type": "track", "userId": "u", "event": "big", "properties": {"x": "y" * 40_000}},
        {"type": "track", "userId": "u", "event": "Good 2"},
    ]
    response = post(live, "/v1/batch", {"batch": batch})
    assert response.status_code == 400
    body = response.json()
    assert body["accepted"] == 3
    assert "4 of 7 messages were rejected" in body["message"]
    reasons = {item["index"]: item["reason"] for item in body["rejected"]}
    assert set(reasons) == {1, 2, 4, 5}
    assert "no 'type'" in reasons[1]
    assert "'launch' is not one of" in reasons[2]
    assert "must be a JSON object, got a string" in reasons[4]
    assert "the limit is 32768" in reasons[5]
    assert body["rejected"][0]["messageId"] == "m-1"
    assert [r["name"] for r in stored(live)] == ["Good 1", None, "Good 2"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"batch": {"type": "track"}}', "'batch', an array"),
        (b'{"batch": [], "context": []}', "'context' must be an object"),
        (b'{"batch": [], "sentAt": "soon"}', "'sentAt' is not an ISO-8601"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b'{"batch": [{"type": "track", "userId": "\\ud800", "event": "E"}]}', "not valid JSON"),
        (b'{"batch": [], "n": 1e400}', "not valid JSON"),
    ],
)
def test_malformed_batch_bodies_are_400(live: LiveTessera, body: bytes, fragment: str) -> None:
    response = post(live, "/v1/batch", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert fragment in response.json()["message"]


def test_empty_batch_is_accepted(live: LiveTessera) -> None:
    assert post(live, "/v1/batch", {"batch": []}).status_code == 200
    assert stored(live) == []


def test_message_over_32kb_is_413(live: LiveTessera) -> None:
    response = post(
        live, "/v1/track", {"userId": "u", "event": "E", "properties": {"x": "y" * 33_000}}
    )
    assert response.status_code == 413
    assert "32768 bytes" in response.json()["message"]


def test_message_just_under_the_limit_is_accepted(live: LiveTessera) -> None:
    message = {"userId": "u", "event": "E", "properties": {"x": ""}}
    overhead = len(b'{"userId":"u","event":"E","properties":{"x":""}}')
    message["properties"]["x"] = "y" * (32 * 1024 - overhead)
    assert post(live, "/v1/track", message).status_code == 200


def test_batch_over_500kb_is_413_and_nothing_is_stored(live: LiveTessera) -> None:
    batch = [{"type": "track", "userId": "u", "event": "E", "properties": {"x": "y" * 20_000}}] * 30
    response = post(live, "/v1/batch", {"batch": batch})
    assert response.status_code == 413
    assert "512000 bytes" in response.json()["message"]
    assert stored(live) == []


def test_batch_over_2500_messages_is_400(live: LiveTessera) -> None:
    batch = [{"type": "track", "userId": "u", "event": "E"}] * 2501
    response = post(live, "/v1/batch", {"batch": batch})
    assert response.status_code == 400
    assert "2501 messages; the limit is 2500" in response.json()["message"]
    assert stored(live) == []


def test_batch_of_exactly_2500_is_accepted(live: LiveTessera) -> None:
    batch = [
        {"type": "track", "userId": "u", "event": "E", "messageId": str(i)} for i in range(2500)
    ]
    assert post(live, "/v1/batch", {"batch": batch}).status_code == 200
    assert len(stored(live)) == 2500


def _gzip_bomb(decompressed_size: int) -> bytes:
    """A gzip stream of `decompressed_size` spaces, built without holding it in memory."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b" " * (1 << 20)
    parts = [compressor.compress(b'{"batch": [')]
    for _ in range(decompressed_size // len(chunk)):
        parts.append(compressor.compress(chunk))
    parts.append(compressor.compress(b"]}"))
    parts.append(compressor.flush())
    return b"".join(parts)


def test_gzip_bomb_is_413_without_inflating_it(live: LiveTessera) -> None:
    bomb = _gzip_bomb(1 << 30)  # 1 GiB of spaces in about 1 MB
    assert len(bomb) < 2 << 20
    response = post(
        live, "/v1/batch", content=bomb[: 400 * 1024], headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 413
    assert "decompressed" in response.json()["message"]


def test_gzip_limit_applies_to_the_decompressed_size(live: LiveTessera) -> None:
    batch = b'{"batch": [' + b" " * 600_000 + b"]}"
    zipped = gzip.compress(batch)
    assert len(zipped) < 10_000
    response = post(live, "/v1/batch", content=zipped, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413


def test_deeply_nested_message_is_400(live: LiveTessera) -> None:
    nested: Any = "leaf"
    for _ in range(300):
        nested = {"a": nested}
    response = post(live, "/v1/track", {"userId": "u", "event": "E", "properties": nested})
    assert response.status_code == 400
    assert "nests deeper" in response.json()["rejected"][0]["reason"]
    too_deep = b'{"userId": "u", "event": "E", "properties": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = post(
        live, "/v1/track", content=too_deep, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400


def test_odd_unicode_is_kept_exactly(live: LiveTessera) -> None:
    odd = "zero\u200bwidth \U0001f600 rtl\u202e \ufeff combining e\u0301 \u0007bell"
    assert (
        post(live, "/v1/track", {"userId": odd, "event": odd, "properties": {odd: odd}}).status_code
        == 200
    )
    [row] = stored(live)
    assert row["user_id"] == odd and row["name"] == odd
    assert row["payload"]["properties"] == {odd: odd}


def test_nul_inside_properties_is_kept(live: LiveTessera) -> None:
    assert (
        post(
            live, "/v1/track", {"userId": "u", "event": "E", "properties": {"k": "a\u0000b"}}
        ).status_code
        == 200
    )
    [row] = stored(live)
    assert row["payload"]["properties"]["k"] == "a\u0000b"
