"""The pipeline benchmark's load generator, in a spawned process of its own: demo traffic
through /v1/batch at stepped rates (open loop, bodies built before each step), probes that
enter an audience and are polled through the profile API, and the processor's lag from
/readyz every `lag_interval` seconds."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import math
import os
import time
import urllib.parse
from multiprocessing.connection import Connection
from typing import Any

import orjson
from harness import TICK, children_of, cpu_ticks_of, machine_ticks, pct
from harness_load import OpenLoop
from harness_server import child_main, event_loop_factory, http_head

PROBE_EVENT = "Signed In"  # enters "signed in lately" (performed in the last 30 days)


@dataclasses.dataclass(frozen=True)
class DriverSpec:
    host: str
    port: int
    write_key: str
    token: str
    server_pid: int
    receiver_pid: int
    rates: list[float]  # events/s, one step each
    warmup: float
    duration: float
    batch_size: int
    connections: int
    people: int
    seed: int
    region: str
    probe_rate: float
    probe_audience: str  # the id of the audience a probe enters
    poll_interval: float
    probe_timeout: float
    lag_interval: float
    lag_limit: float  # a step is sustained when its lag p95 is within this (seconds)
    catch_up_limit: float
    stop_after_fail: bool
    tag: str


def demo_messages(spec: DriverSpec) -> list[bytes]:
    """The demo's journeys (anonymous browsing, sign-ups and logins, orders) as JSON, each
    message once, without its timestamps: sent now, the server stamps them as received, as
    an SDK's events arrive in real time. Every message keeps its messageId."""
    from tessera.demo import generate

    dataset = generate(seed=spec.seed, people=spec.people, region=spec.region)
    out = []
    for message in dataset.messages:
        for key in ("timestamp", "originalTimestamp", "sentAt"):
            message.pop(key, None)
        out.append(orjson.dumps(message))
    return out


def step_bodies(
    messages: list[bytes], start: int, count: int, batch_size: int, prefix: str
) -> tuple[list[tuple[bytes, int]], int]:
    """`count` events from `messages` (cyclically, from `start`) as /v1/batch bodies, each
    messageId prefixed so that every lap over the journeys is new to the server's dedupe;
    the bodies and where the next step starts."""
    marker = b'"messageId":"'
    n = len(messages)
    bodies = []
    for first in range(start, start + count, batch_size):
        parts = []
        for i in range(first, min(first + batch_size, start + count)):
            lap = i // n
            tag = marker + f"{prefix}{lap}-".encode()
            parts.append(messages[i % n].replace(marker, tag, 1))
        bodies.append((b'{"batch":[' + b",".join(parts) + b"]}", len(parts)))
    return bodies, start + count


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU ticks so far of each named process, this one and the machine."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            out[name] = cpu_ticks_of(pid)[1]
        except OSError:
            out[name] = math.nan
    usage = os.times()
    out["generator"] = (usage.user + usage.system) * TICK
    out["machine"] = machine_ticks()[0]
    return out


class Step(OpenLoop):
    """One rate: background batches (open loop), probes and lag samples on one event loop."""

    def __init__(self, spec: DriverSpec, rate: float, bodies: list[tuple[bytes, int]], k: int):
        super().__init__(
            host=spec.host,
            port=spec.port,
            write_key=spec.write_key,
            token=spec.token,
            rate=rate,
            batch_size=spec.batch_size,
            warmup=spec.warmup,
            duration=spec.duration,
            bodies=bodies,
            probe_rate=spec.probe_rate,
        )
        self.spec, self.k = spec, k
        self.lags: list[tuple[float, float, int]] = []  # (since t0, oldest seconds, events)
        self.readyz = self.connection()

    async def probe(self, n: int, counted: bool) -> None:
        """A new user signs in; poll its profile until it is in the probe audience."""
        spec = self.spec
        conn = self.pool.pop() if self.pool else self.connection()
        user = f"probe-{spec.tag}-{self.k}-{n}"
        record: dict[str, Any] = {"user": user, "counted": counted, "polls": 0}
        self.probes.append(record)
        message = {"type": "track", "event": PROBE_EVENT, "userId": user, "messageId": user}
        body = orjson.dumps({"batch": [message]})
        path = "/api/v1/profiles/" + urllib.parse.quote(f"user_id:{user}", safe=":@")
        get = http_head("GET", path, self.host, self.bearer)
        try:
            record["sent_wall"] = time.time()
            sent_at = time.perf_counter()
            head = http_head("POST", "/v1/batch", self.host, self.basic, len(body))
            status, reply = await conn.request(head, body)
            if status != 200:
                record["error"] = f"batch {status}: {reply[:200].decode(errors='replace')}"
                return
            await self.poll(
                conn,
                get,
                sent_at,
                record,
                lambda reply: _member(orjson.loads(reply), spec.probe_audience),
                interval=spec.poll_interval,
                timeout=spec.probe_timeout,
                slow_after=2.0,
            )
        finally:
            self.pool.append(conn)

    async def read_lag(self) -> tuple[float, int]:
        """(seconds the oldest event not fully processed has waited, events waiting): the
        later of the two stages, so the derived stage's lag counts when it is separate."""
        _, body = await self.readyz.request(http_head("GET", "/readyz", self.host, self.bearer))
        processor = orjson.loads(body).get("processor") or {}
        stages = [processor, processor.get("derived") or {}]
        oldest = max((s.get("oldest_waiting_seconds") or 0.0) for s in stages)
        return float(oldest), max(int(s.get("lag_events") or 0) for s in stages)

    async def sampler(self) -> None:
        while not self.stopping:
            at = time.perf_counter()
            oldest, events = await self.read_lag()
            self.lags.append((at - self.t0, oldest, events))
            await asyncio.sleep(max(0.0, at + self.spec.lag_interval - time.perf_counter()))

    async def catch_up(self) -> float:
        """Seconds from the end of the window until both stages have applied everything."""
        while time.perf_counter() - self.window[1] < self.spec.catch_up_limit:
            _, events = await self.read_lag()
            if events == 0:
                return time.perf_counter() - self.window[1]
            await asyncio.sleep(0.1)
        return math.nan

    async def run(self, report: Connection) -> dict[str, Any]:
        spec = self.spec
        senders = self.start_senders(spec.connections)
        others = [
            asyncio.create_task(self.scheduler()),
            asyncio.create_task(self.prober()),
            asyncio.create_task(self.sampler()),
        ]
        await asyncio.sleep(self.window[0] - time.perf_counter())
        pids = {"server": spec.server_pid, "receiver": spec.receiver_pid}
        for n, pid in enumerate(children_of(spec.server_pid)):
            pids[f"worker{n + 1}"] = pid
        report.send(("measuring", {"rate": self.rate, "pids": pids}))
        before = _cpu(pids)
        await asyncio.sleep(self.window[1] - time.perf_counter())
        after = _cpu(pids)
        unsent = await self.stop(senders, others)
        catch_up = await self.catch_up()
        self.readyz.close()
        cores = {
            name: (after[name] - before[name]) / TICK / spec.duration
            for name in before
            if name != "machine"
        }
        cores["others"] = max(
            0.0, (after["machine"] - before["machine"]) / TICK / spec.duration - sum(cores.values())
        )
        return self.figures(unsent, catch_up, cores, pids)

    def figures(
        self, unsent: int, catch_up: float, cores: dict[str, float], pids: dict[str, int]
    ) -> dict[str, Any]:
        spec = self.spec
        end = spec.warmup + spec.duration
        lags = sorted(o for t, o, _ in self.lags if spec.warmup <= t <= end)
        waiting = [e for t, _, e in self.lags if spec.warmup <= t <= end]
        counted = [p for p in self.probes if p["counted"]]
        visible = sorted(p["visible"] for p in counted if "visible" in p)
        latencies = sorted(self.latencies)
        return {
            "rate": self.rate,
            "events_per_s": self.events_ok / spec.duration,
            "statuses": dict(self.statuses),
            "ack_p50": pct(latencies, 0.5),
            "ack_p99": pct(latencies, 0.99),
            "max_backlog": self.max_backlog,
            "unsent": unsent,
            "lag_p50": pct(lags, 0.5),
            "lag_p95": pct(lags, 0.95),
            "lag_max": lags[-1] if lags else math.nan,
            "lag_samples": len(lags),
            "waiting_max": max(waiting, default=0),
            "catch_up_s": catch_up,
            "probes": [
                {k: p.get(k) for k in ("user", "sent_wall", "visible", "error")} for p in counted
            ],
            "visible_p50": pct(visible, 0.5),
            "visible_p95": pct(visible, 0.95),
            "errors": self.errors,
            "cores": cores,
            "pids": pids,
        }


def _member(profile: Any, audience_id: str) -> bool:
    for item in profile.get("audiences") or []:
        if item == audience_id or (isinstance(item, dict) and item.get("id") == audience_id):
            return True
    return False


def sustained(step: dict[str, Any], lag_limit: float) -> bool:
    """The step kept up: lag p95 within the limit and (almost) every offered event taken."""
    return step["lag_p95"] <= lag_limit and step["events_per_s"] >= 0.95 * step["rate"]


def driver_main(spec: DriverSpec, conn: Connection) -> None:
    def work(conn: Connection) -> dict[str, Any]:
        started = time.perf_counter()
        messages = demo_messages(spec)
        conn.send(
            ("ready", {"messages": len(messages), "generate_s": time.perf_counter() - started})
        )
        conn.recv()  # "go"
        steps: list[dict[str, Any]] = []
        position = 0
        for k, rate in enumerate(spec.rates):
            count = math.ceil(rate * (spec.warmup + spec.duration) * 1.1)
            t = time.perf_counter()
            bodies, position = step_bodies(messages, position, count, spec.batch_size, f"s{k}l")
            gc.collect()
            gc.freeze()  # the bodies live for the whole step: keep the collector off them
            conn.send(
                ("built", {"rate": rate, "bodies": len(bodies), "s": time.perf_counter() - t})
            )
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                step = runner.run(Step(spec, rate, bodies, k).run(conn))
            gc.unfreeze()
            del bodies
            steps.append(step)
            conn.send(("step", step))
            if spec.stop_after_fail and not sustained(step, spec.lag_limit):
                break
        return {"steps": len(steps)}

    child_main(work, conn)
