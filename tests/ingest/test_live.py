"""The live view of a source: server-sent events through a real server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from tessera.app import create_app
from tessera.auth.tokens import create_token
from tessera.local_server import serve_in_thread
from tests.conftest import LiveTessera
from tests.ingest.helpers import post

READ_TIMEOUT = 30  # a stream that stops sending fails the test instead of hanging it


@dataclass
class Frame:
    id: str | None
    event: str | None
    data: dict[str, Any] | None


def frames(response: httpx.Response) -> Iterator[Frame]:
    """The server-sent events of a response, parsed as an EventSource would (comments and
    `retry:` skipped; a frame with only an `id:` yields with no event)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if fields:
                data = fields.get("data")
                yield Frame(
                    fields.get("id"), fields.get("event"), orjson.loads(data) if data else None
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def next_of(stream: Iterator[Frame], kind: str) -> Frame:
    return next(frame for frame in stream if frame.event == kind)


@pytest.fixture
def token(live: LiveTessera) -> str:
    with live.engine.begin() as conn:
        return create_token(conn, name="viewer", role="marketer")[0]


@contextmanager
def open_stream(live: LiveTessera, token: str, **headers: str) -> Iterator[httpx.Response]:
    timeout = httpx.Timeout(10, read=READ_TIMEOUT)
    with (
        httpx.Client(base_url=live.url, timeout=timeout) as client,
        client.stream(
            "GET",
            f"/api/v1/sources/{live.source.id}/live",
            headers={"Authorization": f"Bearer {token}", **headers},
        ) as response,
    ):
        yield response


def test_an_event_sent_after_connecting_arrives_on_the_stream(
    live: LiveTessera, token: str
) -> None:
    assert post(live, "/v1/track", {"userId": "u", "event": "Before"}).status_code == 200
    with open_stream(live, token) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = frames(response)
        first = next(stream)  # the stream starts now: its cursor, and nothing old
        assert first.event is None and first.id is not None
        sent = post(live, "/v1/track", {"userId": "u-live", "event": "Live", "messageId": "m1"})
        assert sent.status_code == 200
        arrived = next_of(stream, "event")
        assert arrived.data is not None
        assert (arrived.data["name"], arrived.data["message_id"]) == ("Live", "m1")
        assert arrived.data["payload"]["userId"] == "u-live"
        resume_from = arrived.id

        # A refused message comes on the same stream, with its reason.
        bad = post(live, "/v1/track", {"event": "No one"})
        assert bad.status_code == 400
        refusal = next_of(stream, "refusal")
        assert refusal.data is not None
        assert refusal.data["reason"] == "the message needs a 'userId' or an 'anonymousId'"
        assert refusal.data["status"] == 400

    # Reconnecting with the last id resumes after it: the next event, not the old ones again.
    assert post(live, "/v1/track", {"userId": "u", "event": "Meanwhile"}).status_code == 200
    assert resume_from is not None
    with open_stream(live, token, **{"Last-Event-ID": resume_from}) as response:
        resumed = next_of(frames(response), "event")
        assert resumed.data is not None and resumed.data["name"] == "Meanwhile"


def test_a_bad_cursor_is_a_400_and_another_sources_events_do_not_show(
    live: LiveTessera, token: str
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{live.url}/api/v1/sources/{live.source.id}/live"
    response = httpx.get(url, params={"after": "yesterday"}, headers=headers, timeout=30)
    assert response.status_code == 400 and "yesterday" in response.json()["message"]
    missing = httpx.get(f"{live.url}/api/v1/sources/999999/live", headers=headers, timeout=30)
    assert missing.status_code == 404

    other = httpx.post(
        f"{live.url}/api/v1/sources", json={"name": "other"}, headers=headers, timeout=30
    ).json()
    with open_stream(live, token) as response:
        stream = frames(response)
        elsewhere = {"userId": "u", "event": "Elsewhere"}
        assert post(live, "/v1/track", elsewhere, auth=(other["write_key"], "")).is_success
        assert post(live, "/v1/track", {"userId": "u", "event": "Here"}).is_success
        arrived = next_of(stream, "event")
        assert arrived.data is not None and arrived.data["name"] == "Here"


def test_stopping_the_server_ends_open_streams(live: LiveTessera, token: str) -> None:
    app = create_app(live.settings, engine=live.engine)
    # Under the stream's 15 s heartbeat: a stream the shutdown left open fails the test.
    client = httpx.Client(timeout=httpx.Timeout(10))
    with serve_in_thread(app) as url:
        request = client.build_request(
            "GET",
            f"{url}/api/v1/sources/{live.source.id}/live",
            headers={"Authorization": f"Bearer {token}"},
        )
        response = client.send(request, stream=True)
        stream = frames(response)
        assert next(stream).id is not None
    # The server stopped although this client never left: the stream has ended.
    assert app.state.stopping.is_set()
    assert [frame.event for frame in stream if frame.event] == []
    response.close()
    client.close()
