"""Ingest benchmark: how fast does `tessera serve` accept Segment events on SQLite?

Run it with the project's virtualenv (nothing else needed; no network beyond loopback):

    .venv/bin/python benchmarks/ingest.py            # full run, about 1.5 minutes
    .venv/bin/python benchmarks/ingest.py --quick    # short smoke run, about 25 s
    .venv/bin/python benchmarks/ingest.py --record   # also append the figures to RESULTS.md
    .venv/bin/python benchmarks/ingest.py --profile /tmp/prof   # py-spy the server as well
    .venv/bin/python benchmarks/ingest.py --help     # every knob

What one run does:

1. Creates a source with `tessera source create bench` on a fresh SQLite file in a temporary
   directory (TESSERA_DATABASE_URL=sqlite:////tmp/.../tessera.db, TESSERA_LOG_LEVEL=warning;
   the write key is the last line of its output), starts `tessera serve --port P` as a
   subprocess and waits for GET /healthz. Other TESSERA_* variables in the environment reach
   the server and are printed (and recorded), e.g. TESSERA_SQLITE_SYNCHRONOUS=NORMAL to
   compare; by default every acknowledged event has been fsynced (synchronous=FULL).
2. Drives it from a separate process (multiprocessing, spawn) over loopback with a minimal
   asyncio HTTP/1.1 keep-alive client (uvloop when installed): one request in flight per
   connection, requests assembled from pre-rendered byte templates, responses parsed from the
   status line and Content-Length only, so the driver needs about a tenth of a core at
   2,000 requests/s and is not the bottleneck on a 2-core machine. Every message has a unique
   messageId (the server dedupes by messageId). Each phase runs `--warmup` seconds, then is
   measured for `--duration` seconds; only replies that arrive in that window count.
   a. batch: POST /v1/batch with 100 realistic track events per request (~550 bytes each,
      with context and properties) on 8 connections; prints events/s.
   b. single: POST /v1/track, one event per request, closed loop on 32 connections (each
      sends again as soon as it has its reply): the capacity in requests/s, with p50/p90/p99
      latency. In a closed loop mean latency = connections / throughput (Little's law), so at
      2,000 requests/s 32 connections wait 16 ms on average whatever the server does.
   c. paced: the same requests open loop, started at a fixed `--single-rate` (default 2,000/s,
      the target) on up to 64 connections whatever the replies, with latency measured from
      each request's scheduled start, so queueing behind a stalled server counts. This is the
      honest check of "2,000 calls/s with p99 <= 25 ms".
   Non-200 replies are counted per status (429 separately) and a sample body is printed.
   After each phase the driver stops sending and waits for the requests in flight, then the
   events table is counted: stored rows must equal the events acknowledged with 200.
3. The bare ceiling, in the same run, after the server has stopped: the very rows the server
   stored in phase (a) (same column values, same JSON payload text, read back from its
   database) are inserted into a fresh database created by `tessera migrate`, with the same
   pragmas (WAL, synchronous=FULL, foreign_keys=ON) and the server's statement
   (INSERT ... ON CONFLICT (source_id, message_id) DO NOTHING), by sqlite3 executemany in
   100-row transactions; server/ceiling is the ratio of the two rates. Two reference figures
   follow: the same rows through tessera's own `append_events` (driver executemany, 100-row
   transactions, what the writer thread runs), and raw sqlite3 in 1000-row transactions.
4. Prints a summary against the targets (>= 20,000 events/s through /v1/batch; >= 2,000
   single calls/s with p99 <= 25 ms) with the CPU used in each window by the server (and its
   event-loop thread), the driver and every other process: other work on a small machine
   (a test suite, say) makes the figures noisy, and that line shows how much there was.
   The exit status is 1 if stored and acknowledged counts differ; targets never fail it.

The server is stopped (SIGINT, as Ctrl-C, then SIGKILL if it hangs) at the end and on error.

`--profile DIR` runs `py-spy record --format raw --threads` (pip install py-spy into the venv)
against the server during each measured window, writes DIR/<phase>.txt (collapsed stacks: load
them in https://speedscope.app or flamegraph.pl) and DIR/<phase>.summary.txt, and prints the
hottest functions by own and inclusive samples, per thread. `--profile-gil` samples only the
thread holding the GIL (what the server's one core of Python is spent on). Sampling perturbs
the figures, so take the headline numbers from a run without --profile.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import multiprocessing
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

from tessera.eventlog import service as eventlog_service

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

TARGET_BATCH_EVENTS_PER_S = 20_000
TARGET_SINGLE_REQUESTS_PER_S = 2_000
TARGET_SINGLE_P99_MS = 25.0

# The server's own columns and statement, so the ceiling inserts exactly what the writer does.
EVENT_COLUMNS = eventlog_service.COLUMNS
INSERT_SQL = eventlog_service.insert_sql("sqlite")


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


class _Load:
    """Shared state of one phase: request builder, window flags and counters."""

    def __init__(self, spec: PhaseSpec) -> None:
        self.spec = spec
        self.templates = event_templates()
        self.n_templates = len(self.templates)
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
        """Pre-rendered template bytes plus a fresh messageId and timestamp per event."""
        now = iso_now()
        tail = b'","timestamp":"' + now + b'"}'
        prefix = self.spec.id_prefix.encode()
        templates, n, start = self.templates, self.n_templates, self.counter
        count = self.events_per_request
        self.counter = start + count
        events = [
            templates[i % n] + b'"messageId":"' + prefix + str(i).encode() + tail
            for i in range(start, start + count)
        ]
        if self.spec.kind == "batch":
            body = b'{"batch":[' + b",".join(events) + b'],"sentAt":"' + now + b'"}'
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


def _cpu_ticks_of(pid: int) -> tuple[int, int]:
    """(CPU ticks of the main thread, CPU ticks of all threads) of process `pid`."""
    main = total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        total += ticks
        if int(task) == pid:
            main = ticks
    return main, total


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values[:8]) - idle, sum(values[:8])


@dataclasses.dataclass
class CpuSnapshot:
    server_main: int
    server_all: int
    driver: float
    machine_busy: int

    @classmethod
    def take(cls, server_pid: int) -> CpuSnapshot:
        main, total = _cpu_ticks_of(server_pid)
        usage = os.times()
        return cls(main, total, usage.user + usage.system, _machine_ticks()[0])


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

    def pct(q: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

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
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
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
        try:
            import uvloop

            factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
        except ImportError:
            factory = None
        with asyncio.Runner(loop_factory=factory) as runner:
            result = runner.run(_run_phase(spec, report))
        report.send(("result", result))
    except BaseException as exc:
        report.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


# --------------------------------------------------------------------------------------------
# The server under test.
# --------------------------------------------------------------------------------------------


def _tessera_command() -> list[str]:
    script = Path(sys.executable).parent / "tessera"
    if script.exists():
        return [str(script)]
    found = shutil.which("tessera")
    if found:
        return [found]
    return [sys.executable, "-c", "from tessera.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tessera_overrides() -> dict[str, str]:
    """TESSERA_* settings from our environment that reach the server (experiments such as
    TESSERA_SQLITE_SYNCHRONOUS=NORMAL); the database URL and log level are always ours."""
    ours = ("TESSERA_DATABASE_URL", "TESSERA_LOG_LEVEL")
    return {k: v for k, v in os.environ.items() if k.startswith("TESSERA_") and k not in ours}


def _tessera_env(database: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TESSERA_DATABASE_URL"] = f"sqlite:///{database}"
    env["TESSERA_LOG_LEVEL"] = "warning"
    return env


def run_tessera(database: Path, *args: str) -> str:
    done = subprocess.run(
        [*_tessera_command(), *args],
        env=_tessera_env(database),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"`tessera {' '.join(args)}` failed:\n{done.stdout}{done.stderr}")
    return done.stdout


class Server:
    """`tessera serve` on a fresh SQLite file in `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.database = workdir / "tessera.db"
        self.log_path = workdir / "server.log"
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.write_key = ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        output = run_tessera(self.database, "source", "create", "bench")
        self.write_key = output.strip().splitlines()[-1].strip()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*_tessera_command(), "serve", "--port", str(self.port)],
                env=_tessera_env(self.database),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop the server ourselves
            )
        deadline = time.monotonic() + 60
        url = f"http://127.0.0.1:{self.port}/healthz"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"tessera serve exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"tessera serve did not answer {url}:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def count_events(self, like: str | None = None) -> int:
        with contextlib.closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)) as db:
            if like is None:
                return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
            query = "SELECT count(*) FROM events WHERE message_id LIKE ?"
            return int(db.execute(query, (like,)).fetchone()[0])


# --------------------------------------------------------------------------------------------
# Profiling with py-spy.
# --------------------------------------------------------------------------------------------


def _py_spy() -> str | None:
    script = Path(sys.executable).parent / "py-spy"
    return str(script) if script.exists() else shutil.which("py-spy")


def start_profiler(
    pid: int, output: Path, duration: float, rate: int, extra: Sequence[str]
) -> subprocess.Popen[bytes] | None:
    exe = _py_spy()
    if exe is None:
        print("  (py-spy not found: pip install py-spy into the venv; not profiling)")
        return None
    command = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(duration)))]
    command += ["--rate", str(rate), "--format", "raw", "--threads", "--nonblocking"]
    command += ["-o", str(output)]
    command += extra
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return path.removeprefix(str(ROOT) + "/")


def _frame_name(frame: str, with_line: bool) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    where = _short_path(match["file"])
    if with_line and match["line"]:
        where += f":{match['line']}"
    return f"{match['func']} ({where})"


def _package(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = _short_path(match["file"])
    parts = path.split("/")
    if parts[0] == "tessera" and len(parts) > 2:
        return "/".join(parts[:2])
    if parts[0] in ("", ".") or len(parts) == 1:
        return "stdlib:" + parts[-1].removesuffix(".py")
    if parts[0].startswith("python3") or parts[0] in ("asyncio", "concurrent", "threading.py"):
        return "stdlib:" + parts[0]
    return parts[0]


# Leaf frames where a thread sits waiting rather than running (py-spy's own idle detection
# misses these here), and frames every stack shares, which say nothing about the hot path.
_IDLE_LEAVES = ("Condition.wait (threading.py", "Event.wait (threading.py", "select (selectors.py")
_BOILERPLATE: tuple[str, ...] = (
    "threading.py",
    "typer/",
    "tessera/cli.py",
    "uvicorn/main.py",
    "uvicorn/server.py",
    "uvicorn/_compat.py",
    "asyncio/runners.py",
    "anyio/_backends/_asyncio.py",
    "queue.py",
    "(tessera)",
)
_THREAD = re.compile(r"^thread \(\d+\): ?(?P<name>.*)$")


def _thread_name(frame: str) -> str:
    match = _THREAD.match(frame)
    return (match["name"] or "thread") if match else frame


def summarize_profile(path: Path, seconds: float, rate: int, top: int = 20) -> str:
    """Hot spots from py-spy raw output (`--threads`): own (leaf) and inclusive samples as a
    share of the busy samples, i.e. excluding threads parked in a wait, and per thread."""
    stacks: list[tuple[str, list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = stack.split(";")
        thread = _thread_name(frames[0]) if frames[0].startswith("thread") else "?"
        body = [f for f in frames if not f.startswith(("thread (", "process "))]
        if body:
            stacks.append((thread, body, int(number)))
    total = sum(count for _, _, count in stacks)
    busy_stacks = [s for s in stacks if not s[1][-1].startswith(_IDLE_LEAVES)]
    busy = sum(count for _, _, count in busy_stacks)
    if not busy:
        return f"{path}: no busy samples"
    possible = seconds * rate
    threads: Counter[str] = Counter()
    idle_threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    own_lines: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    per_thread_own: dict[str, Counter[str]] = defaultdict(Counter)
    for thread, _, count in stacks:
        idle_threads[thread] += count
    for thread, body, count in busy_stacks:
        threads[thread] += count
        idle_threads[thread] -= count
        leaf = body[-1]
        own[_frame_name(leaf, False)] += count
        own_lines[_frame_name(leaf, True)] += count
        packages[_package(leaf)] += count
        per_thread_own[thread][_frame_name(leaf, False)] += count
        for name in {_frame_name(f, False) for f in body}:
            if not any(marker in name for marker in _BOILERPLATE):
                inclusive[name] += count

    def table(title: str, counter: Counter[str], n: int = top) -> list[str]:
        rows = [f"  {title}"]
        for name, count in counter.most_common(n):
            rows.append(f"    {100 * count / busy:5.1f}%  {name}")
        return rows

    out = [
        f"profile {path.name}: {total} samples over ~{seconds:.0f} s at {rate} Hz, "
        f"{busy} busy (not parked in a wait); shares are of the busy samples",
        "  busy time per thread, as a share of one core (waiting for the GIL counts as busy):",
    ]
    for thread, count in threads.most_common():
        out.append(
            f"    {100 * count / possible:5.1f}%  {thread}"
            f"  (+{100 * idle_threads[thread] / possible:.0f}% parked)"
        )
    out += table("own time by package/module:", packages, 12)
    out += table("own time by function:", own)
    out += table("own time by line:", own_lines, 15)
    out += table("inclusive time by function (with what it calls):", inclusive, 30)
    for thread, counter in sorted(per_thread_own.items(), key=lambda kv: -threads[kv[0]])[:3]:
        out += table(f"own time in {thread}:", counter, 12)
    return "\n".join(out)


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
                profiler = start_profiler(spec.server_pid, output, spec.duration, rate, extra)
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


def _read_stored_rows(database: Path, like: str, limit: int) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        query = (
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE message_id LIKE ? "
            "ORDER BY seq LIMIT ?"
        )
        return db.execute(query, (like, limit)).fetchall()


def _fresh_database(workdir: Path, name: str, server_db: Path) -> Path:
    """A new database with the server's schema (via `tessera migrate`) and its sources."""
    database = workdir / name
    run_tessera(database, "migrate")
    with (
        contextlib.closing(sqlite3.connect(server_db)) as source,
        contextlib.closing(sqlite3.connect(database)) as target,
    ):
        rows = source.execute("SELECT * FROM sources").fetchall()
        marks = ", ".join("?" for _ in rows[0])
        target.executemany(f"INSERT INTO sources VALUES ({marks})", rows)
        target.commit()
    return database


def _chunks(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def ceiling_sqlite3(database: Path, rows: Sequence[tuple[Any, ...]], per_commit: int) -> float:
    """Rows/s of sqlite3 executemany with the server's pragmas and statement."""
    db = sqlite3.connect(database, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("PRAGMA foreign_keys=ON")
        started = time.perf_counter()
        for chunk in _chunks(rows, per_commit):
            db.execute("BEGIN")
            db.executemany(INSERT_SQL, chunk)
            db.execute("COMMIT")
        elapsed = time.perf_counter() - started
        stored = db.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        db.close()
    if stored != len(rows):
        raise RuntimeError(f"the ceiling stored {stored} rows of {len(rows)}")
    return len(rows) / elapsed


def ceiling_append_events(
    database: Path, rows: Sequence[tuple[Any, ...]], per_commit: int
) -> float:
    """Rows/s of tessera's own `append_events` (one executemany a transaction) on the rows."""
    from tessera.eventlog.service import NewEvent, append_events
    from tessera.store import create_store_engine

    def when(text: str | None) -> datetime | None:
        return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)

    events = [
        NewEvent(
            source_id=row[0],
            message_id=row[1],
            type=row[2],
            name=row[3],
            user_id=row[4],
            anonymous_id=row[5],
            timestamp=when(row[6]),  # type: ignore[typeddict-item]
            original_timestamp=when(row[7]),
            sent_at=when(row[8]),
            received_at=when(row[9]),  # type: ignore[typeddict-item]
            payload=row[10],
        )
        for row in rows
    ]
    engine = create_store_engine(f"sqlite:///{database}", sqlite_synchronous="FULL")
    try:
        with engine.begin() as conn:  # connect (pragmas) outside the timing
            pass
        started = time.perf_counter()
        for chunk in _chunks(events, per_commit):
            with engine.begin() as conn:
                append_events(conn, chunk)
        elapsed = time.perf_counter() - started
    finally:
        engine.dispose()
    return len(events) / elapsed


def measure_ceiling(workdir: Path, server_db: Path, like: str, limit: int) -> dict[str, Any]:
    rows = _read_stored_rows(server_db, like, limit)
    if not rows:
        raise RuntimeError("no stored batch rows to measure the ceiling with")
    sql_db = _fresh_database(workdir, "ceiling-sqlite3.db", server_db)
    core_db = _fresh_database(workdir, "ceiling-sqlalchemy.db", server_db)
    big_db = _fresh_database(workdir, "ceiling-sqlite3-1000.db", server_db)
    return {
        "rows": len(rows),
        "payload_bytes": sum(len(row[10]) for row in rows) // len(rows),
        "sqlite3_100": ceiling_sqlite3(sql_db, rows, 100),
        "sqlalchemy_100": ceiling_append_events(core_db, rows, 100),
        "sqlite3_1000": ceiling_sqlite3(big_db, rows, 1000),
    }


# --------------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "commit": commit,
    }


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _cpu_line(result: dict[str, Any]) -> str:
    others = result["machine_busy_cores"] - result["server_cores"] - result["driver_cores"]
    return (
        f"CPU (cores busy): server {result['server_cores']:.2f} "
        f"(event-loop thread {result['server_loop_cores']:.2f}), "
        f"driver {result['driver_cores']:.2f}, other processes {max(0.0, others):.2f}"
    )


def _statuses(result: dict[str, Any]) -> str:
    others = {k: v for k, v in result["window_status"].items() if k != 200}
    too_many = others.pop(429, 0)
    text = f"429: {too_many}"
    if others:
        text += ", other non-200: " + ", ".join(f"{k}: {v}" for k, v in sorted(others.items()))
    return text


def _latency(result: dict[str, Any]) -> str:
    return (
        f"p50 {result['p50_ms']:.1f} ms  p90 {result['p90_ms']:.1f} ms  "
        f"p99 {result['p99_ms']:.1f} ms  max {result['max_ms']:.1f} ms"
    )


def summary_lines(
    phases: dict[str, dict[str, Any]], ceiling: dict[str, Any] | None, verified: list[str]
) -> list[str]:
    batch, single, paced = phases.get("batch"), phases.get("single"), phases.get("paced")
    lines: list[str] = []
    targets = ["targets:"]
    if batch is not None:
        batch_rate = batch["events_ok"] / batch["window_s"]
        lines += [
            f"batch  /v1/batch ({batch['connections']} connections, {batch['events_per_request']} "
            f"events/request, ~{batch['event_bytes']} B/event):",
            f"  {batch_rate:,.0f} events/s  ({batch['requests_ok'] / batch['window_s']:,.1f} "
            f"requests/s; per request p50 {batch['p50_ms']:.1f} ms, "
            f"p99 {batch['p99_ms']:.1f} ms; {_statuses(batch)})",
            f"  {_cpu_line(batch)}",
        ]
        targets.append(
            f"  batch  >= {TARGET_BATCH_EVENTS_PER_S:,} events/s: {batch_rate:,.0f}  "
            f"{_mark(batch_rate >= TARGET_BATCH_EVENTS_PER_S)}"
        )
    if single is not None:
        single_rate = single["requests_ok"] / single["window_s"]
        lines += [
            f"single /v1/track, closed loop ({single['connections']} connections, each sends "
            "again on every reply):",
            f"  {single_rate:,.0f} requests/s  {_latency(single)}  ({_statuses(single)})",
            f"  {_cpu_line(single)}",
        ]
        targets.append(
            f"  single >= {TARGET_SINGLE_REQUESTS_PER_S:,} requests/s (closed loop): "
            f"{single_rate:,.0f}  {_mark(single_rate >= TARGET_SINGLE_REQUESTS_PER_S)}"
        )
    if paced is not None:
        achieved = paced["requests_ok"] / paced["window_s"]
        lines += [
            f"single /v1/track, open loop at {paced['rate']:,.0f} requests/s offered "
            f"({paced['connections']} connections; latency from the scheduled start, so "
            "queueing counts):",
            f"  {achieved:,.0f} requests/s  {_latency(paced)}  ({_statuses(paced)}; "
            f"most waiting for a connection: {paced['max_backlog']})",
            f"  {_cpu_line(paced)}",
        ]
    latency = paced or single
    if latency is not None:
        p99 = latency["p99_ms"]
        loop = "open loop" if latency is paced else "closed loop"
        targets.append(
            f"  single p99 <= {TARGET_SINGLE_P99_MS:g} ms ({loop}): {p99:.1f} ms  "
            f"{_mark(p99 <= TARGET_SINGLE_P99_MS)}"
        )
    if ceiling is not None and batch is not None:
        ratio = batch["events_ok"] / batch["window_s"] / ceiling["sqlite3_100"]
        lines += [
            f"ceiling: the server's batch rows ({ceiling['rows']:,}, "
            f"~{ceiling['payload_bytes']} B payload) inserted directly, WAL + synchronous=FULL:",
            f"  sqlite3 executemany, 100-row transactions:    {ceiling['sqlite3_100']:,.0f} rows/s",
            f"  tessera append_events, 100-row transactions: "
            f"{ceiling['sqlalchemy_100']:,.0f} rows/s",
            f"  sqlite3 executemany, 1000-row transactions:   "
            f"{ceiling['sqlite3_1000']:,.0f} rows/s",
            f"  server / ceiling (batch events/s / sqlite3 100-row rows/s): {ratio:.2f}",
        ]
    lines += targets
    lines += ["stored = acknowledged:", *(f"  {line}" for line in verified)]
    for result in phases.values():
        for status, body in result["error_samples"].items():
            lines.append(f"  sample {result['name']} {status} body: {body}")
        if result["disconnects"] or result["still_in_flight"] or result["unsent"]:
            lines.append(
                f"  {result['name']}: {result['disconnects']} disconnects, "
                f"{result['still_in_flight']} requests unanswered and {result['unsent']} "
                "never sent at the end"
            )
    return lines


RESULTS_HEADER = """# Ingest benchmark results

Each section is one run of `.venv/bin/python benchmarks/ingest.py --record` (see the
docstring of `benchmarks/ingest.py` for what is measured and how). Figures are from whatever
machine ran them, on SQLite with synchronous=FULL; "other processes" is CPU used by anything
else on the machine during the measured window (a concurrent test run makes figures noisy).
Targets: >= 20,000 events/s through /v1/batch; >= 2,000 single calls/s with p99 <= 25 ms.
"""


def record(lines: list[str], args: argparse.Namespace, info: dict[str, str]) -> None:
    if not RESULTS.exists():
        RESULTS.write_text(RESULTS_HEADER)
    section = [
        "",
        f"## {info['date']}",
        "",
        f"- machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}",
        f"- commit: {info['commit']}",
        *[f"- setting from the environment: {k}={v}" for k, v in tessera_overrides().items()],
        f"- run: warm-up {args.warmup:g} s, {args.duration:g} s per phase, "
        f"{args.batch_connections} batch / {args.single_connections} single connections, "
        f"open loop at {args.single_rate:g}/s on {args.paced_connections}"
        + (", profiled with py-spy" if args.profile else ""),
        "",
        "```",
        *lines,
        "```",
        "",
    ]
    with RESULTS.open("a") as results:
        results.write("\n".join(section))
    print(f"appended to {RESULTS.relative_to(ROOT)}")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark `tessera serve` ingest on SQLite (see the module docstring)."
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--quick", action="store_true", help="short run: 1 s warm-up, 3 s phases")
    parser.add_argument("--batch-connections", type=int, default=8)
    parser.add_argument(
        "--single-connections", type=int, default=32, help="closed-loop single-call connections"
    )
    parser.add_argument(
        "--single-rate",
        type=float,
        default=TARGET_SINGLE_REQUESTS_PER_S,
        help="requests/s offered in the open-loop single-call phase (0 skips it)",
    )
    parser.add_argument(
        "--paced-connections", type=int, default=64, help="connections of the open-loop phase"
    )
    parser.add_argument("--batch-size", type=int, default=100, help="events per batch request")
    parser.add_argument(
        "--ceiling-rows", type=int, default=300_000, help="most stored rows reused for the ceiling"
    )
    parser.add_argument(
        "--phases",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=["batch", "single", "paced"],
        help="comma-separated subset of batch,single,paced to run (the ceiling needs batch)",
    )
    parser.add_argument("--record", action="store_true", help="append the figures to RESULTS.md")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy the server into DIR/<phase>.txt"
    )
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument(
        "--profile-gil", action="store_true", help="py-spy --gil: only the thread holding the GIL"
    )
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="py-spy --native: C frames too (slow: perturbs the server a lot)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    unknown = set(args.phases) - {"batch", "single", "paced"}
    if unknown or not args.phases:
        parser.error(f"--phases takes batch, single and paced; got {args.phases}")
    if args.quick:
        args.duration, args.warmup = min(args.duration, 3.0), min(args.warmup, 1.0)
        args.ceiling_rows = min(args.ceiling_rows, 50_000)
    return args


def _verify(server: Server, label: str, like: str, acked: int) -> str:
    stored = server.count_events(like)
    verdict = "OK" if stored == acked else "MISMATCH"
    return f"{label}: {stored:,} stored, {acked:,} acknowledged with 200  {verdict}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    print(
        f"tessera ingest benchmark: {info['date']}, {info['cores']} cores ({info['cpu']}), "
        f"Python {info['python']}, commit {info['commit']}"
    )
    overrides = tessera_overrides()
    if overrides:
        print(
            "settings from the environment: " + ", ".join(f"{k}={v}" for k, v in overrides.items())
        )
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    try:
        return _run(args, info, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, info: dict[str, str], workdir: Path) -> int:
    server = Server(workdir)
    phases: dict[str, dict[str, Any]] = {}
    verified: list[str] = []
    try:
        server.start()
        print(f"server: pid {server.pid}, http://127.0.0.1:{server.port}, {server.database}")
        common = {
            "host": "127.0.0.1",
            "port": server.port,
            "write_key": server.write_key,
            "warmup": args.warmup,
            "duration": args.duration,
            "batch_size": args.batch_size,
            "server_pid": server.pid,
        }
        specs = [
            PhaseSpec(
                "batch", "batch", connections=args.batch_connections, id_prefix="b-", **common
            ),
            PhaseSpec(
                "single", "single", connections=args.single_connections, id_prefix="s-", **common
            ),
        ]
        if args.single_rate > 0:
            specs.append(
                PhaseSpec(
                    "paced",
                    "single",
                    connections=args.paced_connections,
                    id_prefix="p-",
                    rate=args.single_rate,
                    **common,
                )
            )
        specs = [spec for spec in specs if spec.name in args.phases]
        profiler_args = ["--gil"] * args.profile_gil + ["--native"] * args.profile_native
        for spec in specs:
            print(
                f"{spec.name} phase: {args.warmup:g} s warm-up + {args.duration:g} s ...",
                flush=True,
            )
            result = run_phase(spec, args.profile, args.profile_rate, profiler_args)
            phases[spec.name] = result
            like = f"{spec.id_prefix}%"
            verified.append(_verify(server, spec.name, like, result["total_events_ok"]))
    except Exception:
        print(f"server log (tail):\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        server.stop()
        if server.process is not None and server.process.returncode not in (0, None):
            print(f"note: the server exited with {server.process.returncode}")
    ceiling = None
    if "batch" in phases and args.ceiling_rows > 0:
        print("ceiling: direct inserts ...", flush=True)
        ceiling = measure_ceiling(workdir, server.database, "b-%", args.ceiling_rows)
    lines = summary_lines(phases, ceiling, verified)
    print()
    print("\n".join(lines))
    if args.profile:
        for name in phases:
            path = args.profile / f"{name}.txt"
            if path.exists():
                text = summarize_profile(path, args.duration, args.profile_rate)
                (args.profile / f"{name}.summary.txt").write_text(text + "\n")
                print()
                print(text)
    if args.record:
        record(lines, args, info)
    return 0 if all(line.endswith("OK") for line in verified) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the server was stopped", file=sys.stderr)
        sys.exit(130)
