"""Identity benchmark, part 2: how soon an event shows in its profile under load (a driver
process sends demo traffic open loop and probes identify + profile lookups)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import math
import os
import re
import sys
import time
import urllib.parse
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
from harness import (
    CpuSnapshot,
    pct,
)
from harness_load import OpenLoop
from harness_profile import finish_spy, start_spy, write_summary
from harness_server import (
    Server,
    child_main,
    create_token,
    event_loop_factory,
    http_head,
    receive,
    run_child,
    stop_child,
)


@dataclasses.dataclass(frozen=True)
class LatencySpec:
    host: str
    port: int
    write_key: str
    token: str
    server_pid: int
    seed: int
    region: str
    rate: float  # background events/s
    batch_size: int
    connections: int
    probe_rate: float
    poll_interval: float
    probe_timeout: float
    warmup: float
    duration: float
    tag: str


def background_bodies(spec: LatencySpec) -> list[tuple[bytes, int]]:
    """Enough /v1/batch bodies of demo messages for the whole run, in timestamp order."""
    from tessera.demo import generate
    from tessera.demo.loader import encode_batches

    wanted = spec.rate * (spec.warmup + spec.duration + 10)
    people = max(100, math.ceil(wanted / 19))
    dataset = generate(seed=spec.seed, people=people, region=spec.region)
    return list(encode_batches(dataset.messages, spec.batch_size))


class LatencyRun(OpenLoop):
    """One latency measurement: background batches (open loop), probes, and a /metrics
    sampler for the processor's lag, all on one event loop."""

    def __init__(self, spec: LatencySpec, bodies: list[tuple[bytes, int]]) -> None:
        super().__init__(
            host=spec.host,
            port=spec.port,
            write_key=spec.write_key,
            token=spec.token,
            rate=spec.rate,
            batch_size=spec.batch_size,
            warmup=spec.warmup,
            duration=spec.duration,
            bodies=bodies,
            probe_rate=spec.probe_rate,
        )
        self.spec = spec
        self.lags: list[tuple[float, float, float]] = []  # (since t0, events, oldest seconds)
        self.metrics = self.connection()

    def next_body(self) -> tuple[bytes, int]:
        body, count = self.bodies[self.sent % len(self.bodies)]
        lap = self.sent // len(self.bodies)
        self.sent += 1
        if lap:  # fresh messageIds, or the server would dedupe the second lap away
            body = body.replace(b'"messageId":"', f'"messageId":"lap{lap}-'.encode())
        return body, count

    # -- probes ------------------------------------------------------------------------------

    async def probe(self, n: int, counted: bool) -> None:
        """Identify a fresh user, then poll its profile until the trait shows."""
        spec = self.spec
        conn = self.pool.pop() if self.pool else self.connection()
        user = f"probe-{spec.tag}-{n}"
        record: dict[str, Any] = {"counted": counted, "polls": 0}
        self.probes.append(record)
        body = orjson.dumps({"userId": user, "messageId": user, "traits": {"bench_probe": n}})
        path = "/api/v1/profiles/" + urllib.parse.quote(f"user_id:{user}", safe=":@")
        get = http_head("GET", path, self.host, self.bearer)
        try:
            sent_at = time.perf_counter()
            head = http_head("POST", "/v1/identify", self.host, self.basic, len(body))
            status, reply = await conn.request(head, body)
            record["ack"] = time.perf_counter() - sent_at
            if status != 200:
                record["error"] = f"identify {status}: {reply[:200].decode(errors='replace')}"
                return

            def seen(reply: bytes) -> bool:
                return bool((orjson.loads(reply).get("traits") or {}).get("bench_probe") == n)

            await self.poll(
                conn,
                get,
                sent_at,
                record,
                seen,
                interval=spec.poll_interval,
                timeout=spec.probe_timeout,
            )
        finally:
            self.pool.append(conn)

    # -- the processor's lag, from /metrics ---------------------------------------------------

    async def read_lag(self) -> tuple[float, float]:
        _, text = await self.metrics.request(http_head("GET", "/metrics", self.host, self.bearer))
        found = dict(re.findall(rb"^(tessera_processor_\w+) (\S+)$", text, re.M))
        return (
            float(found.get(b"tessera_processor_lag_events", b"nan")),
            float(found.get(b"tessera_processor_oldest_waiting_seconds", b"nan")),
        )

    async def sampler(self) -> None:
        while not self.stopping:
            events, oldest = await self.read_lag()
            self.lags.append((time.perf_counter() - self.t0, events, oldest))
            await asyncio.sleep(0.5)

    async def catch_up(self, limit: float = 120.0) -> float:
        """Seconds from the end of the window (when the load stopped) until the processor
        has applied everything."""
        while time.perf_counter() - self.window[1] < limit:
            events, _ = await self.read_lag()
            if events == 0:
                return time.perf_counter() - self.window[1]
            await asyncio.sleep(0.1)
        return math.nan

    # -- the run -----------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        senders = self.start_senders(self.spec.connections)
        others = [
            asyncio.create_task(self.scheduler()),
            asyncio.create_task(self.prober()),
            asyncio.create_task(self.sampler()),
        ]
        await asyncio.sleep(self.window[0] - time.perf_counter())
        before = CpuSnapshot.take(self.spec.server_pid)
        await asyncio.sleep(self.window[1] - time.perf_counter())
        after = CpuSnapshot.take(self.spec.server_pid)
        unsent = await self.stop(senders, others)
        catch_up = await self.catch_up()
        self.metrics.close()
        return self.figures(before, after, unsent, catch_up)

    def figures(
        self, before: CpuSnapshot, after: CpuSnapshot, unsent: int, catch_up: float
    ) -> dict[str, Any]:
        spec, seconds = self.spec, self.spec.duration
        hz = os.sysconf("SC_CLK_TCK")
        counted = [p for p in self.probes if p["counted"]]
        visible = sorted(p["visible"] for p in counted if "visible" in p)
        acks = sorted(p["ack"] for p in counted if "ack" in p)
        lags = [(e, o) for t, e, o in self.lags if spec.warmup <= t <= spec.warmup + seconds]
        latencies = sorted(self.latencies)
        return {
            "rate": spec.rate,
            "probe_rate": spec.probe_rate,
            "poll_interval": spec.poll_interval,
            "connections": spec.connections,
            "window_s": seconds,
            "events_per_s": self.events_ok / seconds,
            "requests_per_s": len(latencies) / seconds,
            "batch_p50": pct(latencies, 0.5),
            "batch_p99": pct(latencies, 0.99),
            "bg_status": dict(self.statuses),
            "max_backlog": self.max_backlog,
            "unsent": unsent,
            "probes": len(counted),
            "probe_errors": [p["error"] for p in counted if "error" in p],
            "invisible": sum(1 for v in visible if math.isinf(v)),
            "visible_p50": pct(visible, 0.5),
            "visible_p95": pct(visible, 0.95),
            "visible_p99": pct(visible, 0.99),
            "visible_max": visible[-1] if visible else math.nan,
            "ack_p50": pct(acks, 0.5),
            "ack_p99": pct(acks, 0.99),
            "polls_per_s": sum(p["polls"] for p in counted) / seconds,
            "lag_max": max((e for e, _ in lags), default=math.nan),
            "lag_mean": sum(e for e, _ in lags) / len(lags) if lags else math.nan,
            "oldest_max": max((o for _, o in lags), default=math.nan),
            "lag_end": lags[-1][0] if lags else math.nan,
            "catch_up_s": catch_up,
            "errors": self.errors,
            "server_cores": (after.server_all - before.server_all) / hz / seconds,
            "driver_cores": (after.driver - before.driver) / seconds,
            "machine_cores": (after.machine_busy - before.machine_busy) / hz / seconds,
        }


def _latency_main(spec: LatencySpec, conn: Connection) -> None:
    def work(conn: Connection) -> dict[str, Any]:
        bodies = background_bodies(spec)
        gc.collect()
        gc.freeze()  # the bodies live for the whole run: keep the collector off them
        conn.send(("ready", sum(count for _, count in bodies)))
        conn.recv()  # "go"
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(LatencyRun(spec, bodies).run())

    child_main(work, conn)


def part_latency(args: argparse.Namespace, workdir: Path, region: str) -> dict[str, Any]:
    directory = workdir / "latency"
    directory.mkdir()
    server = Server(directory)
    token = create_token(server.database)
    result: dict[str, Any] | None = None
    process = None
    spy = None
    try:
        server.start()
        print(f"latency: server pid {server.pid}, http://127.0.0.1:{server.port}")
        spec = LatencySpec(
            host="127.0.0.1",
            port=server.port,
            write_key=server.write_key,
            token=token,
            server_pid=server.pid,
            seed=args.seed + 1,
            region=region,
            rate=args.background_rate,
            batch_size=args.batch_size,
            connections=args.background_connections,
            probe_rate=args.probe_rate,
            poll_interval=args.poll_interval,
            probe_timeout=args.probe_timeout,
            warmup=args.warmup,
            duration=args.duration,
            tag=uuid.uuid4().hex[:8],
        )
        events, conn, process = run_child(_latency_main, (spec,), "latency-driver", 300)
        print(
            f"  driver ready ({events:,} demo events to send); {args.background_rate:,.0f} "
            f"events/s + {args.probe_rate:g} probes/s: {args.warmup:g} s warm-up + "
            f"{args.duration:g} s ...",
            flush=True,
        )
        conn.send("go")
        if args.profile:
            time.sleep(args.warmup)
            spy = start_spy(
                server.pid, args.profile / "latency.txt", args.profile_rate, args.duration
            )
        _, result = receive(conn, process, args.warmup + args.duration + args.probe_timeout + 300)
    except Exception:
        print(f"server log (tail):\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        if process is not None:
            stop_child(process, result is not None)
        finish_spy(spy)
        server.stop()
    assert result is not None
    output = args.profile / "latency.txt" if args.profile else None
    text = write_summary(output, args.duration, args.profile_rate)
    if text is not None:
        result["profile_summary"] = text
    return result
