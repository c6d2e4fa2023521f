"""A webhook receiver for benchmarks: a raw ASGI app under uvicorn in its own process (no
interpreter lock shared with what sends to it), which keeps every messageId it takes in arrival
order, the arrival time of events that carry `properties.sent_at`, and of audience entries of
probe profiles (a user_id starting with `probe-`)."""

from __future__ import annotations

import time
from multiprocessing.connection import Connection
from typing import Any

import httpx
import orjson
from harness_server import (
    run_child,
    stop_child,
)


class _Tally:
    """What the receiver took: every messageId in arrival order, (messageId, sent_at,
    arrived) for events that carry `properties.sent_at`, and (user_id, audience id, arrived)
    for audience entries of probe profiles."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.bad = 0
        self.ids: list[str] = []
        self.seen: set[str] = set()
        self.timings: list[tuple[str, float, float]] = []
        self.entries: list[tuple[str, str, float]] = []

    def take(self, body: bytes, arrived: float) -> bool:
        self.requests += 1
        self.bytes += len(body)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.bad += 1
            return False
        messages = data["batch"] if isinstance(data, dict) and "batch" in data else [data]
        for message in messages:
            message_id = message.get("messageId") if isinstance(message, dict) else None
            if not isinstance(message_id, str):
                self.bad += 1
                continue
            self.ids.append(message_id)
            self.seen.add(message_id)
            event = message.get("event")
            properties = event.get("properties") if isinstance(event, dict) else None
            sent = properties.get("sent_at") if isinstance(properties, dict) else None
            if isinstance(sent, int | float):
                self.timings.append((message_id, float(sent), arrived))
            if message.get("kind") == "audience.entered":
                self.entry(message, arrived)
        return True

    def entry(self, message: dict[str, Any], arrived: float) -> None:
        profile = message.get("profile") or {}
        users = (profile.get("identities") or {}).get("user_id") or []
        audience = (message.get("audience") or {}).get("id")
        for user in users:
            if isinstance(user, str) and user.startswith("probe-"):
                self.entries.append((user, str(audience), arrived))

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "messages": len(self.ids),
            "unique": len(self.seen),
            "bytes": self.bytes,
            "bad": self.bad,
        }


_TALLY = _Tally()


async def _receiver_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    path = scope["path"]
    status, answer = 200, b"{}"
    if path == "/hook":
        if not _TALLY.take(b"".join(chunks), time.time()):
            status, answer = 400, b'{"error": "not JSON"}'
    elif path == "/_stats":
        answer = orjson.dumps(_TALLY.stats())
    elif path == "/_ids":
        answer = orjson.dumps(_TALLY.ids)
    elif path == "/_timings":
        answer = orjson.dumps(_TALLY.timings)
    elif path == "/_entries":
        answer = orjson.dumps(_TALLY.entries)
    elif path == "/_reset":
        _TALLY.reset()
    else:
        status, answer = 404, b'{"error": "not found"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


def _receiver_main(conn: Connection) -> None:
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    conn.send(("ready", sock.getsockname()[1]))
    conn.close()
    config = uvicorn.Config(
        _receiver_app,
        http="httptools",
        loop="uvloop",
        lifespan="off",
        interface="asgi3",
        access_log=False,
        log_config=None,
        log_level="warning",
        backlog=1024,
    )
    uvicorn.Server(config).run(sockets=[sock])


class Receiver:
    """The receiver process, and its control endpoints."""

    def __init__(self) -> None:
        port, conn, self.process = run_child(_receiver_main, (), "receiver", 60)
        conn.close()
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"{self.base}/hook"
        self._client = httpx.Client(base_url=self.base, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.stats()
                return
            except httpx.TransportError:
                if time.monotonic() > deadline or not self.process.is_alive():
                    raise RuntimeError("the receiver did not start") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def _get(self, path: str) -> Any:
        response = self._client.get(path)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, int]:
        return self._get("/_stats")  # type: ignore[no-any-return]

    def ids(self) -> list[str]:
        return self._get("/_ids")  # type: ignore[no-any-return]

    def timings(self) -> list[tuple[str, float, float]]:
        return [tuple(item) for item in self._get("/_timings")]

    def entries(self) -> list[tuple[str, str, float]]:
        return [tuple(item) for item in self._get("/_entries")]

    def reset(self) -> None:
        self._get("/_reset")

    def stop(self) -> None:
        self._client.close()
        stop_child(self.process, False)
