"""Identity benchmark: how fast does Tessera turn events into profiles, how soon does an event
show in its profile under load, how fast is a profile lookup in a 1-million-profile store, and
how right is the clustering?

Run it with the project's virtualenv (nothing else needed; no network beyond loopback):

    .venv/bin/python benchmarks/identity.py            # full run: 3-5 minutes, < 2 GB RAM
    .venv/bin/python benchmarks/identity.py --quick    # small sizes, short windows: 45 s
    .venv/bin/python benchmarks/identity.py --record   # also append the figures to RESULTS.md
    .venv/bin/python benchmarks/identity.py --profile /tmp/prof   # py-spy the measured processes
    .venv/bin/python benchmarks/identity.py --help     # every knob (sizes, rates, durations)

It reuses the server wrapper, machine description and py-spy summary of `benchmarks/ingest.py`
(imported from the same directory). Every store is a fresh SQLite file in a temporary
directory, with the settings a default `tessera serve` uses (synchronous=FULL); other TESSERA_*
variables in the environment reach every part and are printed (and recorded). The demo
dataset's region is TESSERA_IDENTITY_PHONE_REGION's (US by default), so national phone numbers
parse as the generator meant them.

What one run does:

1. Processing throughput. `tessera.demo.generate(seed=S, people=--people)` (20,000 people,
   about 390,000 events of seeded retail journeys with their ground truth) is appended to a
   fresh store's event log directly (`normalise_message` + `append_events`, 2,000 events a
   transaction, as tests/identity/helpers.py does, no HTTP), then a separate process (spawn,
   so the dataset's half-gigabyte of dicts is not in its heap) drains the log with the real
   processor: `tessera.processor.run_once` in a loop with a `Pipeline` built as
   `Pipeline.from_settings` builds it (batch size TESSERA_PROCESSOR_BATCH_EVENTS, default 2000).
   Prints events/s over the whole drain, the time per batch (p50/p99) and the CPU used.
2. Event-to-profile latency under load. `tessera serve` on a fresh store (a source and a token
   from `tessera source create bench` / `tessera token create bench`). A driver process
   (asyncio with a minimal HTTP/1.1 keep-alive client, uvloop when installed) sends a steady
   open-loop background load of demo messages (another seed) through POST /v1/batch
   (--background-rate events/s, 100 a request, on 8 connections; latency counted from each
   request's scheduled start). Meanwhile, at --probe-rate per second, a probe sends one
   POST /v1/identify with a fresh userId and a trait `bench_probe`, then polls
   GET /api/v1/profiles/user_id:<id> (Bearer token) every --poll-interval until it answers 200
   with that trait: send-to-visible latency, so the 200 of the identify (the fsync) counts too.
   Only probes started in the measured window count; one still invisible after
   --probe-timeout counts as infinitely late. Prints p50/p95/p99 (resolution: one poll
   interval plus one GET), the background rate actually acknowledged, and the processor's
   lag sampled from /metrics.
3. Profile lookups with 1,000,000 profiles. A store is built directly: migrated
   (`tessera.store.upgrade`), a small demo dataset (--lookup-base-people) processed for real
   (merges, absorbed ids, provenance), then synthetic profiles bulk-inserted up to --profiles
   surviving profiles with sqlite3 executemany in 50,000-profile transactions
   (journal_mode=DELETE, synchronous=OFF while building, WAL again at the end): a `profiles` row
   each (id prf_<n>, n after the demo's last event, as if each was created by an event), three
   identities (user_id, email, anonymous_id) and six traits with provenance, shaped like the
   demo's identify calls. There are no events behind the synthetic profiles (a real 1M-profile
   store would hold tens of millions): a profile lookup does not read the events table. Prints
   the build time and the size on disk. Then `tessera serve` on it, and a driver process sends
   GET /api/v1/profiles/{ref} in a closed loop on --lookup-concurrency connections (1, then 4:
   the target is judged on the last), for random refs among all profiles, a third each by id
   (absorbed ids included), by `email:...` and by `user_id:...`; every answer must be 200 with
   the expected surviving id. Prints p50/p90/p99 per concurrency, the server's CPU per lookup,
   and the in-process cost of the same lookups without HTTP (resolve_reference + get_profile on
   a pooled connection; then the response model and JSON) as the server-side share.
4. Clustering quality of part 1's store: predicted = {"type:value": profile_id} from the
   identities table, scored with `pairwise_precision_recall` against the full ground truth
   (`dataset.canonical_truth()`) and against what the messages alone prove
   (`dataset.evidence_clusters()` keyed canonically, the deterministic ceiling).
5. A summary against the targets (>= 10,000 events/s processed; event-to-profile p95 <= 1 s;
   lookup p99 <= 10 ms with 1M profiles; precision and recall 1.0 against the evidence), with
   the CPU used by the measured process and by everything else on the machine (other work
   on a 2-core machine makes the figures noisy; that line shows how much there was).
   The exit status is 1 when a check fails (events not all processed, a lookup answering
   wrong, a probe's identify refused); targets never fail it.

`--profile DIR` runs `py-spy record --format raw --threads` on the processing process (the
whole drain), and on the server during the latency window and the largest-concurrency lookup
window, writes DIR/<part>.txt (collapsed stacks) and DIR/<part>.summary.txt, and prints the
hottest functions. Sampling perturbs the figures; take the headline numbers from a run without.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import gc
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import unicodedata
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ingest
import orjson
from ingest import (
    ROOT,
    CpuSnapshot,
    Server,
    _machine_ticks,
    _py_spy,
    machine,
    run_tessera,
    summarize_profile,
    tessera_overrides,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from tessera.config import Settings
    from tessera.demo import Dataset
    from tessera.processor import Pipeline

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
# Frames every stack of the processing process shares (spawn, this file's wrappers): leave them
# out of the profile summary's inclusive table, as ingest.py leaves out uvicorn's.
ingest._BOILERPLATE = (
    *ingest._BOILERPLATE,
    "multiprocessing/",
    "(identity.py",
    "<module> (<string>)",
)

TARGET_EVENTS_PER_S = 10_000
TARGET_VISIBLE_P95_S = 1.0
TARGET_LOOKUP_P99_MS = 10.0
TARGET_PRECISION = TARGET_RECALL = 1.0

APPEND_BATCH = 2_000
SYNTHETIC_CHUNK = 50_000
SYNTHETIC_TRAITS = ("email", "first_name", "last_name", "city", "country", "created_at")
PARTS = ("processing", "latency", "lookup")


# --------------------------------------------------------------------------------------------
# Small helpers.
# --------------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile of sorted `values` (nearest rank), NaN when empty."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def _ms(seconds: float, digits: int = 1) -> str:
    return "inf" if math.isinf(seconds) else f"{seconds * 1000:.{digits}f} ms"


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _settings() -> Settings:
    from tessera.config import Settings

    return Settings()


def make_pipeline(settings: Settings) -> Pipeline:
    """The processor pipeline exactly as `tessera serve` builds it."""
    from tessera.processor import Pipeline

    return Pipeline.from_settings(settings)


def region_of(settings: Settings) -> str:
    from tessera.demo.catalog import REGIONS

    region = settings.identity_phone_region.upper()
    if region not in REGIONS:
        raise SystemExit(
            f"TESSERA_IDENTITY_PHONE_REGION={region} but the demo generator only knows "
            f"{sorted(REGIONS)}; the dataset's phone numbers must parse in the store's region"
        )
    return region


def store_engine(database: Path, settings: Settings) -> Engine:
    from tessera.store import create_store_engine

    return create_store_engine(
        f"sqlite:///{database}", sqlite_synchronous=settings.sqlite_synchronous
    )


def append_dataset(engine: Engine, dataset: Dataset, source_id: int) -> int:
    """Append every message to the log directly, APPEND_BATCH a transaction."""
    from tessera.eventlog import append_events
    from tessera.ingest.messages import normalise_message

    now = datetime.now(UTC)
    appended = 0
    for batch in dataset.batches(APPEND_BATCH):
        rows = [normalise_message(m, source_id=source_id, received_at=now) for m in batch]
        with engine.begin() as conn:
            append_events(conn, rows)
        appended += len(rows)
    return appended


def fresh_store(database: Path, settings: Settings, source: str) -> tuple[Engine, int]:
    from tessera.ingest.sources import create_source
    from tessera.store import upgrade

    engine = store_engine(database, settings)
    upgrade(engine)
    with engine.begin() as conn:
        source_id = create_source(conn, name=source).id
    return engine, source_id


def disk_size(database: Path) -> int:
    return sum(
        path.stat().st_size
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm"))
        if path.exists()
    )


def start_spy(pid: int, output: Path, rate: int, duration: float | None) -> subprocess.Popen[bytes]:
    """py-spy on `pid` into `output` (raw collapsed stacks): for `duration` seconds, or until
    the process exits when None."""
    exe = _py_spy()
    if exe is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    command = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
    command += ["--threads", "--nonblocking", "-o", str(output)]
    if duration is not None:
        command += ["--duration", str(max(1, round(duration)))]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish_spy(spy: subprocess.Popen[bytes] | None, timeout: float = 120) -> None:
    if spy is None:
        return
    try:
        _, stderr = spy.communicate(timeout=timeout)
        if spy.returncode != 0:
            print(f"  py-spy failed: {stderr.decode(errors='replace').strip()[-500:]}")
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


def run_child(
    target: Callable[..., None], args: tuple[Any, ...], name: str, timeout: float
) -> tuple[Any, Connection, multiprocessing.process.BaseProcess]:
    """Start `target(*args, conn)` in a spawned process; return its first message (which
    must be ("ready", value)), the connection and the process."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=target, args=(*args, child), name=name)
    process.start()
    child.close()
    kind, value = receive(parent, process, timeout)
    if kind != "ready":
        raise RuntimeError(f"{name} said {kind!r} before it was ready")
    return value, parent, process


def receive(
    conn: Connection, process: multiprocessing.process.BaseProcess, timeout: float
) -> tuple[str, Any]:
    if not conn.poll(timeout):
        raise RuntimeError(f"{process.name} did not report within {timeout:.0f} s")
    try:
        kind, value = conn.recv()
    except EOFError:
        process.join(5)
        raise RuntimeError(f"{process.name} died (exit {process.exitcode})") from None
    if kind == "error":
        raise RuntimeError(f"{process.name} failed: {value}")
    return str(kind), value


def stop_child(process: multiprocessing.process.BaseProcess, done: bool) -> None:
    if not done:
        process.terminate()
    process.join(10)
    if process.is_alive():
        process.kill()
        process.join()


def _child(work: Callable[[Connection], dict[str, Any]], conn: Connection) -> None:
    """Run `work` in a child process; its result or error goes back over `conn`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        conn.send(("result", work(conn)))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


# --------------------------------------------------------------------------------------------
# Part 1: processing throughput (and the store part 4 scores).
# --------------------------------------------------------------------------------------------


def _processing_main(database: str, conn: Connection) -> None:
    def work(conn: Connection) -> dict[str, Any]:
        from tessera.processor import lag, run_once, tune_gc_for_processing

        settings = _settings()
        engine = store_engine(Path(database), settings)
        pipeline = make_pipeline(settings)
        with engine.connect() as db:
            waiting = lag(db).events
        tune_gc_for_processing()  # as `tessera worker` does
        conn.send(("ready", {"pid": os.getpid(), "waiting": waiting}))
        conn.recv()  # "go", once a profiler (if any) is attached
        hz = os.sysconf("SC_CLK_TCK")
        cpu0, busy0 = sum(os.times()[:2]), _machine_ticks()[0]
        batches: list[float] = []
        applied = 0
        started = time.perf_counter()
        while True:
            t = time.perf_counter()
            done = run_once(engine, pipeline)
            if not done:
                break
            batches.append(time.perf_counter() - t)
            applied += done
        elapsed = time.perf_counter() - started
        cpu, busy = sum(os.times()[:2]) - cpu0, (_machine_ticks()[0] - busy0) / hz
        engine.dispose()
        batches.sort()
        return {
            "waiting": waiting,
            "applied": applied,
            "elapsed": elapsed,
            "batches": len(batches),
            "batch_size": pipeline.config.batch_events,
            "batch_p50": pct(batches, 0.5),
            "batch_p99": pct(batches, 0.99),
            "batch_max": batches[-1] if batches else float("nan"),
            "cores": cpu / elapsed,
            "other_cores": max(0.0, busy - cpu) / elapsed,
            "dropped": dict(getattr(pipeline, "dropped", {})),
        }

    _child(work, conn)


def part_processing(
    args: argparse.Namespace, workdir: Path, settings: Settings, region: str
) -> dict[str, Any]:
    from tessera.demo import generate

    print(f"processing: generating {args.people:,} people (seed {args.seed}, {region}) ...")
    t = time.perf_counter()
    dataset = generate(seed=args.seed, people=args.people, region=region)
    generated = time.perf_counter() - t
    database = workdir / "processing.db"
    engine, source_id = fresh_store(database, settings, "demo")
    print(f"  {len(dataset.messages):,} messages in {generated:.1f} s; appending to the log ...")
    t = time.perf_counter()
    appended = append_dataset(engine, dataset, source_id)
    append_s = time.perf_counter() - t
    engine.dispose()
    print(f"  appended in {append_s:.1f} s; draining with the processor ...", flush=True)
    ready, conn, process = run_child(_processing_main, (str(database),), "processing", 120)
    spy = None
    result: dict[str, Any] | None = None
    try:
        if args.profile:
            spy = start_spy(ready["pid"], args.profile / "processing.txt", args.profile_rate, None)
            time.sleep(1.0)
        conn.send("go")
        _, result = receive(conn, process, 3600)
    finally:
        stop_child(process, result is not None)
        finish_spy(spy)
    assert result is not None
    result.update(
        people=args.people,
        messages=len(dataset.messages),
        appended=appended,
        generate_s=generated,
        append_s=append_s,
    )
    result.update(store_counts(database))
    print("  scoring the clustering against the ground truth ...", flush=True)
    result["quality"] = score_clustering(database, dataset)
    if args.profile and (args.profile / "processing.txt").exists():
        text = summarize_profile(
            args.profile / "processing.txt", result["elapsed"], args.profile_rate
        )
        (args.profile / "processing.summary.txt").write_text(text + "\n")
        result["profile_summary"] = text
    return result


def store_counts(database: Path) -> dict[str, Any]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:

        def one(sql: str) -> int:
            return int(db.execute(sql).fetchone()[0] or 0)

        return {
            "profiles": one("SELECT count(*) FROM profiles WHERE merged_into IS NULL"),
            "absorbed": one("SELECT count(*) FROM profiles WHERE merged_into IS NOT NULL"),
            "merges": one("SELECT count(*) FROM profile_merges"),
            "identities": one("SELECT count(*) FROM identities"),
            "traits": one("SELECT count(*) FROM profile_traits"),
            "unattributed": one("SELECT sum(unattributed_events) FROM processor_state"),
            "attributed": one("SELECT count(*) FROM event_profiles"),
        }


# --------------------------------------------------------------------------------------------
# Part 4: clustering quality.
# --------------------------------------------------------------------------------------------


def score_clustering(database: Path, dataset: Dataset) -> dict[str, Any]:
    from tessera.demo import pairwise_precision_recall

    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        predicted = {
            f"{kind}:{value}": profile
            for kind, value, profile in db.execute("SELECT type, value, profile_id FROM identities")
        }
    truth = dataset.canonical_truth()
    evidence = {dataset.canonical.get(k, k): v for k, v in dataset.evidence_clusters().items()}
    precision, recall = pairwise_precision_recall(predicted, truth)
    e_precision, e_recall = pairwise_precision_recall(predicted, evidence)
    ceiling_precision, ceiling_recall = pairwise_precision_recall(evidence, truth)
    return {
        "identifiers": len(truth),
        "unlinked": sum(1 for key in truth if key not in predicted),
        "people": len(set(truth.values())),
        "evidence_clusters": len(set(evidence.values())),
        "predicted_clusters": len({predicted[k] for k in truth if k in predicted}),
        "precision": precision,
        "recall": recall,
        "evidence_precision": e_precision,
        "evidence_recall": e_recall,
        "ceiling_precision": ceiling_precision,
        "ceiling_recall": ceiling_recall,
    }


# --------------------------------------------------------------------------------------------
# A minimal HTTP/1.1 keep-alive client for the drivers (one request in flight a connection).
# --------------------------------------------------------------------------------------------


class HttpConnection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        """Send one request (reconnecting once if the server closed an idle connection);
        return the status and the body. Every request sent here is safe to repeat (GETs, and
        messages the server dedupes by messageId)."""
        for attempt in (1, 2):
            try:
                if self.writer is None:
                    await self._open()
                assert self.reader is not None and self.writer is not None
                self.writer.write(head + body)
                header = await self.reader.readuntil(b"\r\n\r\n")
                status = int(header[9:12])
                lower = header.lower()
                at = lower.find(b"\r\ncontent-length:")
                if at < 0:
                    raise RuntimeError(f"response without Content-Length: {header[:200]!r}")
                end = lower.find(b"\r\n", at + 17)
                length = int(lower[at + 17 : end])
                content = await self.reader.readexactly(length) if length else b""
                if b"\r\nconnection: close" in lower:
                    self.close()
                return status, content
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _head(method: str, path: str, host: str, auth: str, length: int | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n"
    head += "User-Agent: tessera-bench\r\n"
    if length is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
    return (head + "\r\n").encode()


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# --------------------------------------------------------------------------------------------
# Part 2: event-to-profile latency under load.
# --------------------------------------------------------------------------------------------


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


class LatencyRun:
    """One latency measurement: background batches (open loop), probes, and a /metrics
    sampler for the processor's lag, all on one event loop."""

    def __init__(self, spec: LatencySpec, bodies: list[tuple[bytes, int]]) -> None:
        self.spec = spec
        self.bodies = bodies
        self.host = f"{spec.host}:{spec.port}"
        self.basic = "Basic " + base64.b64encode(f"{spec.write_key}:".encode()).decode()
        self.bearer = f"Bearer {spec.token}"
        self.t0 = time.perf_counter()
        self.window = (self.t0 + spec.warmup, self.t0 + spec.warmup + spec.duration)
        self.stopping = False
        # Background: requests scheduled at the rate wait in `queue` for a free worker.
        self.queue: asyncio.Queue[float | None] = asyncio.Queue()
        self.sent = 0
        self.bg_events = 0
        self.bg_latencies: list[float] = []
        self.bg_status: Counter[int] = Counter()
        self.max_backlog = 0
        self.errors: dict[str, str] = {}
        # Probes, their idle connections, and the lag samples.
        self.pool: list[HttpConnection] = []
        self.probes: list[dict[str, Any]] = []
        self.probe_tasks: list[asyncio.Task[None]] = []
        self.lags: list[tuple[float, float, float]] = []  # (since t0, events, oldest seconds)
        self.metrics = HttpConnection(spec.host, spec.port)

    def in_window(self, moment: float) -> bool:
        return self.window[0] <= moment <= self.window[1]

    # -- background load ---------------------------------------------------------------------

    def next_body(self) -> tuple[bytes, int]:
        body, count = self.bodies[self.sent % len(self.bodies)]
        lap = self.sent // len(self.bodies)
        self.sent += 1
        if lap:  # fresh messageIds, or the server would dedupe the second lap away
            body = body.replace(b'"messageId":"', f'"messageId":"lap{lap}-'.encode())
        return body, count

    async def bg_worker(self) -> None:
        conn = HttpConnection(self.spec.host, self.spec.port)
        try:
            while (at := await self.queue.get()) is not None:
                body, count = self.next_body()
                head = _head("POST", "/v1/batch", self.host, self.basic, len(body))
                status, reply = await conn.request(head, body)
                done = time.perf_counter()
                if self.in_window(done):
                    self.bg_status[status] += 1
                    if status == 200:
                        self.bg_events += count
                        self.bg_latencies.append(done - at)
                if status != 200:
                    self.errors.setdefault(f"batch {status}", reply[:300].decode(errors="replace"))
        finally:
            conn.close()

    async def scheduler(self) -> None:
        interval = self.spec.batch_size / self.spec.rate
        k = 0
        while not self.stopping:
            k += 1
            at = self.t0 + k * interval
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            if self.stopping:
                break
            self.queue.put_nowait(at)
            self.max_backlog = max(self.max_backlog, self.queue.qsize())

    # -- probes ------------------------------------------------------------------------------

    async def probe(self, n: int, counted: bool) -> None:
        """Identify a fresh user, then poll its profile until the trait shows."""
        spec = self.spec
        conn = self.pool.pop() if self.pool else HttpConnection(spec.host, spec.port)
        user = f"probe-{spec.tag}-{n}"
        record: dict[str, Any] = {"counted": counted, "polls": 0}
        self.probes.append(record)
        body = orjson.dumps({"userId": user, "messageId": user, "traits": {"bench_probe": n}})
        path = "/api/v1/profiles/" + urllib.parse.quote(f"user_id:{user}", safe=":@")
        get = _head("GET", path, self.host, self.bearer)
        try:
            sent_at = time.perf_counter()
            head = _head("POST", "/v1/identify", self.host, self.basic, len(body))
            status, reply = await conn.request(head, body)
            record["ack"] = time.perf_counter() - sent_at
            if status != 200:
                record["error"] = f"identify {status}: {reply[:200].decode(errors='replace')}"
                return
            while True:
                poll_at = time.perf_counter()
                status, reply = await conn.request(get)
                record["polls"] += 1
                now = time.perf_counter()
                if status == 200:
                    traits = orjson.loads(reply).get("traits") or {}
                    if traits.get("bench_probe") == n:
                        record["visible"] = now - sent_at
                        return
                elif status != 404:
                    where = f"profile {status}"
                    self.errors.setdefault(where, reply[:300].decode(errors="replace"))
                if now - sent_at > spec.probe_timeout:
                    record["visible"] = math.inf
                    return
                await asyncio.sleep(max(0.0, poll_at + spec.poll_interval - now))
        finally:
            self.pool.append(conn)

    async def prober(self) -> None:
        n = 0
        while not self.stopping:
            n += 1
            await asyncio.sleep(max(0.0, self.t0 + n / self.spec.probe_rate - time.perf_counter()))
            if self.stopping:
                break
            counted = self.in_window(time.perf_counter())
            self.probe_tasks.append(asyncio.create_task(self.probe(n, counted)))

    # -- the processor's lag, from /metrics ---------------------------------------------------

    async def read_lag(self) -> tuple[float, float]:
        _, text = await self.metrics.request(_head("GET", "/metrics", self.host, self.bearer))
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
        workers = [asyncio.create_task(self.bg_worker()) for _ in range(self.spec.connections)]
        others = [
            asyncio.create_task(self.scheduler()),
            asyncio.create_task(self.prober()),
            asyncio.create_task(self.sampler()),
        ]
        await asyncio.sleep(self.window[0] - time.perf_counter())
        before = CpuSnapshot.take(self.spec.server_pid)
        await asyncio.sleep(self.window[1] - time.perf_counter())
        after = CpuSnapshot.take(self.spec.server_pid)
        self.stopping = True
        unsent = self.queue.qsize()
        while not self.queue.empty():
            self.queue.get_nowait()
        for _ in workers:
            self.queue.put_nowait(None)
        await asyncio.gather(*others)
        await asyncio.gather(*workers, *self.probe_tasks)
        catch_up = await self.catch_up()
        self.metrics.close()
        for conn in self.pool:
            conn.close()
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
        latencies = sorted(self.bg_latencies)
        return {
            "rate": spec.rate,
            "probe_rate": spec.probe_rate,
            "poll_interval": spec.poll_interval,
            "connections": spec.connections,
            "window_s": seconds,
            "events_per_s": self.bg_events / seconds,
            "requests_per_s": len(latencies) / seconds,
            "batch_p50": pct(latencies, 0.5),
            "batch_p99": pct(latencies, 0.99),
            "bg_status": dict(self.bg_status),
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
        with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
            return runner.run(LatencyRun(spec, bodies).run())

    _child(work, conn)


def create_token(database: Path) -> str:
    """`tessera token create bench`: the token is the last line of its output."""
    output = run_tessera(database, "token", "create", "bench")
    return output.strip().splitlines()[-1].strip()


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
    if args.profile and (args.profile / "latency.txt").exists():
        text = summarize_profile(args.profile / "latency.txt", args.duration, args.profile_rate)
        (args.profile / "latency.summary.txt").write_text(text + "\n")
        result["profile_summary"] = text
    return result


# --------------------------------------------------------------------------------------------
# Part 3: profile lookups in a 1M-profile store.
# --------------------------------------------------------------------------------------------


def _ascii(name: str) -> str:
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z]", "", plain.lower()) or "x"


def _sqlite_time(moment: datetime) -> str:
    """UTC wall time as `UtcDateTime` stores it on SQLite."""
    return moment.replace(tzinfo=None).isoformat(" ", "microseconds")


def synthetic_rows(
    rng: random.Random,
    *,
    first_index: int,
    count: int,
    base_seq: int,
    source_id: int,
    region: str,
    taken: set[str],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rows of `count` synthetic profiles (profiles, identities, profile_traits), shaped like
    the demo's identified customers: prf_<n> with n after the demo's last event and 20 apart.
    `taken` holds the "type:value" identifiers already in the store, to steer clear of."""
    from tessera.demo import DEFAULT_START
    from tessera.demo.catalog import EMAIL_DOMAINS, FIRST_NAMES, LAST_NAMES, REGIONS

    cities = REGIONS[region].cities
    profiles: list[tuple[Any, ...]] = []
    identities: list[tuple[Any, ...]] = []
    traits: list[tuple[Any, ...]] = []
    for index in range(first_index, first_index + count):
        n = base_seq + 1 + index * 20
        pid = f"prf_{n}"
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        # Unique among themselves by construction; `taken` holds the demo part's identifiers.
        email = f"{_ascii(first)}.{_ascii(last)}.{index}@{rng.choice(EMAIL_DOMAINS)}"
        user_id = f"cus_{(index * 2654435761) % 2**32:08x}"
        if f"email:{email}" in taken or f"user_id:{user_id}" in taken:
            email, user_id = f"s.{email}", f"{user_id}s"
        anonymous_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        created = DEFAULT_START + timedelta(seconds=rng.uniform(0, 60 * 86_400))
        signed_up = created + timedelta(seconds=rng.uniform(10, 3_600))
        updated = signed_up + timedelta(seconds=rng.uniform(0, 30 * 86_400))
        profiles.append(
            (pid, n, None, _sqlite_time(created), _sqlite_time(updated), rng.randint(3, 60))
        )
        identities += [
            ("anonymous_id", anonymous_id, pid, n),
            ("user_id", user_id, pid, n + 3),
            ("email", email, pid, n + 3),
        ]
        stamp = _sqlite_time(signed_up)
        values = (email, first, last, rng.choice(cities), region, signed_up.isoformat())
        message = f"syn-{n + 3:012d}"
        traits += [
            (pid, name, orjson.dumps(value).decode(), source_id, n + 3, message, stamp)
            for name, value in zip(SYNTHETIC_TRAITS, values, strict=True)
        ]
    return profiles, identities, traits


def build_lookup_store(
    database: Path, *, settings: Settings, region: str, target: int, base_people: int, seed: int
) -> dict[str, Any]:
    from tessera.demo import generate
    from tessera.processor import run_once

    started = time.perf_counter()
    engine, source_id = fresh_store(database, settings, "demo")
    dataset = generate(seed=seed, people=base_people, region=region)
    append_dataset(engine, dataset, source_id)
    pipeline = make_pipeline(settings)
    while run_once(engine, pipeline):
        pass
    engine.dispose()
    events = len(dataset.messages)
    del dataset
    demo_s = time.perf_counter() - started

    db = sqlite3.connect(database, isolation_level=None)
    try:
        for pragma in (
            "journal_mode=DELETE",
            "synchronous=OFF",
            "cache_size=-1000000",
            "temp_store=MEMORY",
        ):
            db.execute(f"PRAGMA {pragma}")
        demo_profiles = int(
            db.execute("SELECT count(*) FROM profiles WHERE merged_into IS NULL").fetchone()[0]
        )
        base_seq = int(db.execute("SELECT max(seq) FROM events").fetchone()[0] or 0)
        taken = {f"{t}:{v}" for t, v in db.execute("SELECT type, value FROM identities")}
        synthetic = max(0, target - demo_profiles)
        rng = random.Random(f"synthetic-{seed}")  # not the demo's stream: its UUIDs would repeat
        rows = 0
        for first in range(0, synthetic, SYNTHETIC_CHUNK):
            count = min(SYNTHETIC_CHUNK, synthetic - first)
            profiles, identities, traits = synthetic_rows(
                rng,
                first_index=first,
                count=count,
                base_seq=base_seq,
                source_id=source_id,
                region=region,
                taken=taken,
            )
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO profiles (id, created_seq, merged_into, created_at, updated_at, "
                "event_count) VALUES (?, ?, ?, ?, ?, ?)",
                profiles,
            )
            db.executemany(
                "INSERT INTO identities (type, value, profile_id, first_seq) VALUES (?, ?, ?, ?)",
                identities,
            )
            db.executemany(
                "INSERT INTO profile_traits (profile_id, name, value, source_id, seq, "
                "message_id, timestamp) VALUES (?, ?, ?, ?, ?, ?, ?)",
                traits,
            )
            db.execute("COMMIT")
            rows += len(profiles) + len(identities) + len(traits)
        db.execute("PRAGMA journal_mode=WAL")
        total = int(db.execute("SELECT count(*) FROM profiles").fetchone()[0])
        surviving = int(
            db.execute("SELECT count(*) FROM profiles WHERE merged_into IS NULL").fetchone()[0]
        )
        identity_rows = int(db.execute("SELECT count(*) FROM identities").fetchone()[0])
        trait_rows = int(db.execute("SELECT count(*) FROM profile_traits").fetchone()[0])
    finally:
        db.close()
    return {
        "build_s": time.perf_counter() - started,
        "demo_s": demo_s,
        "demo_people": base_people,
        "demo_events": events,
        "demo_profiles": demo_profiles,
        "synthetic": synthetic,
        "synthetic_rows": rows,
        "profiles_total": total,
        "profiles": surviving,
        "identities": identity_rows,
        "traits": trait_rows,
        "bytes": disk_size(database),
    }


def sample_refs(database: Path, count: int, seed: int) -> list[tuple[str, str]]:
    """(ref, surviving profile id) for `count` random profiles: a third by id (absorbed ids
    included), a third by email:..., a third by user_id:... (by id when it has none)."""
    rng = random.Random(seed)
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        ids = [row[0] for row in db.execute("SELECT id FROM profiles")]
        refs = []
        for pid in rng.sample(ids, min(count, len(ids))):
            survivor = db.execute(
                "SELECT coalesce(merged_into, id) FROM profiles WHERE id = ?", (pid,)
            ).fetchone()[0]
            kind = rng.choice(("id", "email", "user_id"))
            value = None
            if kind != "id":
                row = db.execute(
                    "SELECT value FROM identities WHERE profile_id = ? AND type = ? "
                    "ORDER BY first_seq LIMIT 1",
                    (survivor, kind),
                ).fetchone()
                value = row[0] if row else None
            refs.append((pid if value is None else f"{kind}:{value}", survivor))
    return refs


@dataclasses.dataclass(frozen=True)
class LookupSpec:
    host: str
    port: int
    token: str
    server_pid: int
    refs: list[tuple[str, str]]
    concurrency: int
    warmup: float
    duration: float
    seed: int


async def _lookups(spec: LookupSpec, report: Connection) -> dict[str, Any]:
    host = f"{spec.host}:{spec.port}"
    bearer = f"Bearer {spec.token}"
    requests = [
        (
            _head("GET", "/api/v1/profiles/" + urllib.parse.quote(ref, safe=":@"), host, bearer),
            f'"id":"{survivor}"'.encode(),
        )
        for ref, survivor in spec.refs
    ]
    rng = random.Random(spec.seed)
    rng.shuffle(requests)
    t0 = time.perf_counter()
    window = [t0 + spec.warmup, t0 + spec.warmup + spec.duration]
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    wrong: list[str] = []
    position = 0

    async def worker() -> None:
        nonlocal position
        conn = HttpConnection(spec.host, spec.port)
        try:
            while time.perf_counter() < window[1]:
                head, expected = requests[position % len(requests)]
                position += 1
                started = time.perf_counter()
                status, body = await conn.request(head)
                done = time.perf_counter()
                if status != 200 or expected not in body:
                    wrong.append(f"{head.split(b' ')[1].decode()}: {status} {body[:200]!r}")
                if window[0] <= started and done <= window[1]:
                    statuses[status] += 1
                    latencies.append(done - started)
        finally:
            conn.close()

    async def window_cpu() -> tuple[CpuSnapshot, CpuSnapshot]:
        await asyncio.sleep(window[0] - time.perf_counter())
        report.send(("measuring", None))
        before = CpuSnapshot.take(spec.server_pid)
        await asyncio.sleep(window[1] - time.perf_counter())
        return before, CpuSnapshot.take(spec.server_pid)

    cpu = asyncio.create_task(window_cpu())
    await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    before, after = await cpu
    hz = os.sysconf("SC_CLK_TCK")
    latencies.sort()
    ok = statuses.get(200, 0)
    server_cpu = (after.server_all - before.server_all) / hz
    return {
        "concurrency": spec.concurrency,
        "requests_per_s": len(latencies) / spec.duration,
        "p50": pct(latencies, 0.5),
        "p90": pct(latencies, 0.9),
        "p99": pct(latencies, 0.99),
        "max": latencies[-1] if latencies else math.nan,
        "statuses": dict(statuses),
        "wrong": len(wrong),
        "wrong_sample": wrong[:3],
        "server_cpu_per_request": server_cpu / ok if ok else math.nan,
        "server_cores": server_cpu / spec.duration,
        "driver_cores": (after.driver - before.driver) / spec.duration,
        "machine_cores": (after.machine_busy - before.machine_busy) / hz / spec.duration,
    }


def _lookup_main(spec: LookupSpec, conn: Connection) -> None:
    def work(conn: Connection) -> dict[str, Any]:
        conn.send(("ready", None))
        with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
            return runner.run(_lookups(spec, conn))

    _child(work, conn)


def in_process_cost(
    database: Path, refs: list[tuple[str, str]], settings: Settings
) -> dict[str, Any]:
    """The lookups without HTTP: resolve + assemble on a pooled connection (what the route's
    handler does in the store), then the response model and JSON (what FastAPI adds)."""
    from tessera.identity.config import IdentityRules
    from tessera.profiles import views
    from tessera.profiles.schemas import ProfileOut

    rules = IdentityRules.from_settings(settings)
    engine = store_engine(database, settings)
    store: list[float] = []
    render: list[float] = []
    try:
        for ref, _ in refs[:50]:  # warm the pool and the statement caches
            with engine.begin() as conn:
                views.get_profile(conn, views.resolve_reference(conn, ref, rules))
        for ref, survivor in refs:
            started = time.perf_counter()
            with engine.begin() as conn:
                profile = views.get_profile(conn, views.resolve_reference(conn, ref, rules))
            assembled = time.perf_counter()
            ProfileOut.model_validate(profile).model_dump_json()
            store.append(assembled - started)
            render.append(time.perf_counter() - assembled)
            if profile["id"] != survivor:
                raise RuntimeError(f"{ref} resolved to {profile['id']}, not {survivor}")
    finally:
        engine.dispose()
    store.sort()
    render.sort()
    return {
        "lookups": len(refs),
        "store_p50": pct(store, 0.5),
        "store_p99": pct(store, 0.99),
        "render_p50": pct(render, 0.5),
        "render_p99": pct(render, 0.99),
    }


def part_lookup(
    args: argparse.Namespace, workdir: Path, settings: Settings, region: str
) -> dict[str, Any]:
    directory = workdir / "lookup"
    directory.mkdir()
    server = Server(directory)
    print(
        f"lookup: building a store with {args.profiles:,} profiles ({args.lookup_base_people:,} "
        "demo people processed, the rest bulk-inserted) ...",
        flush=True,
    )
    built = build_lookup_store(
        server.database,
        settings=settings,
        region=region,
        target=args.profiles,
        base_people=args.lookup_base_people,
        seed=args.seed + 2,
    )
    print(
        f"  built in {built['build_s']:.1f} s, {built['bytes'] / 2**20:,.0f} MiB on disk; "
        "sampling refs ...",
        flush=True,
    )
    refs = sample_refs(server.database, args.lookup_refs, args.seed + 3)
    token = create_token(server.database)
    phases: list[dict[str, Any]] = []
    spy = None
    try:
        server.start()
        print(f"  server pid {server.pid}, http://127.0.0.1:{server.port}")
        for concurrency in args.lookup_concurrency:
            spec = LookupSpec(
                host="127.0.0.1",
                port=server.port,
                token=token,
                server_pid=server.pid,
                refs=refs,
                concurrency=concurrency,
                warmup=args.lookup_warmup,
                duration=args.lookup_duration,
                seed=args.seed + concurrency,
            )
            print(
                f"  GET /api/v1/profiles/{{ref}} on {concurrency} connection(s): "
                f"{spec.warmup:g} s warm-up + {spec.duration:g} s ...",
                flush=True,
            )
            result: dict[str, Any] | None = None
            _, conn, process = run_child(_lookup_main, (spec,), f"lookup-{concurrency}", 120)
            try:
                receive(conn, process, spec.warmup + 60)  # "measuring"
                if args.profile and concurrency == max(args.lookup_concurrency):
                    output = args.profile / "lookup.txt"
                    spy = start_spy(server.pid, output, args.profile_rate, spec.duration)
                _, result = receive(conn, process, spec.duration + 120)
            finally:
                stop_child(process, result is not None)
            assert result is not None
            phases.append(result)
            finish_spy(spy)
            spy = None
    except Exception:
        print(f"server log (tail):\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        finish_spy(spy)
        server.stop()
    print("  the same lookups in-process, without HTTP ...", flush=True)
    cost = in_process_cost(server.database, refs[: args.lookup_in_process], settings)
    out: dict[str, Any] = {"build": built, "phases": phases, "in_process": cost, "refs": len(refs)}
    if args.profile and (args.profile / "lookup.txt").exists():
        text = summarize_profile(
            args.profile / "lookup.txt", args.lookup_duration, args.profile_rate
        )
        (args.profile / "lookup.summary.txt").write_text(text + "\n")
        out["profile_summary"] = text
    return out


# --------------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------------


def _other(result: dict[str, Any], *measured: str) -> float:
    busy: float = result["machine_cores"] - sum(result[key] for key in measured)
    return max(0.0, busy)


def summary_lines(results: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(figures, targets, failed checks)."""
    lines: list[str] = []
    targets = ["targets:"]
    failed: list[str] = []
    processing = results.get("processing")
    if processing is not None:
        p = processing
        rate = p["applied"] / p["elapsed"]
        lines += [
            f"processing: demo dataset of {p['people']:,} people, {p['messages']:,} events "
            f"(generated in {p['generate_s']:.1f} s, appended to the log directly in "
            f"{p['append_s']:.1f} s: {p['appended'] / p['append_s']:,.0f} events/s)",
            f"  {rate:,.0f} events/s  ({p['applied']:,} events in {p['elapsed']:.1f} s, "
            f"{p['batches']:,} batches of {p['batch_size']}: p50 {_ms(p['batch_p50'])}, "
            f"p99 {_ms(p['batch_p99'])}, max {_ms(p['batch_max'])})",
            f"  CPU (cores busy): processor {p['cores']:.2f}, other processes "
            f"{p['other_cores']:.2f}; {rate / p['cores']:,.0f} events per CPU-second",
            f"  result: {p['profiles']:,} profiles ({p['absorbed']:,} absorbed by "
            f"{p['merges']:,} merges), {p['identities']:,} identities, {p['traits']:,} traits, "
            f"{p['unattributed']:,} unattributed events",
        ]
        if p["dropped"]:
            dropped = ", ".join(f"{k}: {v:,}" for k, v in sorted(p["dropped"].items()))
            lines.append(f"  identifiers dropped by the rules: {dropped}")
        targets.append(
            f"  processing >= {TARGET_EVENTS_PER_S:,} events/s: {rate:,.0f}  "
            f"{_mark(rate >= TARGET_EVENTS_PER_S)}"
        )
        if p["applied"] != p["appended"] or p["attributed"] != p["appended"]:
            failed.append(
                f"processing: {p['appended']:,} appended, {p['applied']:,} applied, "
                f"{p['attributed']:,} attributed"
            )
        q = p["quality"]
        lines += [
            f"clustering of those {q['identifiers']:,} identifiers ({q['people']:,} people; "
            f"{q['evidence_clusters']:,} clusters provable from the messages; "
            f"{q['predicted_clusters']:,} profiles; {q['unlinked']:,} identifiers unlinked):",
            f"  vs the evidence-provable clustering: precision {q['evidence_precision']:.4f}  "
            f"recall {q['evidence_recall']:.4f}",
            f"  vs the full ground truth:            precision {q['precision']:.4f}  "
            f"recall {q['recall']:.4f}  (the evidence itself reaches "
            f"{q['ceiling_precision']:.4f} / {q['ceiling_recall']:.4f})",
        ]
        ok = q["evidence_precision"] >= TARGET_PRECISION and q["evidence_recall"] >= TARGET_RECALL
        targets.append(
            f"  precision / recall vs evidence = 1.0 / 1.0: {q['evidence_precision']:.4f} / "
            f"{q['evidence_recall']:.4f}  {_mark(ok)}"
        )
    latency = results.get("latency")
    if latency is not None:
        r = latency
        statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["bg_status"].items()))
        lines += [
            f"event-to-profile latency: identify of a new userId -> GET /api/v1/profiles/"
            f"user_id:... shows its trait ({r['probes']:,} probes at {r['probe_rate']:g}/s, "
            f"polled every {r['poll_interval'] * 1000:.0f} ms, {r['polls_per_s']:.0f} GETs/s)",
            f"  p50 {_ms(r['visible_p50'])}  p95 {_ms(r['visible_p95'])}  "
            f"p99 {_ms(r['visible_p99'])}  max {_ms(r['visible_max'])}  (identify acknowledged: "
            f"p50 {_ms(r['ack_p50'])}, p99 {_ms(r['ack_p99'])}; never visible: {r['invisible']})",
            f"  background load: {r['events_per_s']:,.0f} events/s acknowledged of "
            f"{r['rate']:,.0f} offered through /v1/batch ({r['requests_per_s']:.1f} requests/s "
            f"on {r['connections']} connections, p50 {_ms(r['batch_p50'])}, p99 "
            f"{_ms(r['batch_p99'])}; statuses {statuses}; most waiting: {r['max_backlog']})",
            f"  processor lag in the window: mean {r['lag_mean']:,.0f} events, max "
            f"{r['lag_max']:,.0f}, oldest waiting up to {r['oldest_max']:.2f} s, "
            f"{r['lag_end']:,.0f} at the end; caught up {r['catch_up_s']:.1f} s after the load",
            f"  CPU (cores busy): server {r['server_cores']:.2f}, driver {r['driver_cores']:.2f}"
            f", other processes {_other(r, 'server_cores', 'driver_cores'):.2f}",
        ]
        p95 = r["visible_p95"]
        targets.append(
            f"  event-to-profile p95 <= {TARGET_VISIBLE_P95_S:g} s (at {r['events_per_s']:,.0f} "
            f"events/s): {_ms(p95)}  {_mark(p95 <= TARGET_VISIBLE_P95_S)}"
        )
        if r["probe_errors"]:
            failed.append(
                f"latency: {len(r['probe_errors'])} probes refused, e.g. {r['probe_errors'][0]}"
            )
        for where, body in r["errors"].items():
            lines.append(f"  sample {where} body: {body}")
    lookup = results.get("lookup")
    if lookup is not None:
        b, c = lookup["build"], lookup["in_process"]
        lines += [
            f"lookup store: {b['profiles']:,} profiles ({b['profiles_total']:,} rows with "
            f"absorbed ids), {b['identities']:,} identities, {b['traits']:,} traits: "
            f"{b['demo_people']:,} demo people ({b['demo_events']:,} events) processed, "
            f"{b['synthetic']:,} profiles bulk-inserted",
            f"  built in {b['build_s']:.1f} s (demo part {b['demo_s']:.1f} s, bulk insert "
            f"{b['synthetic_rows'] / max(1e-9, b['build_s'] - b['demo_s']):,.0f} rows/s); "
            f"{b['bytes'] / 2**20:,.0f} MiB on disk",
        ]
        for phase in lookup["phases"]:
            statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(phase["statuses"].items()))
            lines += [
                f"  GET /api/v1/profiles/{{ref}}, closed loop on {phase['concurrency']} "
                f"connection(s), {lookup['refs']:,} random refs (id, email:, user_id:):",
                f"    {phase['requests_per_s']:,.0f} lookups/s  p50 {_ms(phase['p50'])}  "
                f"p90 {_ms(phase['p90'])}  p99 {_ms(phase['p99'])}  max {_ms(phase['max'])}  "
                f"({statuses}; wrong answers: {phase['wrong']})",
                f"    server CPU {phase['server_cpu_per_request'] * 1000:.2f} ms a lookup; "
                f"CPU (cores busy): server {phase['server_cores']:.2f}, driver "
                f"{phase['driver_cores']:.2f}, other processes "
                f"{_other(phase, 'server_cores', 'driver_cores'):.2f}",
            ]
            for sample in phase["wrong_sample"]:
                lines.append(f"    wrong: {sample}")
            if phase["wrong"]:
                failed.append(f"lookup: {phase['wrong']} wrong answers")
        lines.append(
            f"  in-process, no HTTP ({c['lookups']:,} lookups): resolve + assemble p50 "
            f"{_ms(c['store_p50'], 2)}, p99 {_ms(c['store_p99'], 2)}; response model + JSON "
            f"p50 {_ms(c['render_p50'], 2)}, p99 {_ms(c['render_p99'], 2)}"
        )
        if lookup["phases"]:
            last = lookup["phases"][-1]
            targets.append(
                f"  lookup p99 <= {TARGET_LOOKUP_P99_MS:g} ms with {b['profiles']:,} profiles "
                f"({last['concurrency']} connections): {_ms(last['p99'])}  "
                f"{_mark(last['p99'] * 1000 <= TARGET_LOOKUP_P99_MS)}"
            )
    return lines, targets, failed


RESULTS_SECTION_NOTE = """\
One run of `.venv/bin/python benchmarks/identity.py --record` (see its docstring for what is
measured and how). Targets: >= 10,000 events/s processed; event-to-profile p95 <= 1 s under
load; profile lookup p99 <= 10 ms with 1M profiles; precision and recall 1.0 against the
evidence-provable clustering. "other processes" is CPU used by anything else on the machine."""


def record(lines: list[str], args: argparse.Namespace, info: dict[str, str]) -> None:
    section = [
        "",
        f"## identity {info['date']}",
        "",
        RESULTS_SECTION_NOTE,
        "",
        f"- machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}",
        f"- commit: {info['commit']}",
        *[f"- setting from the environment: {k}={v}" for k, v in tessera_overrides().items()],
        f"- run: parts {','.join(args.parts)}; {args.people:,} demo people (seed {args.seed}); "
        f"latency {args.warmup:g} s warm-up + {args.duration:g} s at "
        f"{args.background_rate:,.0f} events/s; lookups {args.lookup_warmup:g} s + "
        f"{args.lookup_duration:g} s per concurrency"
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
        description="Benchmark identity resolution and profiles (see the module docstring)."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and short windows")
    parser.add_argument(
        "--parts",
        type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
        default=list(PARTS),
        help="comma-separated subset of processing,latency,lookup (quality comes with processing)",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the demo datasets")
    size = parser.add_argument_group("processing (part 1) and quality (part 4)")
    size.add_argument("--people", type=int, default=20_000, help="demo people (~19.4 events each)")
    load = parser.add_argument_group("event-to-profile latency (part 2)")
    load.add_argument("--background-rate", type=float, default=5_000, help="events/s offered")
    load.add_argument("--batch-size", type=int, default=100, help="events per /v1/batch request")
    load.add_argument("--background-connections", type=int, default=8)
    load.add_argument("--probe-rate", type=float, default=5.0, help="identify probes per second")
    load.add_argument("--poll-interval", type=float, default=0.02, help="seconds between GETs")
    load.add_argument("--probe-timeout", type=float, default=30.0, help="give up on a probe after")
    load.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    load.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    look = parser.add_argument_group("profile lookups (part 3)")
    look.add_argument("--profiles", type=int, default=1_000_000, help="profiles in the store")
    look.add_argument(
        "--lookup-base-people", type=int, default=2_000, help="demo people processed for real"
    )
    look.add_argument(
        "--lookup-concurrency",
        type=_numbers,
        default=[1, 4],
        help="comma-separated connection counts, one closed-loop phase each (target: the last)",
    )
    look.add_argument("--lookup-refs", type=int, default=20_000, help="distinct random refs")
    look.add_argument("--lookup-warmup", type=float, default=2.0)
    look.add_argument("--lookup-duration", type=float, default=10.0)
    look.add_argument(
        "--lookup-in-process", type=int, default=5_000, help="lookups timed without HTTP"
    )
    parser.add_argument("--record", action="store_true", help="append the figures to RESULTS.md")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy into DIR/<part>.txt")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    unknown = set(args.parts) - set(PARTS)
    if unknown or not args.parts:
        parser.error(f"--parts takes {', '.join(PARTS)}; got {args.parts}")
    if not args.lookup_concurrency or min(args.lookup_concurrency) < 1:
        parser.error("--lookup-concurrency needs positive numbers")
    if args.quick:
        args.people = min(args.people, 3_000)
        args.warmup, args.duration = min(args.warmup, 2.0), min(args.duration, 6.0)
        args.profiles = min(args.profiles, 100_000)
        args.lookup_base_people = min(args.lookup_base_people, 500)
        args.lookup_warmup, args.lookup_duration = min(args.lookup_warmup, 1.0), 3.0
        args.lookup_in_process = min(args.lookup_in_process, 1_000)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    print(
        f"tessera identity benchmark: {info['date']}, {info['cores']} cores ({info['cpu']}), "
        f"Python {info['python']}, commit {info['commit']}"
    )
    with contextlib.suppress(OSError):
        print(f"load average before the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    overrides = tessera_overrides()
    if overrides:
        print(
            "settings from the environment: " + ", ".join(f"{k}={v}" for k, v in overrides.items())
        )
    settings = _settings()
    region = region_of(settings)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="tessera-identity-bench-"))
    results: dict[str, Any] = {}
    try:
        if "processing" in args.parts:
            results["processing"] = part_processing(args, workdir, settings, region)
        if "latency" in args.parts:
            results["latency"] = part_latency(args, workdir, region)
        if "lookup" in args.parts:
            results["lookup"] = part_lookup(args, workdir, settings, region)
    finally:
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
    for part in PARTS:
        text = results.get(part, {}).get("profile_summary")
        if text:
            print()
            print(text)
    if args.record:
        record(lines, args, info)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers and drivers were stopped", file=sys.stderr)
        sys.exit(130)
