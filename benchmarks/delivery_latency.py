"""Delivery benchmark, part 3: tracked event to webhook received, through a real
`tessera serve` and a destination created through the API."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import sqlite3
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from delivery_store import PROFILE_IGNORE, _templates
from delivery_throughput import snapshot as throughput_snapshot
from harness import (
    children_of,
    cores,
    cpu_ticks_of,
    pct,
)
from harness_profile import finish_spy, start_spy, write_summary
from harness_receiver import Receiver
from harness_server import (
    Server,
    create_token,
)


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
    token = create_token(server.database, role="admin")
    tag = uuid.uuid4().hex[:6]
    spy = None
    profile_path = args.profile / "latency.txt" if args.profile else None
    try:
        server.start()
        base = f"http://127.0.0.1:{server.port}"
        destination = create_webhook(base, token, receiver.url, args)
        workers = children_of(server.pid)
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
        cpu_server = cpu_ticks_of(server.pid)[1]
        before = throughput_snapshot(receiver.pid, worker)
        sent = asyncio.run(_send_events(base, server.write_key, args, tag))
        cpu = throughput_snapshot(receiver.pid, worker).since(before)
        cpu["server_cores"] = cores(
            cpu_ticks_of(server.pid)[1] - cpu_server, time.perf_counter() - before.at
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
    seconds = args.latency_warmup + args.latency_duration
    text = write_summary(profile_path, seconds, args.profile_rate, PROFILE_IGNORE)
    if text is not None:
        out["profile_summary"] = text
    return out
