"""A real HTTP receiver on loopback for delivery tests: it records what it accepted and can
misbehave on purpose (500s, 429 with Retry-After, answers too late, reset connections), or
be down altogether (its port closed) for a while.

A small HTTP/1.1 server on asyncio streams rather than a framework, so that a test can
reset a connection mid-request or close the listening socket, which frameworks hide.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from tessera.activation.webhook import SIGNATURE_HEADER, verify


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    def messages(self) -> list[dict[str, Any]]:
        data = self.json()
        return data["batch"] if isinstance(data, dict) and "batch" in data else [data]


@dataclass
class Faults:
    """Chances per request (the rest are accepted); `seed` makes a run repeatable."""

    error_500: float = 0.0
    throttle_429: float = 0.0
    too_slow: float = 0.0  # answers 200 after the client gave up (it still counts as received)
    reset: float = 0.0  # closes the connection without an answer
    retry_after: str = "1"
    slow_seconds: float = 2.0
    latency: float = 0.0  # every accepted answer takes this long
    seed: int = 7
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


class Receiver:
    def __init__(self, *, faults: Faults | None = None, secret: str | None = None) -> None:
        self.faults = faults or Faults()
        self.secret = secret
        self.accepted: list[Received] = []
        self.refused = 0
        self.bad_signatures = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.AbstractServer | None = None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def up(self) -> None:
        async def start() -> None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )

        self._call(start())

    def down(self) -> None:
        """Close the port: connections are refused until `up()`."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None

        self._call(stop())

    def close(self) -> None:
        self.down()

        async def cancel_connections() -> None:
            current = asyncio.current_task()
            tasks = [task for task in asyncio.all_tasks() if task is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._call(cancel_connections())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return [message for item in self.accepted for message in item.messages()]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                headers, body = request
                if self._server is None:  # went down while the connection was open
                    writer.transport.abort()
                    return
                keep = await self._answer(headers, body, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(
        self, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        faults = self.faults
        with self._lock:
            self.requests += 1
            roll = faults.rng.random()
        if self.secret is not None and not verify(
            self.secret, headers.get(SIGNATURE_HEADER.lower(), ""), body
        ):
            self.bad_signatures += 1
            await _respond(writer, 401, b'{"error": "bad signature"}')
            return True
        edge = faults.error_500
        if roll < edge:
            self.refused += 1
            await _respond(writer, 500, b'{"error": "boom"}')
            return True
        edge += faults.throttle_429
        if roll < edge:
            self.refused += 1
            await _respond(writer, 429, b"slow down", {"Retry-After": faults.retry_after})
            return True
        edge += faults.reset
        if roll < edge:
            self.refused += 1
            writer.transport.abort()
            return False
        edge += faults.too_slow
        if roll < edge:
            await asyncio.sleep(faults.slow_seconds)
        if faults.latency:
            await asyncio.sleep(faults.latency)
        with self._lock:
            self.accepted.append(Received(time.monotonic(), headers, body))
        await _respond(writer, 200, b'{"ok": true}')
        return True


async def _read_request(reader: asyncio.StreamReader) -> tuple[dict[str, str], bytes] | None:
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    if not head:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return headers, body


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: bytes, extra: dict[str, str] | None = None
) -> None:
    reason = {200: "OK", 401: "Unauthorized", 429: "Too Many Requests", 500: "Error"}[status]
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    lines += ["Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()


@contextlib.contextmanager
def receiver(**kwargs: Any) -> Iterator[Receiver]:
    server = Receiver(**kwargs)
    try:
        yield server
    finally:
        server.close()
