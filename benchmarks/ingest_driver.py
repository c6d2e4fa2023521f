"""Ingest benchmark's driver: a separate process with a minimal HTTP/1.1 keep-alive client
sending realistic track calls, pre-rendered to bytes, closed or open loop."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import multiprocessing
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

from harness import CpuSnapshot, pct
from harness_profile import py_spy, start_spy
from harness_server import event_loop_factory

# --------------------------------------------------------------------------------------------
# Events: realistic track calls rendered once to bytes; only messageId and timestamp vary.
# --------------------------------------------------------------------------------------------

_PRODUCTS = [
    ("Monopoly: 3rd Edition", "Games", "Hasbro", 19.99),
    ("Uno Card Game", "Games", "Mattel", 3.49),
    ("Trail Running Shoe", "Footwear", "Salomon", 129.0),
    ("Espresso Machine", "Kitchen", "De'Longhi", 249.95),
    ("Noise-cancelling Headphones", "Audio", "Sony", 349.0),
    ("Merino Wool Sweater", "Apparel", "Icebreaker", 119.5),
    ("Cast Iron Skillet", "Kitchen", "Lodge", 34.9),
    ("4K Action Camera", "Electronics", "GoPro", 399.99),
]
_EVENTS = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed"]
_AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0.0.0",
]


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def event_templates(count: int = 64, seed: int = 7) -> list[bytes]:
    """`count` track messages as JSON without their closing brace, ending in `,` so the
    request builder appends `"messageId":"…","timestamp":"…"}`."""
    rng = random.Random(seed)
    templates = []
    for _ in range(count):
        name, category, brand, price = rng.choice(_PRODUCTS)
        product = f"{rng.randrange(10_000, 99_999)}"
        message: dict[str, Any] = {
            "type": "track",
            "event": rng.choice(_EVENTS),
            "userId": f"user-{rng.randrange(1, 200_000)}",
            "anonymousId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "properties": {
                "product_id": product,
                "sku": f"{category[:3].upper()}-{product}",
                "category": category,
                "name": name,
                "brand": brand,
                "price": price,
                "quantity": rng.randrange(1, 4),
                "currency": "USD",
            },
            "context": {
                "library": {"name": "analytics-python", "version": "2.3.3"},
                "ip": f"203.0.113.{rng.randrange(1, 255)}",
                "locale": "en-US",
                "userAgent": rng.choice(_AGENTS),
                "page": {"path": f"/products/{product}"},
            },
        }
        templates.append(_json_bytes(message)[:-1] + b",")
    return templates


def iso_now() -> bytes:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()


# --------------------------------------------------------------------------------------------
# The driver: a separate process with a minimal HTTP/1.1 keep-alive client.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
    name: str  # "batch", "single" or "paced"; names the profile file
    kind: str  # "batch" (POST /v1/batch) or "single" (POST /v1/track)
    host: str
    port: int
    write_key: str
    connections: int
    warmup: float
    duration: float
    batch_size: int
    id_prefix: str
    server_pid: int
    rate: float = 0.0  # > 0: open loop, requests started at this rate whatever the replies
    drain_timeout: float = 30.0
    # "counter": messageId id_prefix + n; "uuid": random UUIDs, as the Segment SDKs send;
    # "none": no messageId, so the server generates one per event.
    message_ids: str = "counter"
    timestamps: bool = True  # False: no `timestamp` per event, no `sentAt` (as curl sends)


class _Load:
    """Shared state of one phase: request builder, window flags and counters."""

    def __init__(self, spec: PhaseSpec) -> None:
        self.spec = spec
        self.templates = event_templates()
        self.n_templates = len(self.templates)
        self.closed = [template[:-1] + b"}" for template in self.templates]
        self.counter = 0
        auth = base64.b64encode(f"{spec.write_key}:".encode()).decode()
        path = "/v1/batch" if spec.kind == "batch" else "/v1/track"
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
            f"Authorization: Basic {auth}\r\nContent-Type: application/json\r\n"
            "User-Agent: tessera-bench\r\nContent-Length: "
        ).encode()
        self.events_per_request = spec.batch_size if spec.kind == "batch" else 1
        self.stopping = False
        self.measuring = False
        self.window_start = 0.0
        self.window_end = 0.0
        self.latencies: list[float] = []
        self.window_status: Counter[int] = Counter()
        self.window_events_ok = 0
        self.total_status: Counter[int] = Counter()
        self.total_events_ok = 0
        self.disconnects = 0
        self.error_samples: dict[int, str] = {}
        self.busy: set[_Client] = set()
        self.drained: asyncio.Future[None] | None = None
        self.event_bytes = 0
        # Open loop: idle connections, and the scheduled start times waiting for one.
        self.free: list[_Client] = []
        self.backlog: deque[float] = deque()
        self.max_backlog = 0
        self.scheduled = 0
        self.t0 = 0.0

    def next_request(self) -> bytes:
        """Pre-rendered template bytes plus a fresh messageId and timestamp per event (as
        `message_ids` and `timestamps` say)."""
        spec = self.spec
        now = iso_now() if spec.timestamps else b""
        stamp = b'"timestamp":"' + now + b'"' if spec.timestamps else b""
        templates, n, start = self.templates, self.n_templates, self.counter
        count = self.events_per_request
        self.counter = start + count
        if spec.message_ids == "none":
            if stamp:
                events = [templates[i % n] + stamp + b"}" for i in range(start, start + count)]
            else:
                events = [self.closed[i % n] for i in range(start, start + count)]
        else:
            tail = b'",' + stamp + b"}" if stamp else b'"}'
            if spec.message_ids == "uuid":
                ids = [str(uuid.uuid4()).encode() for _ in range(count)]
            else:
                prefix = spec.id_prefix.encode()
                ids = [prefix + str(i).encode() for i in range(start, start + count)]
            events = [
                templates[(start + k) % n] + b'"messageId":"' + ids[k] + tail for k in range(count)
            ]
        if spec.kind == "batch":
            sent_at = b',"sentAt":"' + now + b'"' if spec.timestamps else b""
            body = b'{"batch":[' + b",".join(events) + b"]" + sent_at + b"}"
        else:
            body = events[0]
        if not self.event_bytes:
            self.event_bytes = sum(map(len, events)) // count
        return self.head + str(len(body)).encode() + b"\r\n\r\n" + body

    def completed(self, client: _Client, status: int, body: bytes, latency: float) -> None:
        self.total_status[status] += 1
        if status == 200:
            self.total_events_ok += self.events_per_request
        elif status not in self.error_samples:
            self.error_samples[status] = body[:300].decode("utf-8", "replace")
        if self.measuring:
            self.window_status[status] += 1
            if status == 200:
                self.window_events_ok += self.events_per_request
                self.latencies.append(latency)

    def next_for(self, client: _Client) -> None:
        """A reply arrived on `client`: closed loop sends again at once; open loop sends the
        oldest overdue request, if any, else parks the connection."""
        if not self.spec.rate:
            client.send()
        elif self.backlog and not self.stopping:
            client.send(self.backlog.popleft())
        else:
            self.idle(client)
            if client.transport is not None and not self.stopping:
                self.free.append(client)

    def tick(self) -> None:
        """Open loop: start every request whose scheduled time has come."""
        if self.stopping:
            return
        rate = self.spec.rate
        due = int((time.perf_counter() - self.t0) * rate)
        while self.scheduled < due:
            self.scheduled += 1
            at = self.t0 + self.scheduled / rate
            if self.free:
                self.free.pop().send(at)
            else:
                self.backlog.append(at)
        self.max_backlog = max(self.max_backlog, len(self.backlog))
        asyncio.get_running_loop().call_later(0.001, self.tick)

    def idle(self, client: _Client) -> None:
        self.busy.discard(client)
        if self.stopping and not self.busy and self.drained and not self.drained.done():
            self.drained.set_result(None)


class _Client(asyncio.Protocol):
    """One keep-alive connection with one request in flight at a time."""

    def __init__(self, load: _Load) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.need = -1
        self.header_end = 0
        self.status = 0
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, scheduled: float = 0.0) -> None:
        """Send the next request; latency counts from `scheduled` when given (open loop)."""
        if self.load.stopping or self.transport is None or self.transport.is_closing():
            self.load.idle(self)
            return
        self.load.busy.add(self)
        request = self.load.next_request()
        self.sent_at = scheduled or time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if self.need < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:  # the server always sends Content-Length; anything else is a bug
                raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
            stop = head.find(b"\r\n", at + 17)
            self.header_end = end + 4
            self.need = self.header_end + int(head[at + 17 : stop if stop >= 0 else None])
        if len(buffer) < self.need:
            return
        latency = time.perf_counter() - self.sent_at
        body = bytes(buffer[self.header_end : self.need]) if self.status != 200 else b""
        del buffer[: self.need]
        self.need = -1
        self.load.completed(self, self.status, body, latency)
        self.load.next_for(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.load.stopping:
            self.load.disconnects += 1
        self.transport = None
        if self in self.load.free:
            self.load.free.remove(self)
        self.load.idle(self)


async def _run_phase(spec: PhaseSpec, report: Connection) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    load = _Load(spec)
    failures: list[str] = []

    def on_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        failures.append(f"{context.get('message')}: {context.get('exception')!r}")
        load.stopping = True

    loop.set_exception_handler(on_error)
    clients = []
    for _ in range(spec.connections):
        client = _Client(load)
        await loop.create_connection(lambda c=client: c, spec.host, spec.port)  # type: ignore[misc]
        clients.append(client)
    started = load.t0 = time.perf_counter()
    if spec.rate:
        load.free = list(clients)
        load.tick()
    else:
        for client in clients:
            client.send()

    await asyncio.sleep(spec.warmup)
    before = CpuSnapshot.take(spec.server_pid)
    load.measuring = True
    load.window_start = time.perf_counter()
    report.send(("measuring", None))
    await asyncio.sleep(spec.duration)
    load.measuring = False
    load.window_end = time.perf_counter()
    after = CpuSnapshot.take(spec.server_pid)

    load.stopping = True
    load.drained = loop.create_future()
    if load.busy:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(load.drained, spec.drain_timeout)
    in_flight = len(load.busy)
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    await asyncio.sleep(0.05)

    if failures:
        raise RuntimeError(f"the driver failed: {failures[0]}")
    if not load.total_status.get(200):
        raise RuntimeError(f"no request succeeded: {load.total_status}, {load.error_samples}")
    window = load.window_end - load.window_start
    latencies = sorted(load.latencies)
    hz = os.sysconf("SC_CLK_TCK")

    return {
        "name": spec.name,
        "kind": spec.kind,
        "connections": spec.connections,
        "window_s": window,
        "elapsed_s": time.perf_counter() - started,
        "requests_ok": load.window_status[200],
        "events_ok": load.window_events_ok,
        "window_status": dict(load.window_status),
        "total_status": dict(load.total_status),
        "total_events_ok": load.total_events_ok,
        "requests_sent": load.counter // load.events_per_request,
        "rate": spec.rate,
        "max_backlog": load.max_backlog,
        "unsent": len(load.backlog),
        "disconnects": load.disconnects,
        "still_in_flight": in_flight,
        "error_samples": load.error_samples,
        "p50_ms": pct(latencies, 0.50) * 1000,
        "p90_ms": pct(latencies, 0.90) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
        "event_bytes": load.event_bytes,
        "events_per_request": load.events_per_request,
        "server_cores": (after.server_all - before.server_all) / hz / window,
        "server_loop_cores": (after.server_main - before.server_main) / hz / window,
        "driver_cores": (after.driver - before.driver) / window,
        "machine_busy_cores": (after.machine_busy - before.machine_busy) / hz / window,
    }


def _driver_main(spec: PhaseSpec, report: Connection) -> None:
    """Entry point of the driver process: run one phase, send its figures back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            result = runner.run(_run_phase(spec, report))
        report.send(("result", result))
    except BaseException as exc:
        report.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


# --------------------------------------------------------------------------------------------
# Phases and the ceiling.
# --------------------------------------------------------------------------------------------


def run_phase(
    spec: PhaseSpec, profile: Path | None, rate: int, extra: Sequence[str]
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_driver_main, args=(spec, sender), name=f"driver-{spec.name}")
    process.start()
    sender.close()
    profiler = None
    result: dict[str, Any] | None = None
    deadline = time.monotonic() + spec.warmup + spec.duration + spec.drain_timeout + 60
    try:
        while result is None:
            if not receiver.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"the {spec.name} driver did not report in time")
            try:
                kind, value = receiver.recv()
            except EOFError:
                raise RuntimeError(
                    f"the {spec.kind} driver died (exit {process.exitcode})"
                ) from None
            if kind == "measuring" and profile is not None:
                output = profile / f"{spec.name}.txt"
                if py_spy() is None:
                    print("  (py-spy not found: pip install py-spy into the venv; not profiling)")
                else:
                    profiler = start_spy(spec.server_pid, output, rate, spec.duration, extra)
            elif kind == "error":
                raise RuntimeError(f"the {spec.name} driver failed: {value}")
            elif kind == "result":
                result = value
    finally:
        if result is None:  # failed or interrupted: the driver's figures are not wanted
            process.terminate()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
        if profiler is not None:
            try:
                _, stderr = profiler.communicate(timeout=spec.duration + 60)
                if profiler.returncode != 0:
                    print(f"  py-spy failed: {stderr.decode(errors='replace').strip()[-500:]}")
            except subprocess.TimeoutExpired:
                profiler.kill()
    return result
