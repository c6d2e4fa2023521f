"""Does a batch without messageIds ingest as fast as one with them? Both against one server.

    .venv/bin/python benchmarks/ingest_message_ids.py             # about 1.5 minutes
    .venv/bin/python benchmarks/ingest_message_ids.py --quick     # about 30 s
    .venv/bin/python benchmarks/ingest_message_ids.py --help

It starts `tessera serve` with `TESSERA_PROCESSOR_MODE=off` (the gateway alone) on a fresh
SQLite file in a temporary directory, on loopback, and drives POST /v1/batch with 100-event
batches as `curl` users send them (track calls with properties, no `sentAt`, no
`timestamp`) on 8 keep-alive connections, one request in flight each, from a separate
process. Two cases alternate, `--repeats` times each, so both see the same machine and a
database of about the same size:

- `client`: every event carries a unique `messageId` (`--client-ids counter`, `b<n>`, as a
  load generator numbers them, or `uuid`, random UUIDs as the Segment SDKs send);
- `generated`: no `messageId`, so the server generates one per event.

Bodies are rendered from bytes before each window (only the ids differ), so the driver needs
a small fraction of a core. It prints events/s for each window, the median per case, and
the ratio generated/client; the target is >= 20,000 events/s in both cases on a quiet
2-core machine. Every acknowledged event must be stored: the events table is counted at the
end. The server is stopped (SIGINT, then SIGKILL) in a `finally`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

TARGET_EVENTS_PER_S = 20_000
BATCH_SIZE = 100
CONNECTIONS = 8


def event_templates() -> list[bytes]:
    """Track calls as JSON without their closing brace, ending in `,`, so an id can follow."""
    templates = []
    for n in range(16):
        message = {
            "type": "track",
            "userId": f"user-{n * 7919 % 5000}",
            "event": ("Product Viewed", "Product Added", "Order Completed")[n % 3],
            "properties": {
                "product_id": f"{10_000 + n * 37}",
                "category": "Games",
                "name": "Monopoly: 3rd Edition",
                "price": 19.99,
                "quantity": 1 + n % 3,
                "currency": "USD",
            },
            "context": {"ip": f"203.0.113.{n + 1}", "locale": "en-US"},
        }
        templates.append(json.dumps(message, separators=(",", ":")).encode()[:-1] + b",")
    return templates


def _closed(template: bytes) -> bytes:
    return template[:-1] + b"}"


class Load:
    """One window's requests, rendered before it starts, and its counters."""

    def __init__(self, *, case: str, client_ids: str, requests: int, head: bytes, seed: int):
        templates = event_templates()
        bodies = []
        for r in range(requests):
            events = []
            for i in range(BATCH_SIZE):
                template = templates[(r + i) % len(templates)]
                if case == "generated":
                    events.append(_closed(template))
                    continue
                if client_ids == "uuid":
                    message_id = str(uuid.uuid4()).encode()
                else:
                    message_id = f"b{seed}-{r * BATCH_SIZE + i}".encode()
                events.append(template + b'"messageId":"' + message_id + b'"}')
            body = b'{"batch":[' + b",".join(events) + b"]}"
            bodies.append(head + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.requests = bodies
        self.sent = 0
        self.status: Counter[int] = Counter()
        self.events_ok = 0
        self.measuring = False
        self.stopping = False
        self.busy = 0
        self.error = ""

    def next_request(self) -> bytes | None:
        if self.stopping or self.sent >= len(self.requests):
            return None
        self.sent += 1
        return self.requests[self.sent - 1]


class Client(asyncio.Protocol):
    """One keep-alive connection, one request in flight; replies read by Content-Length."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.need = -1
        self.body_at = 0
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self) -> None:
        request = self.load.next_request()
        if request is None or self.transport is None:
            return
        self.load.busy += 1
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            self.status = int(head[9:12])
            at = head.index(b"content-length:") + 15
            stop = head.find(b"\r\n", at)
            self.body_at = end + 4
            self.need = self.body_at + int(head[at : stop if stop >= 0 else None])
        if len(self.buffer) < self.need:
            return
        load = self.load
        load.busy -= 1
        load.status[self.status] += 1
        if self.status == 200 and load.measuring:
            load.events_ok += BATCH_SIZE
        elif self.status != 200 and not load.error:
            load.error = bytes(self.buffer[self.body_at : self.need])[:300].decode("replace")
        del self.buffer[: self.need]
        self.need = -1
        self.send()


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process `pid`, all its threads."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _window(
    load: Load, *, port: int, server_pid: int, warmup: float, duration: float, report: Connection
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(CONNECTIONS):
        client = Client(load)
        await loop.create_connection(lambda c=client: c, "127.0.0.1", port)  # type: ignore[misc]
        clients.append(client)
    for client in clients:
        client.send()
    await asyncio.sleep(warmup)
    load.measuring = True
    report.send(("measuring", None))
    started, server_cpu = time.perf_counter(), _cpu_seconds(server_pid)
    await asyncio.sleep(duration)
    load.measuring = False
    window = time.perf_counter() - started
    server_cpu = _cpu_seconds(server_pid) - server_cpu
    load.stopping = True
    deadline = time.monotonic() + 30
    while load.busy and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    if load.sent >= len(load.requests):
        raise RuntimeError("the driver ran out of pre-rendered requests; raise the estimate")
    return {
        "events_per_s": load.events_ok / window,
        "server_cores": server_cpu / window,
        "status": dict(load.status),
        "acked": load.status[200] * BATCH_SIZE,
        "error": load.error,
        "driver_cpu_s": sum(os.times()[:2]),
        "window_s": window,
    }


def _driver(args: dict[str, Any], report: Connection) -> None:
    """The driver process: render one window's requests, run it, send the figures back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        auth = base64.b64encode(f"{args['write_key']}:".encode()).decode()
        head = (
            f"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1:{args['port']}\r\n"
            f"Authorization: Basic {auth}\r\nContent-Type: application/json\r\n"
            "Content-Length: "
        ).encode()
        seconds = args["warmup"] + args["duration"]
        requests = int(seconds * args["max_events_per_s"] / BATCH_SIZE) + CONNECTIONS
        load = Load(
            case=args["case"],
            client_ids=args["client_ids"],
            requests=requests,
            head=head,
            seed=args["seed"],
        )
        cpu_before = sum(os.times()[:2])
        result = asyncio.run(
            _window(
                load,
                port=args["port"],
                server_pid=args["server_pid"],
                warmup=args["warmup"],
                duration=args["duration"],
                report=report,
            )
        )
        result["driver_cores"] = (result.pop("driver_cpu_s") - cpu_before) / seconds
        report.send(("result", result))
    except BaseException as exc:
        report.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


def _tessera() -> list[str]:
    script = Path(sys.executable).parent / "tessera"
    if script.exists():
        return [str(script)]
    found = shutil.which("tessera")
    return [found] if found else [sys.executable, "-m", "tessera.cli"]


class Server:
    """`tessera serve` with the processor off, on a fresh SQLite file in `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self.database = workdir / "tessera.db"
        self.log_path = workdir / "server.log"
        self.env = {
            **os.environ,
            "TESSERA_DATABASE_URL": f"sqlite:///{self.database}",
            "TESSERA_LOG_LEVEL": "warning",
            "TESSERA_PROCESSOR_MODE": "off",
        }
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.process: subprocess.Popen[bytes] | None = None
        self.write_key = ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        created = subprocess.run(
            [*_tessera(), "source", "create", "bench"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        self.write_key = created.stdout.strip().splitlines()[-1].strip()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*_tessera(), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"tessera serve exited at start:\n{self.log_tail()}")
            with contextlib.suppress(urllib.error.URLError, OSError):
                url = f"http://127.0.0.1:{self.port}/healthz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"tessera serve did not start:\n{self.log_tail()}")
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

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
        return "(no log)"

    def count_events(self) -> int:
        with contextlib.closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


def start_profiler(pid: int, output: Path, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """py-spy over the measured window, every thread, idle
    ones too: the writer thread waiting on SQLite (fsync) shows where commits go."""
    exe = Path(sys.executable).parent / "py-spy"
    command = [str(exe) if exe.exists() else "py-spy", "record", "--pid", str(pid)]
    command += ["--duration", str(max(1, round(args.duration))), "--rate", "200"]
    command += ["--format", "raw", "--threads", "--idle", "--nonblocking", "-o", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(path: Path, top: int = 8) -> str:
    """Per thread: its samples, and the functions of tessera (and sqlite3/uuid/os calls)
    that its stacks spend the most samples in, inclusive, as a share of that thread."""
    threads: Counter[str] = Counter()
    inclusive: dict[str, Counter[str]] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread ")), "thread ?")
        thread = thread.split(":", 1)[-1].strip().strip('"') or thread
        threads[thread] += int(number)
        names = set()
        for frame in frames:
            func, _, where = frame.partition(" (")
            if "tessera/" in where or func in ("uuid4", "urandom", "executemany", "wait"):
                names.add(f"{func} ({where.rsplit('/', 1)[-1].split(':')[0]}")
        for name in names:
            inclusive.setdefault(thread, Counter())[name] += int(number)
    lines = [f"  profile {path}:"]
    for thread, samples in threads.most_common(3):
        lines.append(f"    thread {thread}: {samples} samples")
        for name, count in inclusive.get(thread, Counter()).most_common(top):
            lines.append(f"      {100 * count / samples:5.1f}%  {name}")
    return "\n".join(lines)


def run_window(server: Server, case: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    spec = {
        "case": case,
        "client_ids": args.client_ids,
        "port": server.port,
        "server_pid": server.pid,
        "write_key": server.write_key,
        "warmup": args.warmup,
        "duration": args.duration,
        "max_events_per_s": args.max_events_per_s,
        "seed": seed,
    }
    driver = context.Process(target=_driver, args=(spec, send), daemon=True)
    driver.start()
    profiler = None
    profile = (args.profile or Path()) / f"{case}.txt"
    try:
        limit = 120 + args.warmup + args.duration + args.max_events_per_s / 20_000 * 30
        for _ in range(2):
            if not receive.poll(limit):
                raise RuntimeError(f"the driver did not report within {limit:.0f} s")
            kind, value = receive.recv()
            if kind != "measuring":
                break
            if args.profile is not None and seed == 0:
                profiler = start_profiler(server.pid, profile, args)
        if kind != "result":
            raise RuntimeError(f"the driver failed: {value}")
        if profiler is not None and profiler.wait(60) == 0:
            print(summarize_profile(profile))
        return cast(dict[str, Any], value)
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.kill()
        driver.join(10)
        if driver.is_alive():
            driver.kill()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--repeats", type=int, default=4, help="windows per case (default 4)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each window")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per window")
    parser.add_argument(
        "--client-ids",
        choices=("counter", "uuid"),
        default="counter",
        help="messageIds of the `client` case: b<seed>-<n> (default) or random UUIDs",
    )
    parser.add_argument(
        "--max-events-per-s",
        type=int,
        default=60_000,
        help="requests are pre-rendered for this rate (default 60,000 events/s)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the server in each case's first window: DIR/<case>.txt, collapsed stacks",
    )
    parser.add_argument("--quick", action="store_true", help="2 repeats of 1 s + 4 s windows")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.duration = 2, 1.0, 4.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="tessera-message-ids-"))
    server = Server(workdir)
    rates: dict[str, list[float]] = {"client": [], "generated": []}
    acked = 0
    try:
        server.start()
        print(
            f"tessera serve (processor off) on 127.0.0.1:{server.port}, {server.database}; "
            f"{BATCH_SIZE}-event batches on {CONNECTIONS} connections, no sentAt; "
            f"client ids: {args.client_ids}"
        )
        for repeat in range(args.repeats):
            # Alternate which case goes first, so neither always meets the bigger database.
            order = ("client", "generated") if repeat % 2 == 0 else ("generated", "client")
            for case in order:
                result = run_window(server, case, args, seed=repeat)
                acked += result["acked"]
                rates[case].append(result["events_per_s"])
                others = {k: v for k, v in result["status"].items() if k != 200}
                print(
                    f"  {case:>9}  {result['events_per_s']:>9,.0f} events/s"
                    f"  server {result['server_cores']:.2f} cores,"
                    f" {result['events_per_s'] / max(result['server_cores'], 0.01):>7,.0f}"
                    f" events per server CPU-second; driver {result['driver_cores']:.2f} cores"
                    + (f"  non-200: {others} {result['error']!r}" if others else "")
                )
        stored = server.count_events()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    client = statistics.median(rates["client"])
    generated = statistics.median(rates["generated"])
    print(f"median  client ids ({args.client_ids}): {client:>9,.0f} events/s")
    print(f"median  generated ids:        {generated:>9,.0f} events/s")
    print(f"ratio   generated / client:   {generated / client:.2f}")
    print(
        f"target  >= {TARGET_EVENTS_PER_S:,} events/s in both cases: "
        + ("met" if min(client, generated) >= TARGET_EVENTS_PER_S else "not met")
    )
    print(f"stored {stored:,} events, acknowledged {acked:,}")
    return 0 if stored == acked else 1


if __name__ == "__main__":
    sys.exit(main())
