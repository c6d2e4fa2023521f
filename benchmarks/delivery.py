"""Delivery benchmark: how many messages a second does the delivery worker send to a webhook,
batched and one per call, against what the receiver itself can take; and how long does a
tracked event take to reach a webhook through a real `tessera serve`?

Run it with the project's virtualenv (nothing else needed; no network beyond loopback):

    .venv/bin/python benchmarks/delivery.py            # full run: ~3 minutes
    .venv/bin/python benchmarks/delivery.py --quick    # small sizes, short windows: ~1 minute
    .venv/bin/python benchmarks/delivery.py --record   # also append the figures to RESULTS.md
    .venv/bin/python benchmarks/delivery.py --profile /tmp/prof   # py-spy the measured processes
    .venv/bin/python benchmarks/delivery.py --help     # every knob (sizes, rates, durations)

It reuses the helpers of `benchmarks/identity.py` and `benchmarks/ingest.py` (imported from the
same directory): the store settings a default `tessera serve` uses (synchronous=FULL), the
synthetic profiles of identity.py's lookup store, the server wrapper, the machine description
and the py-spy summary. TESSERA_* variables in the environment reach every part and are
printed (and recorded).

The receiver is the same in every part: a raw ASGI app under uvicorn (httptools, uvloop) in
its own spawned process, so it shares no interpreter lock with what sends to it. It parses
every body (`{"batch": [...]}` or one message), keeps each messageId in arrival order and,
for events carrying `properties.sent_at`, the arrival time (time.time()); it answers 200 `{}`.

What one run does:

1. + 2. Throughput, batched (`--batched-messages`, default 50,000; webhook batch_size 500,
   concurrency 4) and unbatched (`--unbatched-messages`, default 10,000; batch_size 1, one
   run per `--unbatched-concurrency`, default 8 and 16). Each run on a fresh store: migrated,
   `--people` synthetic profiles (a `profiles` row, user_id/email/anonymous_id identities and
   six traits each, as identity.py part 3 builds them), a webhook destination created with
   `tessera.activation.service.create_destination` (subscribed to track events), and the
   outbox filled directly: realistic Segment track calls (ingest.py's templates, the person's
   userId and anonymousId), normalised as the event log stores them (`normalise_message`),
   queued with the processor's own `Fanout` (`event` + `flush`: the same executemany), the
   people interleaved (message i is person i mod P's), so per-person order is exercised.
   First the reference, measured in the same run against the same receiver: closed-loop
   clients in this process, as many as the webhook's concurrency, posting the same Tessera
   messages pre-serialised (500-message bodies batched, one message a request unbatched)
   for `--reference-seconds` after a short warm-up; once with the `httpx.AsyncClient` the
   webhook plugin builds (`tessera.activation.http.client`), once with a minimal HTTP/1.1
   keep-alive client on asyncio streams (identity.py's), which shows the receiver's own
   ceiling. Then a spawned process starts `Deliverer(engine, settings)` on the store and the
   parent polls `SELECT count(*) ... state = 'delivered'` every 20 ms until every row is
   delivered (or `--timeout`): messages/s from the start to the last row, the steady rate
   between 10% and 90% delivered, the delivery cycles it took, and the CPU used. Checks: the
   receiver got every messageId exactly as many times as sent (missing, unknown, duplicates
   counted), each person's messages arrived in order, and the outbox has no pending, dead or
   retried row. Printed as well: Tessera / reference for both clients.
3. Latency from tracked event to webhook received. `tessera serve` (the default
   processor_mode "process": the processor and the delivery worker in a child
   `tessera worker`) on a fresh store, a source and an admin token from the CLI
   (`tessera source create bench`, `tessera token create bench --role admin`), and a webhook
   destination through `POST /api/v1/destinations` subscribed to track events with the
   plugin's default batch_size and concurrency (1 and 4; `--latency-batch-size` and
   `--latency-concurrency` change them). An open-loop sender posts `/v1/batch` requests of
   `--latency-batch` track events at `--latency-rate` events/s for `--latency-warmup` +
   `--latency-duration` seconds, each event carrying `properties.sent_at` = time.time() when
   its request was built; the receiver records arrival - sent_at. Only events sent after the
   warm-up count; one that never arrives within `--latency-drain` seconds of the last send
   counts as infinitely late. Printed: p50/p95/p99/max, how many arrived, and where the time
   went: sent -> queued (the outbox row's created_at: ingest, group commit, processor) and
   queued -> received (the delivery worker), from the store after the run.
4. A summary against the targets: >= 5,000 messages/s batched; >= 1,000 messages/s unbatched;
   event-to-webhook p95 <= 2 s; with the CPU used by the measured processes and by anything
   else on the machine (other work on a 2-core machine makes the figures noisy). The exit
   status is 1 when a check fails (messages lost, duplicated or out of order, rows not
   delivered); targets never fail it.

`--profile DIR` runs `py-spy record --format raw --threads` on the delivering process of each
throughput run and on the `tessera worker` during the latency window, writes DIR/<run>.txt
(batched-4, unbatched-8, ..., latency) and DIR/<run>.summary.txt, and prints the hottest
functions. Sampling perturbs the figures; take the headline numbers from a run without.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import multiprocessing
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import ingest
import orjson
from identity import (
    HttpConnection,
    _child,
    _ms,
    _settings,
    finish_spy,
    fresh_store,
    pct,
    receive,
    region_of,
    run_child,
    start_spy,
    stop_child,
    store_engine,
    synthetic_rows,
)
from ingest import (
    ROOT,
    Server,
    _cpu_ticks_of,
    _machine_ticks,
    event_templates,
    machine,
    run_tessera,
    summarize_profile,
    tessera_overrides,
)

if TYPE_CHECKING:
    from tessera.config import Settings
    from tessera.store.secrets import Keyring

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ingest._BOILERPLATE = (*ingest._BOILERPLATE, "benchmarks/delivery.py")

TARGET_BATCHED_PER_S = 5_000
TARGET_UNBATCHED_PER_S = 1_000
TARGET_LATENCY_P95_S = 2.0

PARTS = ("batched", "unbatched", "latency")
OUTBOX_CHUNK = 5_000  # outbox rows a Fanout flush while filling
REFERENCE_BODIES = 8  # distinct request bodies the reference client cycles through
POLL_SECONDS = 0.02
TICK = os.sysconf("SC_CLK_TCK")


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _cores(ticks: float, seconds: float) -> float:
    return ticks / TICK / seconds if seconds > 0 else 0.0


# --------------------------------------------------------------------------------------------
# The receiver: a raw ASGI app under uvicorn in its own process.
# --------------------------------------------------------------------------------------------


class _Tally:
    """What the receiver took: every messageId in arrival order, and (messageId, sent_at,
    arrived) for events that carry `properties.sent_at`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.bad = 0
        self.ids: list[str] = []
        self.seen: set[str] = set()
        self.timings: list[tuple[str, float, float]] = []

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
        return True

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

    def reset(self) -> None:
        self._get("/_reset")

    def stop(self) -> None:
        self._client.close()
        stop_child(self.process, False)


# --------------------------------------------------------------------------------------------
# Throughput: a store with a full outbox, a reference client, the delivery worker.
# --------------------------------------------------------------------------------------------


def _templates() -> list[dict[str, Any]]:
    """ingest.py's realistic track calls as dicts (messageId and timestamp are added)."""
    return [orjson.loads(template[:-1] + b"}") for template in event_templates()]


def build_store(
    database: Path,
    *,
    settings: Settings,
    region: str,
    people: int,
    messages: int,
    url: str,
    batch_size: int,
    concurrency: int,
    seed: int,
) -> dict[str, Any]:
    """A migrated store with `people` profiles, a webhook destination and `messages` pending
    outbox rows for it; returns what the reference and the checks need."""
    from tessera.activation import delivery_store
    from tessera.activation.delivery import tessera_message
    from tessera.activation.fanout import Fanout, load_catalog
    from tessera.activation.service import create_destination
    from tessera.ingest.messages import normalise_message

    started = time.perf_counter()
    engine, source_id = fresh_store(database, settings, "bench")
    rng = random.Random(f"delivery-{seed}")
    profile_rows, identity_rows, trait_rows = synthetic_rows(
        rng,
        first_index=0,
        count=people,
        base_seq=0,
        source_id=source_id,
        region=region,
        taken=set(),
    )
    config = {"url": url, "batch_size": batch_size, "concurrency": concurrency}
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO profiles (id, created_seq, merged_into, created_at, updated_at, "
            "event_count) VALUES (?, ?, ?, ?, ?, ?)",
            profile_rows,
        )
        conn.exec_driver_sql(
            "INSERT INTO identities (type, value, profile_id, first_seq) VALUES (?, ?, ?, ?)",
            identity_rows,
        )
        conn.exec_driver_sql(
            "INSERT INTO profile_traits (profile_id, name, value, source_id, seq, message_id, "
            "timestamp) VALUES (?, ?, ?, ?, ?, ?, ?)",
            trait_rows,
        )
        destination = create_destination(
            conn,
            name="bench webhook",
            type="webhook",
            config=config,
            subscriptions=[{"type": "events", "event_types": ["track"]}],
            mapping={},
            consent_categories=[],
            enabled=True,
            actor="benchmark",
            keyring=bench_keyring(database, settings),
        )
    pids = [row[0] for row in profile_rows]
    known: dict[str, dict[str, list[str]]] = {pid: {} for pid in pids}
    for kind, value, pid, _ in identity_rows:
        known[pid].setdefault(kind, []).append(value)
    traits: dict[str, dict[str, Any]] = {pid: {} for pid in pids}
    for pid, name, value, *_ in trait_rows:
        traits[pid][name] = orjson.loads(value)

    templates = _templates()
    tag = uuid.uuid4().hex[:6]
    now = datetime.now(UTC)
    max_age = timedelta(seconds=settings.delivery_max_age_seconds)
    sample: list[delivery_store.Pending] = []
    queued = 0
    with engine.begin() as conn:
        fanout = Fanout(load_catalog(conn), now=now, max_age=max_age)
        for i in range(messages):
            person, n = i % people, i // people
            pid = pids[person]
            template = templates[i % len(templates)]
            message = {
                **template,
                "userId": known[pid]["user_id"][0],
                "anonymousId": known[pid]["anonymous_id"][0],
                "messageId": f"{tag}-{person}-{n}",
                "timestamp": (now - timedelta(milliseconds=messages - i)).isoformat(),
                "properties": {**template["properties"], "n": n},
            }
            row = normalise_message(message, source_id=source_id, received_at=now)
            payload = row["payload"]
            fanout.event(
                person=pid,
                message_id=row["message_id"],
                payload=orjson.loads(payload),
                raw=payload,
            )
            if len(sample) < batch_size * REFERENCE_BODIES:
                sample.append(
                    delivery_store.Pending(
                        i + 1, pid, "event", row["message_id"], payload, now, 0, now + max_age
                    )
                )
            if len(fanout.rows) >= OUTBOX_CHUNK:
                queued += fanout.flush(conn)
        queued += fanout.flush(conn)
    engine.dispose()
    # The reference's bodies: Tessera's messages exactly as the webhook posts them.
    bodies: list[tuple[bytes, str | None, int]] = []
    shaped = [
        tessera_message(
            pending,
            delivery_store.Profile(
                pending.person, traits=traits[pending.person], identities=known[pending.person]
            ),
        )
        for pending in sample
    ]
    if batch_size == 1:
        bodies = [(orjson.dumps(body), body["messageId"], 1) for body in shaped]
    else:
        for start in range(0, len(shaped), batch_size):
            chunk = shaped[start : start + batch_size]
            bodies.append((orjson.dumps({"batch": chunk}), None, len(chunk)))
    return {
        "build_s": time.perf_counter() - started,
        "destination_id": destination["id"],
        "queued": queued,
        "tag": tag,
        "bodies": bodies,
        "message_bytes": sum(len(body) for body, _, _ in bodies) // max(1, len(shaped)),
    }


async def _reference_run(
    kind: str,
    url: str,
    bodies: list[tuple[bytes, str | None, int]],
    *,
    concurrency: int,
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    """`concurrency` workers posting pre-serialised bodies in a closed loop, with the client
    the webhook plugin builds ("httpx") or a minimal HTTP/1.1 keep-alive client on asyncio
    streams ("raw"); requests finished in the window after `warmup` count."""
    from tessera.activation import http

    parsed = httpx.URL(url)
    client = http.client(timeout=30, connections=concurrency) if kind == "httpx" else None
    heads = []
    for body, key, _ in bodies:
        head = f"POST {parsed.raw_path.decode()} HTTP/1.1\r\nHost: {parsed.host}:{parsed.port}\r\n"
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        head += f"Idempotency-Key: {key}\r\n" if key is not None else ""
        heads.append((head + "\r\n").encode())
    statuses: Counter[int] = Counter()
    counted = {"requests": 0, "messages": 0}
    started = time.perf_counter()
    measure_from, end = started + warmup, started + warmup + duration

    async def worker(index: int) -> None:
        connection = HttpConnection(parsed.host, parsed.port or 80) if client is None else None
        try:
            while time.perf_counter() < end:
                body, key, count = bodies[index % len(bodies)]
                if connection is not None:
                    status, _ = await connection.request(heads[index % len(bodies)], body)
                else:
                    assert client is not None
                    headers = {"Content-Type": "application/json"}
                    if key is not None:
                        headers["Idempotency-Key"] = key
                    status = (await client.post(url, content=body, headers=headers)).status_code
                statuses[status] += 1
                if measure_from <= time.perf_counter() <= end:
                    counted["requests"] += 1
                    counted["messages"] += count
                index += concurrency
        finally:
            if connection is not None:
                connection.close()

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        if client is not None:
            await client.aclose()
    return {
        "requests_per_s": counted["requests"] / duration,
        "messages_per_s": counted["messages"] / duration,
        "requests": counted["requests"],
        "duration": duration,
        "statuses": dict(statuses),
    }


def reference(
    receiver: Receiver,
    bodies: list[tuple[bytes, str | None, int]],
    *,
    kind: str,
    concurrency: int,
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    """The receiver's rate with a plain client loop in this process, and the CPU it took."""
    receiver.reset()
    started = _snapshot(receiver.pid)
    run = asyncio.run(
        asyncio.wait_for(
            _reference_run(
                kind,
                receiver.url,
                bodies,
                concurrency=concurrency,
                warmup=warmup,
                duration=duration,
            ),
            warmup + duration + 60,
        )
    )
    cpu = _snapshot(receiver.pid).since(started)
    stats = receiver.stats()
    receiver.reset()
    return {**run, "received": stats["messages"], "bad": stats["bad"], **cpu}


class _Cpu:
    """CPU ticks of the measured process, the receiver, this process and the machine."""

    def __init__(self, receiver_pid: int, measured: int | None) -> None:
        self.at = time.perf_counter()
        self.receiver = _cpu_ticks_of(receiver_pid)[1]
        self.measured = _cpu_ticks_of(measured)[1] if measured else 0
        usage = os.times()
        self.me = (usage.user + usage.system) * TICK
        self.machine = _machine_ticks()[0]
        self.receiver_pid, self.measured_pid = receiver_pid, measured

    def since(self, start: _Cpu) -> dict[str, float]:
        seconds = self.at - start.at
        figures = {
            "receiver_cores": _cores(self.receiver - start.receiver, seconds),
            "measured_cores": _cores(self.measured - start.measured, seconds),
            "driver_cores": _cores(self.me - start.me, seconds),
            "machine_cores": _cores(self.machine - start.machine, seconds),
        }
        figures["other_cores"] = max(
            0.0,
            figures["machine_cores"]
            - figures["receiver_cores"]
            - figures["measured_cores"]
            - figures["driver_cores"],
        )
        return figures


def bench_keyring(database: Path, settings: Settings) -> Keyring:
    """The keys for the store's secrets: the setting, or the key file beside `database`."""
    from tessera.store.secrets import load_keyring

    return load_keyring(secret_key=settings.secret_key, database_url=f"sqlite:///{database}")


def _snapshot(receiver_pid: int, measured: int | None = None) -> _Cpu:
    return _Cpu(receiver_pid, measured)


def _deliverer_main(database: str, export_dir: str, conn: Connection) -> None:
    def work(conn: Connection) -> dict[str, Any]:
        from tessera.activation.delivery import Deliverer

        settings = _settings().model_copy(update={"export_dir": Path(export_dir)})
        engine = store_engine(Path(database), settings)
        deliverer = Deliverer(engine, settings, keyring=bench_keyring(Path(database), settings))
        conn.send(("ready", os.getpid()))
        conn.recv()  # "go"
        started = time.perf_counter()
        deliverer.start()
        conn.recv()  # "stop"
        deliverer.stop()
        engine.dispose()
        return {
            "cycles": deliverer.cycles,
            "cycle_failures": deliverer.failures,
            "ran_s": time.perf_counter() - started,
        }

    _child(work, conn)


def _outbox_states(database: Path, destination_id: str) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        states = dict(
            db.execute(
                "SELECT state, count(*) FROM outbox WHERE destination_id = ? GROUP BY state",
                (destination_id,),
            ).fetchall()
        )
        retried = db.execute(
            "SELECT count(*) FROM outbox WHERE destination_id = ? AND attempts > 1",
            (destination_id,),
        ).fetchone()[0]
    return {**{str(k): int(v) for k, v in states.items()}, "retried": int(retried)}


def check_arrivals(ids: list[str], tag: str, messages: int, people: int) -> dict[str, Any]:
    """Every messageId `{tag}-{person}-{n}` once, and each person's in order of n."""
    expected = {f"{tag}-{i % people}-{i // people}" for i in range(messages)}
    seen = set(ids)
    last: dict[str, int] = {}
    out_of_order = 0
    for message_id in ids:
        _, person, n = message_id.rsplit("-", 2)
        number = int(n)
        if number < last.get(person, -1):
            out_of_order += 1
        last[person] = max(number, last.get(person, -1))
    return {
        "received": len(ids),
        "unique": len(seen),
        "missing": len(expected - seen),
        "unknown": len(seen - expected),
        "duplicates": len(ids) - len(seen),
        "out_of_order": out_of_order,
    }


def run_deliverer(
    database: Path,
    destination_id: str,
    messages: int,
    *,
    name: str,
    receiver: Receiver,
    timeout: float,
    profile_path: Path | None,
    profile_rate: int,
) -> dict[str, Any]:
    """Start `Deliverer` in a spawned process on `database`; poll the outbox until all
    `messages` are delivered (or `timeout`); the figures of that run."""
    export_dir = database.parent / "exports"
    pid, conn, process = run_child(
        _deliverer_main, (str(database), str(export_dir)), f"deliverer-{name}", 120
    )
    spy = None
    result: dict[str, Any] | None = None
    samples: list[tuple[float, int]] = []
    try:
        if profile_path is not None:
            spy = start_spy(pid, profile_path, profile_rate, None)
            time.sleep(0.5)  # let py-spy attach before the clock starts
        db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        count_sql = "SELECT count(*) FROM outbox WHERE destination_id = ? AND state = 'delivered'"
        before = _snapshot(receiver.pid, pid)
        started = time.perf_counter()
        conn.send("go")
        while True:
            delivered = int(db.execute(count_sql, (destination_id,)).fetchone()[0])
            elapsed = time.perf_counter() - started
            samples.append((elapsed, delivered))
            if delivered >= messages or elapsed > timeout or not process.is_alive():
                break
            time.sleep(POLL_SECONDS)
        cpu = _snapshot(receiver.pid, pid).since(before)
        db.close()
        conn.send("stop")
        _, result = receive(conn, process, 120)
    finally:
        stop_child(process, result is not None)
        finish_spy(spy)
    assert result is not None
    elapsed, delivered = samples[-1]

    def reached(share: float) -> float:
        wanted = share * messages
        return next((t for t, count in samples if count >= wanted), math.inf)

    t10, t90 = reached(0.1), reached(0.9)
    return {
        "elapsed": elapsed,
        "delivered": delivered,
        "first_s": next((t for t, count in samples if count > 0), math.inf),
        "steady_per_s": 0.8 * messages / (t90 - t10) if t90 > t10 else math.nan,
        **result,
        **cpu,
    }


def part_throughput(
    part: str,
    concurrency: int,
    args: argparse.Namespace,
    workdir: Path,
    *,
    settings: Settings,
    region: str,
    receiver: Receiver,
) -> dict[str, Any]:
    name = f"{part}-{concurrency}"
    messages = args.batched_messages if part == "batched" else args.unbatched_messages
    batch_size = args.batch_size if part == "batched" else 1
    people = min(args.people, messages)
    database = workdir / f"{name}.db"
    print(
        f"{name}: {messages:,} messages for {people:,} people, webhook batch_size "
        f"{batch_size}, concurrency {concurrency}; building the store ...",
        flush=True,
    )
    built = build_store(
        database,
        settings=settings,
        region=region,
        people=people,
        messages=messages,
        url=receiver.url,
        batch_size=batch_size,
        concurrency=concurrency,
        seed=args.seed,
    )
    print(
        f"  built in {built['build_s']:.1f} s ({built['queued']:,} outbox rows, "
        f"~{built['message_bytes']:,} B a message as sent); reference client ...",
        flush=True,
    )
    ref, raw = (
        reference(
            receiver,
            built["bodies"],
            kind=kind,
            concurrency=concurrency,
            warmup=args.reference_warmup,
            duration=args.reference_seconds,
        )
        for kind in ("httpx", "raw")
    )
    print(
        f"  reference: {ref['messages_per_s']:,.0f} messages/s with httpx, "
        f"{raw['messages_per_s']:,.0f} with a raw client; the delivery worker ...",
        flush=True,
    )
    receiver.reset()
    destination_id = built["destination_id"]
    profile_path = args.profile / f"{name}.txt" if args.profile else None
    run = run_deliverer(
        database,
        destination_id,
        messages,
        name=name,
        receiver=receiver,
        timeout=args.timeout,
        profile_path=profile_path,
        profile_rate=args.profile_rate,
    )
    elapsed, delivered = run["elapsed"], run["delivered"]
    arrivals = check_arrivals(receiver.ids(), built["tag"], messages, people)
    receiver.reset()
    out = {
        "name": name,
        "messages": messages,
        "people": people,
        "batch_size": batch_size,
        "concurrency": concurrency,
        "build_s": built["build_s"],
        "message_bytes": built["message_bytes"],
        "complete": delivered >= messages,
        "messages_per_s": delivered / elapsed if elapsed else 0.0,
        "states": _outbox_states(database, destination_id),
        "arrivals": arrivals,
        "reference": ref,
        "raw": raw,
        **run,
    }
    if profile_path is not None and profile_path.exists():
        text = summarize_profile(profile_path, elapsed, args.profile_rate)
        (args.profile / f"{name}.summary.txt").write_text(text + "\n")
        out["profile_summary"] = text
    print(
        f"  {out['messages_per_s']:,.0f} messages/s ({delivered:,} in {elapsed:.2f} s)",
        flush=True,
    )
    return out


# --------------------------------------------------------------------------------------------
# Latency: tessera serve, a destination through the API, events through /v1/batch.
# --------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                found += [int(child) for child in children.read().split()]
    return found


async def _send_events(
    url: str, write_key: str, args: argparse.Namespace, tag: str
) -> dict[str, Any]:
    """Open loop: a /v1/batch request every `batch / rate` seconds, whatever the replies."""
    templates = _templates()
    per_request = args.latency_batch
    interval = per_request / args.latency_rate
    total = math.ceil((args.latency_warmup + args.latency_duration) / interval)
    auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
    client = httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": auth, "Content-Type": "application/json"},
        timeout=30,
        limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
    )
    measured: set[str] = set()
    warmup: set[str] = set()
    statuses: Counter[int] = Counter()
    acks: list[float] = []
    errors: list[str] = []

    async def post(k: int, in_window: bool) -> None:
        sent_at = time.time()
        batch = []
        for j in range(per_request):
            seq = k * per_request + j
            template = templates[seq % len(templates)]
            message_id = f"lat-{tag}-{seq}"
            batch.append(
                {
                    **template,
                    "userId": f"lat-{tag}-user-{seq % args.latency_people}",
                    "messageId": message_id,
                    "properties": {**template["properties"], "sent_at": sent_at},
                }
            )
            (measured if in_window else warmup).add(message_id)
        try:
            response = await client.post("/v1/batch", content=orjson.dumps({"batch": batch}))
            statuses[response.status_code] += 1
            if response.status_code != 200 and len(errors) < 3:
                errors.append(f"{response.status_code}: {response.text[:200]}")
        except httpx.HTTPError as exc:
            statuses[0] += 1
            if len(errors) < 3:
                errors.append(repr(exc)[:200])
        acks.append(time.time() - sent_at)

    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for k in range(total):
        delay = start + k * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(post(k, k * interval >= args.latency_warmup)))
    await asyncio.gather(*tasks)
    sent_s = loop.time() - start
    await client.aclose()
    acks.sort()
    return {
        "measured": measured,
        "warmup": warmup,
        "statuses": dict(statuses),
        "errors": errors,
        "send_s": sent_s,
        "requests": total,
        "ack_p50": pct(acks, 0.5),
        "ack_p99": pct(acks, 0.99),
    }


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def create_webhook(base: str, token: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The latency part's destination, through the API as a user would create it."""
    config: dict[str, Any] = {"url": url}
    if args.latency_batch_size is not None:
        config["batch_size"] = args.latency_batch_size
    if args.latency_concurrency is not None:
        config["concurrency"] = args.latency_concurrency
    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as api:
        response = api.post(
            "/api/v1/destinations",
            json={
                "name": "latency webhook",
                "type": "webhook",
                "config": config,
                "subscriptions": [{"type": "events", "event_types": ["track"]}],
            },
        )
    if response.status_code != 201:
        raise RuntimeError(f"creating the destination: {response.text}")
    return response.json()  # type: ignore[no-any-return]


def latency_figures(
    measured: set[str],
    timings: list[tuple[str, float, float]],
    queued: dict[str, float],
) -> dict[str, Any]:
    """Percentiles of arrival - sent_at over the measured events (never arrived: inf), and
    the split at the outbox row's created_at."""
    first: dict[str, tuple[float, float]] = {}
    for message_id, sent_at, arrived in timings:
        first.setdefault(message_id, (sent_at, arrived))
    latencies, to_queue, to_receiver = [], [], []
    for message_id in measured:
        if message_id not in first:
            latencies.append(math.inf)
            continue
        sent_at, arrived = first[message_id]
        latencies.append(arrived - sent_at)
        if message_id in queued:
            to_queue.append(queued[message_id] - sent_at)
            to_receiver.append(arrived - queued[message_id])
    for values in (latencies, to_queue, to_receiver):
        values.sort()
    return {
        "measured": len(measured),
        "arrived": sum(1 for message_id in measured if message_id in first),
        "arrived_total": len(first),
        "duplicates": len(timings) - len(first),
        "p50": pct(latencies, 0.5),
        "p95": pct(latencies, 0.95),
        "p99": pct(latencies, 0.99),
        "max": latencies[-1] if latencies else math.nan,
        "queue_p50": pct(to_queue, 0.5),
        "queue_p95": pct(to_queue, 0.95),
        "deliver_p50": pct(to_receiver, 0.5),
        "deliver_p95": pct(to_receiver, 0.95),
    }


def part_latency(args: argparse.Namespace, workdir: Path, receiver: Receiver) -> dict[str, Any]:
    directory = workdir / "latency"
    directory.mkdir()
    server = Server(directory)
    token = run_tessera(server.database, "token", "create", "bench", "--role", "admin")
    token = token.strip().splitlines()[-1].strip()
    tag = uuid.uuid4().hex[:6]
    spy = None
    profile_path = args.profile / "latency.txt" if args.profile else None
    try:
        server.start()
        base = f"http://127.0.0.1:{server.port}"
        destination = create_webhook(base, token, receiver.url, args)
        workers = _children(server.pid)
        worker = workers[0] if workers else None
        shown = destination["config"]
        print(
            f"latency: server pid {server.pid} (worker {worker}), {base}; webhook batch_size "
            f"{shown['batch_size']}, concurrency {shown['concurrency']}; "
            f"{args.latency_rate:,.0f} events/s in requests of {args.latency_batch}: "
            f"{args.latency_warmup:g} s warm-up + {args.latency_duration:g} s ...",
            flush=True,
        )
        receiver.reset()
        if profile_path is not None and worker is not None:
            spy = start_spy(
                worker,
                profile_path,
                args.profile_rate,
                args.latency_warmup + args.latency_duration,
            )
        cpu_server = _cpu_ticks_of(server.pid)[1]
        before = _snapshot(receiver.pid, worker)
        sent = asyncio.run(_send_events(base, server.write_key, args, tag))
        cpu = _snapshot(receiver.pid, worker).since(before)
        cpu["server_cores"] = _cores(
            _cpu_ticks_of(server.pid)[1] - cpu_server, time.perf_counter() - before.at
        )
        cpu["other_cores"] = max(0.0, cpu["other_cores"] - cpu["server_cores"])
        wanted = len(sent["measured"]) + len(sent["warmup"])
        drained = time.perf_counter()
        while time.perf_counter() - drained < args.latency_drain:
            if receiver.stats()["unique"] >= wanted:
                break
            time.sleep(0.2)
        drain_s = time.perf_counter() - drained
        timings = receiver.timings()
        with contextlib.closing(sqlite3.connect(f"file:{server.database}?mode=ro", uri=True)) as db:
            queued = {
                message_id: _epoch(created)
                for message_id, created in db.execute(
                    "SELECT message_id, created_at FROM outbox WHERE destination_id = ?",
                    (destination["id"],),
                )
            }
    except Exception:
        print(f"server log (tail):\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        finish_spy(spy)
        server.stop()
    out = {
        "rate": args.latency_rate,
        "per_request": args.latency_batch,
        "warmup": args.latency_warmup,
        "duration": args.latency_duration,
        "batch_size": destination["config"]["batch_size"],
        "concurrency": destination["config"]["concurrency"],
        "sent_total": len(sent["measured"]) + len(sent["warmup"]),
        "drain_s": drain_s,
        "events_per_s": len(sent["measured"]) / args.latency_duration,
        **latency_figures(sent["measured"], timings, queued),
        **{k: v for k, v in sent.items() if k not in ("measured", "warmup")},
        **cpu,
    }
    if profile_path is not None and profile_path.exists():
        text = summarize_profile(
            profile_path, args.latency_warmup + args.latency_duration, args.profile_rate
        )
        (args.profile / "latency.summary.txt").write_text(text + "\n")
        out["profile_summary"] = text
    return out


# --------------------------------------------------------------------------------------------
# Summary and RESULTS.md
# --------------------------------------------------------------------------------------------


def _cpu(result: dict[str, Any], measured: str) -> str:
    return (
        f"CPU (cores busy): {measured} {result['measured_cores']:.2f}, receiver "
        f"{result['receiver_cores']:.2f}, this driver {result['driver_cores']:.2f}, "
        f"other processes {result['other_cores']:.2f}"
    )


def summary_lines(results: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(figures, targets, failed checks)."""
    lines: list[str] = []
    targets = ["targets:"]
    failed: list[str] = []
    for name, r in results.items():
        if name == "latency":
            continue
        target = TARGET_BATCHED_PER_S if r["batch_size"] > 1 else TARGET_UNBATCHED_PER_S
        ref, raw, arr = r["reference"], r["raw"], r["arrivals"]
        ratio = r["messages_per_s"] / ref["messages_per_s"] if ref["messages_per_s"] else 0.0
        raw_ratio = r["messages_per_s"] / raw["messages_per_s"] if raw["messages_per_s"] else 0.0
        states = ", ".join(f"{k} {v:,}" for k, v in sorted(r["states"].items()))
        lines += [
            f"{name}: webhook batch_size {r['batch_size']}, concurrency {r['concurrency']}; "
            f"{r['messages']:,} outbox rows for {r['people']:,} people (~{r['message_bytes']:,} "
            f"B a message as sent; store built in {r['build_s']:.1f} s)",
            f"  Tessera: {r['messages_per_s']:,.0f} messages/s ({r['delivered']:,} delivered in "
            f"{r['elapsed']:.2f} s from the worker's start; first after {_ms(r['first_s'])}; "
            f"10%-90% {r['steady_per_s']:,.0f} messages/s; {r['cycles']:,} cycles, "
            f"{r['messages'] / max(1, r['cycles']):,.0f} messages a cycle)",
            f"    {_cpu(r, 'delivery worker')}",
            f"  reference, the same receiver without Tessera: {r['concurrency']} concurrent "
            f"closed-loop clients in one process posting the same bodies pre-serialised "
            f"({ref['duration']:g} s "
            "measured each)",
            *(
                f"    {label}: {x['messages_per_s']:,.0f} messages/s ({x['requests_per_s']:,.0f} "
                f"requests/s; statuses {x['statuses']}; the receiver counted "
                f"{x['received']:,} messages with the warm-up); CPU (cores busy): client "
                f"{x['driver_cores']:.2f}, receiver {x['receiver_cores']:.2f}, other processes "
                f"{x['other_cores']:.2f}"
                for label, x in (
                    ("httpx.AsyncClient (the webhook plugin's client)", ref),
                    ("raw HTTP/1.1 on asyncio streams", raw),
                )
            ),
            f"  Tessera / httpx reference: {ratio:.2f}; Tessera / raw client: {raw_ratio:.2f}",
            f"  receiver: {arr['received']:,} received, {arr['unique']:,} distinct messageIds; "
            f"missing {arr['missing']}, unknown {arr['unknown']}, duplicates "
            f"{arr['duplicates']}, out of order per person {arr['out_of_order']}; outbox: "
            f"{states}",
        ]
        rate = r["messages_per_s"]
        targets.append(
            f"  {name} >= {target:,} messages/s (batch_size {r['batch_size']}, concurrency "
            f"{r['concurrency']}): {rate:,.0f}  {_mark(rate >= target)}"
        )
        if not r["complete"]:
            failed.append(f"{name}: {r['delivered']:,} of {r['messages']:,} delivered in time")
        if arr["missing"] or arr["unknown"] or arr["out_of_order"]:
            failed.append(
                f"{name}: {arr['missing']} missing, {arr['unknown']} unknown, "
                f"{arr['out_of_order']} out of order"
            )
        if r["states"].get("dead") or r["states"].get("blocked") or r["cycle_failures"]:
            failed.append(f"{name}: outbox {r['states']}, {r['cycle_failures']} failed cycles")
    r = results.get("latency")
    if r is not None:
        statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["statuses"].items()))
        lines += [
            f"latency: tracked event -> webhook received, `tessera serve` (processor_mode "
            f"process), webhook batch_size {r['batch_size']}, concurrency {r['concurrency']}; "
            f"{r['rate']:,.0f} events/s offered through /v1/batch ({r['per_request']} a request, "
            f"open loop), {r['warmup']:g} s warm-up + {r['duration']:g} s measured",
            f"  p50 {_ms(r['p50'])}  p95 {_ms(r['p95'])}  p99 {_ms(r['p99'])}  "
            f"max {_ms(r['max'])}  ({r['arrived']:,} of {r['measured']:,} measured events "
            f"arrived; all {r['arrived_total']:,} of {r['sent_total']:,} sent, "
            f"{r['duplicates']} duplicates; last one {r['drain_s']:.1f} s after the last send)",
            f"  where the time went: sent -> queued in the outbox (ingest, commit, processor) "
            f"p50 {_ms(r['queue_p50'])}, p95 {_ms(r['queue_p95'])}; queued -> received "
            f"(delivery) p50 {_ms(r['deliver_p50'])}, p95 {_ms(r['deliver_p95'])}",
            f"  /v1/batch acknowledged: p50 {_ms(r['ack_p50'])}, p99 {_ms(r['ack_p99'])}; "
            f"statuses {statuses}",
            f"  CPU (cores busy): server {r['server_cores']:.2f}, worker (processor + delivery) "
            f"{r['measured_cores']:.2f}, receiver {r['receiver_cores']:.2f}, this driver "
            f"{r['driver_cores']:.2f}, other processes {r['other_cores']:.2f}",
        ]
        for error in r["errors"]:
            lines.append(f"  sample error: {error}")
        targets.append(
            f"  event -> webhook p95 <= {TARGET_LATENCY_P95_S:g} s (at {r['events_per_s']:,.0f} "
            f"events/s): {_ms(r['p95'])}  {_mark(r['p95'] <= TARGET_LATENCY_P95_S)}"
        )
        if r["arrived_total"] < r["sent_total"]:
            failed.append(f"latency: {r['sent_total'] - r['arrived_total']:,} events never arrived")
        if set(r["statuses"]) - {200}:
            failed.append(f"latency: /v1/batch answered {r['statuses']}")
    return lines, targets, failed


RESULTS_SECTION_NOTE = """\
One run of `.venv/bin/python benchmarks/delivery.py --record` (see its docstring for what is
measured and how). Targets: >= 5,000 messages/s to a webhook batched, >= 1,000 messages/s one
message a call; event-to-webhook p95 <= 2 s through `tessera serve`. "reference" is a plain
httpx client loop against the same receiver in the same run; "other processes" is CPU used by
anything else on the machine."""


def record(lines: list[str], args: argparse.Namespace, info: dict[str, str]) -> None:
    section = [
        "",
        f"## delivery {info['date']}",
        "",
        RESULTS_SECTION_NOTE,
        "",
        f"- machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}",
        f"- commit: {info['commit']}",
        f"- load average before the run: {info['load']}",
        *[f"- setting from the environment: {k}={v}" for k, v in tessera_overrides().items()],
        f"- run: parts {','.join(args.parts)}; batched {args.batched_messages:,} messages "
        f"(batch_size {args.batch_size}, concurrency "
        f"{','.join(map(str, args.batched_concurrency))}), unbatched "
        f"{args.unbatched_messages:,} (concurrency "
        f"{','.join(map(str, args.unbatched_concurrency))}), "
        f"{args.people:,} people; latency {args.latency_rate:,.0f} events/s, "
        f"{args.latency_warmup:g} s + {args.latency_duration:g} s"
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


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark delivery to webhooks (see the module docstring)."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and short windows")
    parser.add_argument(
        "--parts",
        type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
        default=list(PARTS),
        help="comma-separated subset of batched,unbatched,latency",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the synthetic profiles")
    size = parser.add_argument_group("throughput (parts 1-2)")
    size.add_argument("--batched-messages", type=int, default=50_000)
    size.add_argument("--batch-size", type=int, default=500, help="webhook batch_size, batched")
    size.add_argument(
        "--batched-concurrency",
        type=_numbers,
        default=[4],
        help="comma-separated webhook concurrencies, one batched run each",
    )
    size.add_argument("--unbatched-messages", type=int, default=10_000)
    size.add_argument(
        "--unbatched-concurrency",
        type=_numbers,
        default=[8, 16],
        help="comma-separated webhook concurrencies, one unbatched run each",
    )
    size.add_argument("--people", type=int, default=10_000, help="profiles the messages are about")
    size.add_argument(
        "--timeout", type=float, default=180.0, help="give up on a throughput run after (s)"
    )
    size.add_argument(
        "--reference-seconds", type=float, default=3.0, help="measured seconds per reference"
    )
    size.add_argument("--reference-warmup", type=float, default=0.5, help="seconds not counted")
    load = parser.add_argument_group("event-to-webhook latency (part 3)")
    load.add_argument("--latency-rate", type=float, default=500.0, help="events/s offered")
    load.add_argument("--latency-batch", type=int, default=50, help="events per /v1/batch")
    load.add_argument("--latency-people", type=int, default=2_000, help="distinct userIds")
    load.add_argument("--latency-warmup", type=float, default=5.0, help="seconds not measured")
    load.add_argument("--latency-duration", type=float, default=20.0, help="measured seconds")
    load.add_argument(
        "--latency-drain", type=float, default=60.0, help="wait for late events at most (s)"
    )
    load.add_argument(
        "--latency-batch-size", type=int, default=None, help="webhook batch_size (plugin's: 1)"
    )
    load.add_argument(
        "--latency-concurrency", type=int, default=None, help="webhook concurrency (plugin's: 4)"
    )
    parser.add_argument("--record", action="store_true", help="append the figures to RESULTS.md")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy into DIR/<part>.txt")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    unknown = set(args.parts) - set(PARTS)
    if unknown or not args.parts:
        parser.error(f"--parts takes {', '.join(PARTS)}; got {args.parts}")
    concurrencies = [*args.batched_concurrency, *args.unbatched_concurrency]
    if not all(1 <= c <= 64 for c in concurrencies):
        parser.error("a webhook's concurrency is 1 to 64")
    if args.quick:
        args.batched_messages = min(args.batched_messages, 10_000)
        args.unbatched_messages = min(args.unbatched_messages, 3_000)
        args.people = min(args.people, 2_000)
        args.reference_seconds = min(args.reference_seconds, 1.5)
        args.latency_rate = min(args.latency_rate, 200.0)
        args.latency_warmup = min(args.latency_warmup, 2.0)
        args.latency_duration = min(args.latency_duration, 6.0)
        args.latency_drain = min(args.latency_drain, 30.0)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    info["load"] = "unknown"
    with contextlib.suppress(OSError):
        info["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"tessera delivery benchmark: {info['date']}, {info['cores']} cores ({info['cpu']}), "
        f"Python {info['python']}, commit {info['commit']}"
    )
    print(f"load average before the run: {info['load']}")
    overrides = tessera_overrides()
    if overrides:
        print(
            "settings from the environment: " + ", ".join(f"{k}={v}" for k, v in overrides.items())
        )
    settings = _settings()
    region = region_of(settings)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="tessera-delivery-bench-"))
    results: dict[str, Any] = {}
    receiver: Receiver | None = None
    try:
        receiver = Receiver()
        print(f"receiver: pid {receiver.pid}, {receiver.url}")
        for part, concurrencies in (
            ("batched", args.batched_concurrency),
            ("unbatched", args.unbatched_concurrency),
        ):
            if part not in args.parts:
                continue
            for concurrency in concurrencies:
                results[f"{part}-{concurrency}"] = part_throughput(
                    part,
                    concurrency,
                    args,
                    workdir,
                    settings=settings,
                    region=region,
                    receiver=receiver,
                )
        if "latency" in args.parts:
            results["latency"] = part_latency(args, workdir, receiver)
    finally:
        if receiver is not None:
            receiver.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    lines, targets, failed = summary_lines(results)
    lines += targets
    if failed:
        lines += ["checks failed:", *(f"  {line}" for line in failed)]
    print()
    print("\n".join(lines))
    for result in results.values():
        text = result.get("profile_summary")
        if text:
            print()
            print(text)
    if args.record:
        record(lines, args, info)
    return 1 if failed else 0


if __name__ == "__main__":
    multiprocessing.freeze_support()
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the receiver, workers and servers were stopped", file=sys.stderr)
        sys.exit(130)
