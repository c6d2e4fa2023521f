"""Delivery benchmark, parts 1-2: the delivery worker against a full outbox, and a plain
client loop against the same receiver as the reference."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sqlite3
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from delivery_store import PROFILE_IGNORE, build_store
from harness import (
    TICK,
    cores,
    cpu_ticks_of,
    machine_ticks,
)
from harness_profile import finish_spy, start_spy, write_summary
from harness_receiver import Receiver
from harness_server import (
    HttpConnection,
    child_main,
    receive,
    run_child,
    stop_child,
)
from harness_store import (
    settings as default_settings,
)
from harness_store import (
    store_engine,
    store_keyring,
)

if TYPE_CHECKING:
    from tessera.config import Settings


POLL_SECONDS = 0.02


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
    started = snapshot(receiver.pid)
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
    cpu = snapshot(receiver.pid).since(started)
    stats = receiver.stats()
    receiver.reset()
    return {**run, "received": stats["messages"], "bad": stats["bad"], **cpu}


class _Cpu:
    """CPU ticks of the measured process, the receiver, this process and the machine."""

    def __init__(self, receiver_pid: int, measured: int | None) -> None:
        self.at = time.perf_counter()
        self.receiver = cpu_ticks_of(receiver_pid)[1]
        self.measured = cpu_ticks_of(measured)[1] if measured else 0
        usage = os.times()
        self.me = (usage.user + usage.system) * TICK
        self.machine = machine_ticks()[0]
        self.receiver_pid, self.measured_pid = receiver_pid, measured

    def since(self, start: _Cpu) -> dict[str, float]:
        seconds = self.at - start.at
        figures = {
            "receiver_cores": cores(self.receiver - start.receiver, seconds),
            "measured_cores": cores(self.measured - start.measured, seconds),
            "driver_cores": cores(self.me - start.me, seconds),
            "machine_cores": cores(self.machine - start.machine, seconds),
        }
        figures["other_cores"] = max(
            0.0,
            figures["machine_cores"]
            - figures["receiver_cores"]
            - figures["measured_cores"]
            - figures["driver_cores"],
        )
        return figures


def snapshot(receiver_pid: int, measured: int | None = None) -> _Cpu:
    return _Cpu(receiver_pid, measured)


def _deliverer_main(database: str, export_dir: str, conn: Connection) -> None:
    def work(conn: Connection) -> dict[str, Any]:
        from tessera.activation.delivery import Deliverer

        settings = default_settings().model_copy(update={"export_dir": Path(export_dir)})
        engine = store_engine(Path(database), settings)
        deliverer = Deliverer(engine, settings, keyring=store_keyring(Path(database), settings))
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

    child_main(work, conn)


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
        before = snapshot(receiver.pid, pid)
        started = time.perf_counter()
        conn.send("go")
        while True:
            delivered = int(db.execute(count_sql, (destination_id,)).fetchone()[0])
            elapsed = time.perf_counter() - started
            samples.append((elapsed, delivered))
            if delivered >= messages or elapsed > timeout or not process.is_alive():
                break
            time.sleep(POLL_SECONDS)
        cpu = snapshot(receiver.pid, pid).since(before)
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
    text = write_summary(profile_path, elapsed, args.profile_rate, PROFILE_IGNORE)
    if text is not None:
        out["profile_summary"] = text
    print(
        f"  {out['messages_per_s']:,.0f} messages/s ({delivered:,} in {elapsed:.2f} s)",
        flush=True,
    )
    return out
