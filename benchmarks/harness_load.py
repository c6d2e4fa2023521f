"""Open-loop load for drivers: /v1/batch bodies started at a fixed rate whatever the replies
(so a stalled server shows as queueing, not as a slower sender), on keep-alive connections,
with the requests and events acknowledged inside a measured window counted."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from harness_server import HttpConnection, http_head


class OpenLoop:
    """Background batches at `rate` events/s in bodies of `batch_size`, a measured window
    after `warmup`, and the connections a subclass's probes borrow (`pool`)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        write_key: str,
        token: str,
        rate: float,
        batch_size: int,
        warmup: float,
        duration: float,
        bodies: list[tuple[bytes, int]],
        probe_rate: float = 0.0,
    ) -> None:
        self.address = (host, port)
        self.host = f"{host}:{port}"
        self.basic = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        self.bearer = f"Bearer {token}"
        self.rate, self.batch_size, self.probe_rate = rate, batch_size, probe_rate
        self.bodies = bodies
        self.t0 = time.perf_counter()
        self.window = (self.t0 + warmup, self.t0 + warmup + duration)
        self.stopping = False
        # Requests scheduled at the rate wait in `queue` for a free sender.
        self.queue: asyncio.Queue[float | None] = asyncio.Queue()
        self.sent = 0
        self.events_ok = 0
        self.latencies: list[float] = []  # acknowledged in the window, from the scheduled start
        self.statuses: Counter[int] = Counter()
        self.max_backlog = 0
        self.errors: dict[str, str] = {}
        self.pool: list[HttpConnection] = []
        self.probes: list[dict[str, Any]] = []
        self.probe_tasks: list[asyncio.Task[None]] = []

    def connection(self) -> HttpConnection:
        return HttpConnection(*self.address)

    def in_window(self, moment: float) -> bool:
        return self.window[0] <= moment <= self.window[1]

    def next_body(self) -> tuple[bytes, int]:
        body, count = self.bodies[self.sent % len(self.bodies)]
        self.sent += 1
        return body, count

    async def sender(self) -> None:
        """One connection: send each scheduled request when it is this sender's turn."""
        conn = self.connection()
        try:
            while (at := await self.queue.get()) is not None:
                body, count = self.next_body()
                head = http_head("POST", "/v1/batch", self.host, self.basic, len(body))
                status, reply = await conn.request(head, body)
                done = time.perf_counter()
                if self.in_window(done):
                    self.statuses[status] += 1
                    if status == 200:
                        self.events_ok += count
                        self.latencies.append(done - at)
                if status != 200:
                    self.errors.setdefault(f"batch {status}", reply[:300].decode(errors="replace"))
        finally:
            conn.close()

    async def scheduler(self) -> None:
        interval = self.batch_size / self.rate
        k = 0
        while not self.stopping:
            k += 1
            at = self.t0 + k * interval
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            if self.stopping:
                break
            self.queue.put_nowait(at)
            self.max_backlog = max(self.max_backlog, self.queue.qsize())

    async def probe(self, n: int, counted: bool) -> None:
        """The subclass's probe `n`; `counted` when it starts in the window."""
        raise NotImplementedError

    async def prober(self) -> None:
        """Start a probe `probe_rate` times a second, each in a task of its own."""
        n = 0
        while not self.stopping:
            n += 1
            await asyncio.sleep(max(0.0, self.t0 + n / self.probe_rate - time.perf_counter()))
            if self.stopping:
                break
            counted = self.in_window(time.perf_counter())
            self.probe_tasks.append(asyncio.create_task(self.probe(n, counted)))

    async def poll(
        self,
        conn: HttpConnection,
        get: bytes,
        sent_at: float,
        record: dict[str, Any],
        seen: Callable[[bytes], bool],
        *,
        interval: float,
        timeout: float,
        slow_after: float = math.inf,
    ) -> None:
        """Send `get` every `interval` s (5x that once `slow_after` s late, so that an
        overloaded server is not also flooded with lookups) until a 200 whose body is `seen`:
        record["visible"] is the seconds since `sent_at`, inf after `timeout`."""
        while True:
            poll_at = time.perf_counter()
            status, reply = await conn.request(get)
            record["polls"] += 1
            now = time.perf_counter()
            if status == 200 and seen(reply):
                record["visible"] = now - sent_at
                return
            if status not in (200, 404):
                self.errors.setdefault(f"profile {status}", reply[:300].decode(errors="replace"))
            if now - sent_at > timeout:
                record["visible"] = math.inf
                return
            wait = interval * (5 if now - sent_at >= slow_after else 1)
            await asyncio.sleep(max(0.0, poll_at + wait - now))

    def start_senders(self, connections: int) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.sender()) for _ in range(connections)]

    async def stop(self, senders: list[asyncio.Task[None]], others: list[asyncio.Task[Any]]) -> int:
        """Stop scheduling, let the senders finish what they sent and the probes end; the
        requests scheduled but never sent."""
        self.stopping = True
        unsent = self.queue.qsize()
        while not self.queue.empty():
            self.queue.get_nowait()
        for _ in senders:
            self.queue.put_nowait(None)
        await asyncio.gather(*others)
        await asyncio.gather(*senders, *self.probe_tasks)
        for conn in self.pool:
            conn.close()
        return unsent
