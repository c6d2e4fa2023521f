"""Identity benchmark, part 3: profile lookups in a store of 1,000,000 profiles, built
directly (a small demo processed for real, the rest bulk-inserted), over HTTP and in-process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import random
import sqlite3
import sys
import time
import urllib.parse
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import (
    CpuSnapshot,
    pct,
)
from harness_profile import finish_spy, start_spy, write_summary
from harness_server import (
    HttpConnection,
    Server,
    child_main,
    create_token,
    event_loop_factory,
    http_head,
    receive,
    run_child,
    stop_child,
)
from harness_store import (
    PROFILE_INSERTS,
    append_dataset,
    disk_size,
    fresh_store,
    make_pipeline,
    store_engine,
    synthetic_rows,
)

if TYPE_CHECKING:
    from tessera.config import Settings

SYNTHETIC_CHUNK = 50_000


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
            for statement, rows_of in zip(
                PROFILE_INSERTS, (profiles, identities, traits), strict=True
            ):
                db.executemany(statement, rows_of)
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
            http_head(
                "GET", "/api/v1/profiles/" + urllib.parse.quote(ref, safe=":@"), host, bearer
            ),
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
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(_lookups(spec, conn))

    child_main(work, conn)


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
    output = args.profile / "lookup.txt" if args.profile else None
    text = write_summary(output, args.lookup_duration, args.profile_rate)
    if text is not None:
        out["profile_summary"] = text
    return out
