"""Schema catalog benchmark: what the schema batch stage costs the processor, and how fast
the catalog, the recount and the Home dashboard answer in a store of 1,000,000 profiles.

    .venv/bin/python benchmarks/schema.py              # both parts: a few minutes
    .venv/bin/python benchmarks/schema.py --quick      # small sizes: about a minute
    .venv/bin/python benchmarks/schema.py --parts processing --rounds 3
    .venv/bin/python benchmarks/schema.py --record     # also append to RESULTS.md

1. Processing. The demo's journeys (`--people`, seed 42) are appended to a fresh store's log
   (no HTTP), and copies of it are drained by the real processor in spawned processes
   (`run_once` in a loop, the pipeline `Pipeline.from_settings` builds), alternately without
   and with the schema stage, `--rounds` times. The figure is CPU per event of the draining
   process (user + system, which other processes on a busy machine disturb less than wall
   time), and the ratio of the two medians: the processor's throughput with the stage
   against without it, measured in the same run.
2. Reads at scale. A store built directly with sqlite3: `--profiles` synthetic profiles
   (`harness_store.synthetic_rows`, three identities each; every tenth without its email
   and user id, so not identified), 5 audiences of 50%, 20%, 10%, 5% and 1% of them,
   50,000 merges over two days, 3 destinations with 20,000 pending and 5,000 dead messages
   each, a catalog of 300 event names with 30 properties each, 500 trait paths, and 7 days
   of per-minute counts for 10 sources. Then the recount job is run to the end of a pass
   (its steps timed), and each read the Schema and Home pages make is timed in-process
   (`--repeat` times; the dashboard also rendered through its response model to JSON, as
   the route does). The event log is left empty: no read touches it beyond an index probe.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from harness import (
    add_output_flags,
    announce,
    comma_list,
    machine,
    make_workdir,
    ms,
    pct,
    record,
    remove_workdir,
)
from harness_server import child_main, receive, run_child, stop_child
from harness_store import (
    PROFILE_INSERTS,
    append_dataset,
    fresh_store,
    make_pipeline,
    region_of,
    sqlite_time,
    store_engine,
    synthetic_rows,
)
from harness_store import settings as default_settings

PARTS = ("processing", "reads")
CHUNK = 50_000
AUDIENCE_SHARES = (0.5, 0.2, 0.1, 0.05, 0.01)
TARGET_PAGE_MS = 300.0
ANONYMOUS = "anonymous_id"


# --------------------------------------------------------------------------------------------
# Part 1: the stage's cost on the processor.
# --------------------------------------------------------------------------------------------


def _drain_main(database: str, with_schema: bool, conn: Connection) -> None:
    def work(conn: Connection) -> dict[str, Any]:
        from tessera.processor import run_once, tune_gc_for_processing
        from tessera.schema.stage import create_stage

        settings = default_settings()
        engine = store_engine(Path(database), settings)
        pipeline = make_pipeline(settings)
        others = [stage for stage in pipeline.stages if stage.name != "schema"]
        pipeline.stages = [*others, create_stage(settings)] if with_schema else others
        tune_gc_for_processing()
        conn.send(("ready", os.getpid()))
        started, cpu = time.perf_counter(), sum(os.times()[:2])
        applied = 0
        while done := run_once(engine, pipeline):
            applied += done
        cpu, elapsed = sum(os.times()[:2]) - cpu, time.perf_counter() - started
        engine.dispose()
        return {"applied": applied, "cpu": cpu, "elapsed": elapsed}

    child_main(work, conn)


def part_processing(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from tessera.demo import generate

    settings = default_settings()
    dataset = generate(seed=42, people=args.people, region=region_of(settings))
    template = workdir / "log.db"
    engine, source_id = fresh_store(template, settings, "demo")
    append_dataset(engine, dataset, source_id)
    engine.dispose()
    print(f"processing: {len(dataset.messages):,} demo events appended; draining ...", flush=True)
    runs: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.rounds):
        for with_schema in (False, True):
            database = workdir / f"drain-{round_}-{int(with_schema)}.db"
            shutil.copyfile(template, database)
            _, conn, process = run_child(
                _drain_main, (str(database), with_schema), "drain", timeout=120
            )
            result: dict[str, Any] | None = None
            try:
                _, result = receive(conn, process, 3600)
            finally:
                stop_child(process, result is not None)
            assert result is not None
            per_event = result["cpu"] / result["applied"]
            runs[with_schema].append(per_event)
            label = "with the schema stage" if with_schema else "without"
            print(
                f"  round {round_ + 1} {label:>21}: {per_event * 1e6:6.1f} µs CPU an event, "
                f"{result['applied'] / result['elapsed']:,.0f} events/s wall",
                flush=True,
            )
            database.unlink()
    without, with_ = statistics.median(runs[False]), statistics.median(runs[True])
    return {
        "events": len(dataset.messages),
        "without_us": without * 1e6,
        "with_us": with_ * 1e6,
        "ratio": without / with_,
        "runs": {str(key): value for key, value in runs.items()},
    }


# --------------------------------------------------------------------------------------------
# Part 2: reads at scale.
# --------------------------------------------------------------------------------------------


def build_store(database: Path, profiles: int, now: datetime) -> dict[str, Any]:
    """The store part 2 reads (see the module docstring), built with sqlite3."""
    settings = default_settings()
    engine, source_id = fresh_store(database, settings, "web")
    engine.dispose()
    started = time.perf_counter()
    rng = random.Random("schema-bench")
    db = sqlite3.connect(database, isolation_level=None)
    try:
        for pragma in ("journal_mode=DELETE", "synchronous=OFF", "cache_size=-1000000"):
            db.execute(f"PRAGMA {pragma}")
        ids: list[str] = []
        for first in range(0, profiles, CHUNK):
            rows = synthetic_rows(
                rng,
                first_index=first,
                count=min(CHUNK, profiles - first),
                base_seq=0,
                source_id=source_id,
                region="US",
                taken=set(),
            )
            profile_rows, identity_rows, trait_rows = rows
            # Every tenth profile is anonymous: only its anonymous id.
            identity_rows = [
                row for i, row in enumerate(identity_rows) if (i // 3) % 10 or row[0] == ANONYMOUS
            ]
            db.execute("BEGIN")
            for statement, batch in zip(
                PROFILE_INSERTS, (profile_rows, identity_rows, trait_rows), strict=True
            ):
                db.executemany(statement, batch)
            db.execute("COMMIT")
            ids += [row[0] for row in profile_rows]
        stamp = sqlite_time(now)
        db.execute("BEGIN")
        for index, share in enumerate(AUDIENCE_SHARES):
            audience_id = f"aud_bench{index}"
            db.execute(
                "INSERT INTO audiences (id, name, description, definition, status, build_cursor, "
                "built_profiles, created_at, updated_at) VALUES (?, ?, '', '{}', 'ready', '', 0, "
                "?, ?)",
                (audience_id, f"Audience {index}", stamp, stamp),
            )
            members = sorted(rng.sample(ids, int(len(ids) * share)))
            db.executemany(
                "INSERT INTO audience_members (audience_id, profile_id, entered_at) "
                "VALUES (?, ?, ?)",
                [(audience_id, pid, stamp) for pid in members],
            )
        db.executemany(
            "INSERT INTO profile_merges (survivor_id, absorbed_id, rule, identifiers, seq, "
            "message_id, merged_at) VALUES (?, ?, 'identifier', '[]', ?, ?, ?)",
            [
                (
                    rng.choice(ids),
                    f"prf_gone{i}",
                    i,
                    f"m{i}",
                    sqlite_time(now - timedelta(seconds=rng.uniform(0, 2 * 86_400))),
                )
                for i in range(50_000)
            ],
        )
        for d in range(3):
            destination = f"dst_bench{d}"
            db.execute(
                "INSERT INTO destinations (id, name, type, config, subscriptions, mapping, "
                "consent_categories, enabled, created_at, updated_at) VALUES (?, ?, 'webhook', "
                "'{}', '[]', '{}', '[]', 1, ?, ?)",
                (destination, f"Destination {d}", stamp, stamp),
            )
            db.executemany(
                "INSERT INTO destination_counters (destination_id, name, count) VALUES (?, ?, ?)",
                [(destination, name, 1000) for name in ("sent", "failed", "dead")],
            )
            db.executemany(
                "INSERT INTO outbox (destination_id, person, kind, message_id, payload, "
                "created_at, expires_at, state, attempts, next_attempt_at, replays) VALUES "
                "(?, ?, 'event', ?, '{}', ?, ?, ?, 0, ?, 0)",
                [
                    (destination, rng.choice(ids), f"o{d}-{i}", stamp, stamp, state, stamp)
                    for i, state in enumerate(["pending"] * 20_000 + ["dead"] * 5_000)
                ],
            )
        for name in range(300):
            db.execute(
                "INSERT INTO schema_event_types VALUES (?, 'track', 1000, ?, ?, 0)",
                (f"Event {name:03d}", stamp, stamp),
            )
            db.executemany(
                "INSERT INTO schema_fields VALUES ('event', ?, 'track', ?, 'string', 1000)",
                [(f"Event {name:03d}", f"property_{p}") for p in range(30)],
            )
        db.executemany(
            "INSERT INTO schema_fields VALUES ('trait', '', '', ?, 'string', 1000)",
            [(f"trait_{t}",) for t in range(500)],
        )
        for source in range(1, 11):
            db.execute(
                "INSERT OR IGNORE INTO sources (id, name, write_key, enabled, created_at) "
                "VALUES (?, ?, ?, 1, ?)",
                (source, f"source {source}", f"wk_{source}", stamp),
            )
        first_minute = int(now.timestamp()) // 60 - 7 * 1440  # as `minute_of` counts
        db.executemany(
            "INSERT INTO schema_event_minutes VALUES (?, ?, ?)",
            [
                (first_minute + m, source, rng.randint(0, 500))
                for m in range(7 * 1440)
                for source in range(1, 11)
            ],
        )
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode=WAL")
    finally:
        db.close()
    return {"build_s": time.perf_counter() - started, "profiles": profiles}


def timed(function: Callable[[], Any], repeat: int) -> tuple[list[float], list[float]]:
    """Wall and CPU times of `repeat` calls, each sorted (on a busy machine the CPU time
    says what the call costs, the wall time what a user waits)."""
    wall, cpu = [], []
    for _ in range(repeat):
        started, used = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - used)
    return sorted(wall), sorted(cpu)


def part_reads(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from tessera.schema import service
    from tessera.schema.dashboard import dashboard_summary
    from tessera.schema.recount import RecountJob
    from tessera.schema.schemas import Dashboard

    now = datetime.now(UTC)
    database = workdir / "reads.db"
    print(f"reads: building a store of {args.profiles:,} profiles ...", flush=True)
    built = build_store(database, args.profiles, now)
    print(f"  built in {built['build_s']:.0f} s; recounting ...", flush=True)
    engine = store_engine(database, default_settings())
    job = RecountJob(max_interval=timedelta(minutes=5), minutes_retention=timedelta(days=7))
    steps: list[float] = []
    step_cpu: list[float] = []
    started, used = time.perf_counter(), time.process_time()
    while True:
        step, step_used = time.perf_counter(), time.process_time()
        if not job.run(engine, now=now):
            break
        steps.append(time.perf_counter() - step)
        step_cpu.append(time.process_time() - step_used)
    recount_s, recount_cpu = time.perf_counter() - started, time.process_time() - used
    steps.sort()
    step_cpu.sort()
    with engine.connect() as conn:
        counts = service.profile_counts(conn)

        def dashboard() -> None:
            Dashboard.model_validate(dashboard_summary(conn, now=now)).model_dump_json()

        reads = {
            "dashboard (rendered)": dashboard,
            "events, first page": lambda: service.list_event_types(conn, limit=100),
            "events, search": lambda: service.list_event_types(conn, search="event 29"),
            "event properties": lambda: service.get_event_properties(conn, name="Event 150"),
            "traits": lambda: service.list_traits(conn),
            "events per minute, 24 h": lambda: service.events_per_minute(
                conn, since=now - timedelta(hours=24), until=now
            ),
            "merges today": lambda: service.merges_since(
                conn, since=now.replace(hour=0, minute=0, second=0, microsecond=0)
            ),
        }
        timings = {name: timed(read, args.repeat) for name, read in reads.items()}
    engine.dispose()
    return {
        **built,
        "counts": counts,
        "recount_s": recount_s,
        "recount_cpu": recount_cpu,
        "steps": len(steps),
        "step_p50": pct(steps, 0.5),
        "step_max": steps[-1] if steps else float("nan"),
        "step_cpu_p50": pct(step_cpu, 0.5),
        "step_cpu_max": step_cpu[-1] if step_cpu else float("nan"),
        "reads": {
            name: (pct(wall, 0.5), pct(wall, 0.95), pct(cpu, 0.5))
            for name, (wall, cpu) in timings.items()
        },
    }


# --------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------


def summary_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    if "processing" in results:
        r = results["processing"]
        lines += [
            f"processing: {r['events']:,} demo events, CPU per event (median of "
            f"{len(r['runs']['False'])} drains each):",
            f"  without the schema stage {r['without_us']:6.1f} µs",
            f"  with it                  {r['with_us']:6.1f} µs",
            f"  throughput with / without: {r['ratio']:.2f}",
        ]
    if "reads" in results:
        r = results["reads"]
        c = r["counts"]
        lines += [
            f"reads: {r['profiles']:,} profiles ({c['identified']:,} identified), 5 audiences, "
            "50,000 merges, 3 destinations with 25,000 queued each, 300 event names",
            f"  recount pass: {r['recount_s']:.1f} s ({r['recount_cpu']:.1f} s CPU) in "
            f"{r['steps']} turns of the job; a turn p50 {ms(r['step_p50'])} "
            f"({ms(r['step_cpu_p50'])} CPU), max {ms(r['step_max'])} ({ms(r['step_cpu_max'])} CPU)",
            f"  {'read':<26} {'p50':>10} {'p95':>10} {'CPU p50':>10}",
        ]
        worst = 0.0
        for name, (p50, p95, cpu) in r["reads"].items():
            worst = max(worst, p95)
            lines.append(f"  {name:<26} {ms(p50):>10} {ms(p95):>10} {ms(cpu):>10}")
        verdict = "PASS" if worst * 1000 <= TARGET_PAGE_MS else "FAIL"
        lines.append(f"  every read p95 <= {TARGET_PAGE_MS:.0f} ms: {ms(worst)}  {verdict}")
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the schema catalog (docstring).")
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--parts", type=comma_list, default=list(PARTS))
    parser.add_argument("--people", type=int, default=5_000, help="demo people (part 1)")
    parser.add_argument("--rounds", type=int, default=2, help="drains without and with")
    parser.add_argument("--profiles", type=int, default=1_000_000, help="profiles (part 2)")
    parser.add_argument("--repeat", type=int, default=20, help="times each read is timed")
    add_output_flags(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.people, args.rounds, args.profiles, args.repeat = 1_000, 1, 100_000, 5
    if set(args.parts) - set(PARTS) or not args.parts:
        parser.error(f"--parts takes {', '.join(PARTS)}; got {args.parts}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    announce("schema", info)
    workdir = make_workdir("schema")
    results: dict[str, Any] = {}
    try:
        if "processing" in args.parts:
            results["processing"] = part_processing(args, workdir)
        if "reads" in args.parts:
            results["reads"] = part_reads(args, workdir)
    finally:
        remove_workdir(workdir, keep=args.keep)
    lines = summary_lines(results)
    print()
    print("\n".join(lines))
    if args.record:
        record(
            f"schema {info['date']}",
            lines,
            info=info,
            note=f"Load average before the run: {info['load']}.",
            run=f"parts {','.join(args.parts)}; {args.people:,} demo people, {args.rounds} "
            f"rounds; {args.profiles:,} profiles, each read {args.repeat} times",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
