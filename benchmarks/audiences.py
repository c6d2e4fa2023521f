"""Audience benchmark: what do computed traits and audiences cost the processor per event, how
fast does it process with 50 audiences defined, how long does recomputing one audience over
1,000,000 profiles take, and how does that compare with a hand-written DuckDB query over the
same events?

Run it with the project's virtualenv (duckdb and pyarrow come with the `dev` extras):

    .venv/bin/python benchmarks/audiences.py            # full run: ~35 minutes, < 4 GB RAM
    .venv/bin/python benchmarks/audiences.py --quick    # small sizes: ~3 minutes
    .venv/bin/python benchmarks/audiences.py --record   # also append the figures to RESULTS.md
    .venv/bin/python benchmarks/audiences.py --profile /tmp/prof   # py-spy the measured processes
    .venv/bin/python benchmarks/audiences.py --help     # every knob (sizes, slices, workers)

It uses the harness modules (`harness*.py`); the definitions are in `audiences_definitions.py`
(benchmarks/pipeline.py creates the same), the drains in `audiences_drain.py`, the 1M-profile
store in `audiences_store.py`, the DuckDB reference in `audiences_duckdb.py` and the summary in
`audiences_report.py`. Every store is a fresh SQLite file in a temporary directory with the settings
a default `tessera serve` uses (synchronous=FULL); TESSERA_* variables in the environment reach
every part and are printed (and recorded). Time is fixed: every pipeline runs with
`Pipeline(config, clock=lambda: NOW)` where NOW is 2026-10-31 01:00 UTC, one hour after the
demo generator's last day (it spreads journeys over the 60 days from 2026-09-01), so 7-, 14- and
30-day windows cut through the data. The demo data is `tessera.demo.generate` (seeded retail
journeys, ~19.4 events a person); the benchmark adds Segment consent
(`context.consent.categoryPreferences`, marketing ~60% and analytics ~80% granted, decided by a
hash of the messageId) to every identify call so that consent conditions have something to read.

The definitions (`NAMED_TRAITS`, `AUDIENCES`): 12 named computed traits (count, windowed count,
sum, avg, max, last_time, first_time over any event, unique_list, most_frequent, last) and 50
audiences of mixed shapes: trait conditions (eq, in, neq, contains, exists, is_empty,
within_last_days, before), computed-trait conditions, event conditions with windows and
property filters (which compile to ~20 implicit computed traits), NOT and OR groups, membership
of other audiences (up to three levels deep) and consent. `TARGET` is the audience of parts 3-4:
"at least 2 Order Completed with total > 50 in the last 30 days, and no Cart Viewed and no
Product Added in the last 7 days".

What one run does:

1. + 2. Processing with audiences (`--people`, default 20,000 people, ~390,000 events, seed
   `--seed`). The dataset is appended to a fresh store's log directly (`normalise_message` +
   `append_events`, 2,000 events a transaction, as identity.py does; no HTTP), and the file is
   copied. Store A gets no definitions; store B gets the 12 computed traits and 50 audiences,
   created through `tessera.audiences.service` before any event is processed (and made ready
   by `run_maintenance`, which has nothing to replay yet). Each store is then drained in its
   own spawned process exactly as the `Processor` thread does it: `run_once` then
   `run_maintenance`, in a loop, batch size TESSERA_PROCESSOR_BATCH_EVENTS (2,000 by default),
   with the cyclic collector tuned as `tessera worker` tunes it (`tune_gc_for_processing`).
   Store A is the reference measured in the same run: events/s of both, and B/A.
   Store C, a copy of B made before its drain, is drained with the stages separate
   (TESSERA_PROCESSOR_DERIVED=separate), in two spawned processes started together, as
   `tessera worker --stage main` and `--stage derived` run them: the main one applies
   `run_once` until the log is applied, the derived one `run_derived_once` and
   `run_maintenance` until it is level with it. Events/s from the first start to the last
   finish; C's memberships and computed values must equal B's (a check).
   In B's process the derived stage is timed by wrapping, in that process only:
   - `Pipeline._derive` (computed-trait observation for the batch's events, settling values,
     loading the touched profiles' derived state, and evaluating the affected audiences; the
     batch's derived-state write, `DerivedState.flush`, is timed separately), giving per batch
     its time divided by the batch's events: **evaluation cost per event**, p50/p95 over batches;
   - `DerivedState.evaluate`, one call per touched profile (every affected audience of that
     profile, and those that follow from membership changes): **per-profile evaluation**,
     p50/p95/p99 over calls.
   Then, as a second figure of the same store, A gets the same definitions after its drain:
   the real `run_maintenance` loop backfills all 32 computed traits in one pass over its log
   and builds the 50 audiences (events/s of the backfill, seconds a build). A's memberships,
   computed by backfill + build, must equal B's, maintained event by event: a check.
3. Full recompute of one audience over 1,000,000 profiles (`--profiles`). Processing 20M events
   for real would take about 35 minutes here, so, like identity.py part 3, the store is built
   directly: migrated, then `--profiles` demo people generated in slices of `--slice-people`
   (different seeds, `--build-workers` spawned processes generating while the main process
   inserts), each person's events (at most `--events-per-person` of their latest, all by
   default) inserted into `events` with the payload exactly as the log stores it (checked
   against `normalise_message` on a sample of each slice), dense `seq`s; `event_profiles`
   attributes each to its person's profile, `prf_<seq of the person's first event>`; `profiles`
   has one row per person from the generator's ground truth (no merges, no identities table);
   `profile_traits` and `profile_consent` hold what the processor would derive from the
   identify calls (latest value wins). Inserts are sqlite3 executemany / INSERT ... SELECT with
   journal_mode=OFF and synchronous=OFF while building, WAL after; `processor_state` says
   everything is processed (both stages). Then, in a spawned process with the real code:
   `TARGET` is created through the service, `run_maintenance` backfills its three implicit
   computed traits in one pass over all events (`backfill_step`, 20,000 events a step;
   events/s), then builds it (`build_step`, 10,000 profiles a step): seconds and profiles/s
   of that full recompute.
   Then `service.update_audience` changes its definition as a PATCH would (count >= 2 becomes
   >= 3: same implicit traits, so no backfill) and the rebuild is timed the same way.
4. DuckDB reference. The store's events (seq, type, name, timestamp, and the payload's
   `properties` as JSON text, extracted by SQLite's json_extract) and its `event_profiles` are
   exported to two Parquet files with pyarrow, 250,000 rows a batch (zstd). A hand-written
   DuckDB query (`DUCKDB_QUERY`, 2 threads) computes `TARGET` at the same NOW from the raw
   events: filter by name and time, join the attribution, group by profile, parse `total` from
   the JSON. It must give the identical member set (else FAIL with the differences counted);
   the same for the changed definition. Printed: Tessera's recompute seconds against DuckDB's
   (first run in a fresh connection; the best of three is printed too) and their ratio.
   Tessera's figure reads precomputed per-profile rollups (computed-trait values kept by the
   processor) and writes members, history, change stream and schedule; DuckDB's scans the raw
   events and only returns ids. The backfill figure is what Tessera pays for the rollups.
5. A summary against the targets: evaluation cost per event p95 <= 1 ms with 50 audiences;
   processing with audiences >= 10,000 events/s; recomputing one audience over 1M profiles
   <= 10 s; with the phase durations, peak RSS, and the CPU used by other processes on the
   machine (other work on a 2-core machine makes the figures noisy). The exit status is 1 when
   a check fails (events left unprocessed, memberships that differ); targets never fail it.

`--profile DIR` runs `py-spy record --format raw` on the drain of B, A's backfill + build and the
recompute process, writes DIR/<part>.txt and DIR/<part>.summary.txt and prints the hottest
functions. Sampling perturbs the figures; take the headline numbers from a run without.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiences_definitions import (
    AUDIENCES,
    NAMED_TRAITS,
    TARGET_CHANGED,
    TARGET_NAME,
    add_consent,
    define,
    make_pipeline,
)
from audiences_drain import (
    computed_values,
    drain,
    drain_separate,
    follow,
    maintain,
    memberships,
    rebuild_main,
)
from audiences_duckdb import duckdb_members, export_parquet
from audiences_report import summary_lines
from audiences_store import build_store
from harness import (
    add_output_flags,
    announce,
    comma_list,
    machine,
    make_workdir,
    own_cores,
    own_cpu,
    record,
    remove_workdir,
    rss_mib,
)
from harness_server import child_main, run_child
from harness_store import (
    append_dataset,
    fresh_store,
    region_of,
    store_engine,
)
from harness_store import (
    settings as default_settings,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from tessera.config import Settings

PARTS = ("processing", "recompute")


def part_processing(  # noqa: PLR0915
    args: argparse.Namespace, workdir: Path, settings: Settings, region: str
) -> dict[str, Any]:
    from tessera.demo import generate

    phases: dict[str, float] = {}
    print(f"processing: generating {args.people:,} people (seed {args.seed}) ...", flush=True)
    t = time.perf_counter()
    dataset = generate(seed=args.seed, people=args.people, region=region)
    add_consent(dataset.messages)
    messages = len(dataset.messages)
    phases["generate"] = time.perf_counter() - t
    plain, defined = workdir / "plain.db", workdir / "defined.db"
    separate = workdir / "separate.db"
    engine, source_id = fresh_store(plain, settings, "demo")
    t = time.perf_counter()
    appended = append_dataset(engine, dataset, source_id)
    phases["append"] = time.perf_counter() - t
    engine.dispose()
    del dataset
    gc.collect()
    print(f"  {appended:,} events appended in {phases['append']:.1f} s; copying the store and "
          f"defining {len(NAMED_TRAITS)} computed traits + {len(AUDIENCES)} audiences on "
          "the copy ...", flush=True)  # fmt: skip
    t = time.perf_counter()
    with (
        contextlib.closing(sqlite3.connect(plain)) as source,
        contextlib.closing(sqlite3.connect(defined)) as target,
    ):
        source.backup(target)
    engine = store_engine(defined, settings)
    define(engine)
    maintain(engine, make_pipeline(settings))  # nothing processed yet: ready at once
    engine.dispose()
    with (
        contextlib.closing(sqlite3.connect(defined)) as source,
        contextlib.closing(sqlite3.connect(separate)) as target,
    ):
        source.backup(target)
    phases["copy + define"] = time.perf_counter() - t
    print("  draining the store without definitions (the reference) ...", flush=True)
    t = time.perf_counter()
    reference = drain(plain, instrument=False, args=args, name="drain-plain")
    phases["drain without definitions"] = time.perf_counter() - t
    print(f"    {reference['applied'] / reference['elapsed']:,.0f} events/s; draining the "
          "store with 50 audiences ...", flush=True)  # fmt: skip
    t = time.perf_counter()
    audiences_on = drain(defined, instrument=True, args=args, name="drain-audiences")
    phases["drain with 50 audiences"] = time.perf_counter() - t
    print(f"    {audiences_on['applied'] / audiences_on['elapsed']:,.0f} events/s; draining a "
          "copy with the stages separate (two processes) ...", flush=True)  # fmt: skip
    t = time.perf_counter()
    apart = drain_separate(separate, args=args)
    phases["drain with 50 audiences, stages separate"] = time.perf_counter() - t
    print(f"    {apart['applied'] / apart['elapsed']:,.0f} events/s; defining the "
          "same on the drained reference store: backfill + build ...", flush=True)  # fmt: skip
    t = time.perf_counter()
    ready, conn, process = run_child(rebuild_main, (str(plain),), "rebuild", 300)
    rebuilt = follow(ready, conn, process, args, "backfill-build")
    phases["backfill + build of 50 audiences"] = time.perf_counter() - t
    print("  comparing memberships and computed values (backfill + build vs incremental) ...",
          flush=True)  # fmt: skip
    incremental, replayed = memberships(defined), memberships(plain)
    differences = {
        name: (len(incremental[name] - replayed.get(name, set())),
               len(replayed.get(name, set()) - incremental[name]))
        for name in incremental
        if incremental[name] != replayed.get(name, set())
    }  # fmt: skip
    values_b, values_a = computed_values(defined), computed_values(plain)
    value_differences = sum(
        1 for key in values_b.keys() | values_a.keys() if values_b.get(key) != values_a.get(key)
    )
    separate_members, values_c = memberships(separate), computed_values(separate)
    separate_differences = sum(
        len(separate_members.get(name, set()) ^ incremental.get(name, set()))
        for name in incremental.keys() | separate_members.keys()
    ) + sum(
        1 for key in values_b.keys() | values_c.keys() if values_b.get(key) != values_c.get(key)
    )
    sizes = sorted(((len(members), name) for name, members in incremental.items()), reverse=True)
    return {
        "people": args.people,
        "messages": messages,
        "appended": appended,
        "phases": phases,
        "reference": reference,
        "audiences": audiences_on,
        "separate": apart,
        "separate_differences": separate_differences,
        "rebuilt": rebuilt,
        "membership_differences": differences,
        "value_differences": value_differences,
        "values": len(values_b),
        "members_total": sum(size for size, _ in sizes),
        "sizes": sizes,
        "audience_count": len(incremental),
    }


def _members_of(engine: Engine, audience_id: str) -> set[str]:
    with engine.connect() as conn:
        return {
            pid
            for (pid,) in conn.exec_driver_sql(
                "SELECT profile_id FROM audience_members WHERE audience_id = ?", (audience_id,)
            )
        }


def _recompute_main(database: str, conn: Connection) -> None:
    """TARGET on the big store: create, backfill, build; change, rebuild."""

    def work(conn: Connection) -> dict[str, Any]:
        from tessera.audiences import service
        from tessera.processor import tune_gc_for_processing

        settings = default_settings()
        engine = store_engine(Path(database), settings)
        pipeline = make_pipeline(settings)
        tune_gc_for_processing()  # as `tessera worker` does
        conn.send(("ready", {"pid": os.getpid()}))
        conn.recv()
        out: dict[str, Any] = {}
        t = time.perf_counter()
        ids = define(engine, only_target=True)
        out["define_s"] = time.perf_counter() - t
        audience_id = ids[TARGET_NAME]
        before = own_cpu()
        t = time.perf_counter()
        first = maintain(engine, pipeline)
        cores, others = own_cores(before, time.perf_counter() - t)
        out["first"] = {**first, "cores": cores, "other_cores": others}
        out["members"] = sorted(_members_of(engine, audience_id))
        with engine.connect() as db:
            out["traits"] = int(
                db.exec_driver_sql("SELECT count(*) FROM computed_traits").scalar_one()
            )
            out["values"] = int(
                db.exec_driver_sql("SELECT count(*) FROM computed_trait_values").scalar_one()
            )
            out["profiles"] = int(
                db.exec_driver_sql(
                    "SELECT count(*) FROM profiles WHERE merged_into IS NULL"
                ).scalar_one()
            )
        t = time.perf_counter()
        with engine.begin() as db:
            service.update_audience(
                db, audience_id=audience_id, name=None, description=None, document=TARGET_CHANGED
            )
        out["update_s"] = time.perf_counter() - t
        before = own_cpu()
        t = time.perf_counter()
        second = maintain(engine, pipeline)
        cores, others = own_cores(before, time.perf_counter() - t)
        out["second"] = {**second, "cores": cores, "other_cores": others}
        out["members_changed"] = sorted(_members_of(engine, audience_id))
        out["rss_mib"] = rss_mib()
        engine.dispose()
        return out

    child_main(work, conn)


def part_recompute(
    args: argparse.Namespace, workdir: Path, settings: Settings, region: str
) -> dict[str, Any]:
    phases: dict[str, float] = {}
    database = workdir / "big.db"
    cap = "all" if args.events_per_person is None else f"at most {args.events_per_person}"
    print(f"recompute: building a store of {args.profiles:,} profiles ({cap} events each; "
          f"{-(-args.profiles // args.slice_people)} slices of {args.slice_people:,} people, "
          f"{args.build_workers} generating processes) ...", flush=True)  # fmt: skip
    t = time.perf_counter()
    built = build_store(database, args=args, settings=settings, region=region)
    phases["build the store"] = time.perf_counter() - t
    print(f"  built in {built['build_s']:.0f} s: {built['events']:,} events, "
          f"{built['bytes'] / 2**30:.1f} GiB; creating the audience and recomputing it ...",
          flush=True)  # fmt: skip
    t = time.perf_counter()
    ready, conn, process = run_child(_recompute_main, (str(database),), "recompute", 600)
    tessera = follow(ready, conn, process, args, "recompute")
    phases["backfill + build + rebuild"] = time.perf_counter() - t
    first, second = tessera["first"], tessera["second"]
    print(f"  backfill {first['backfill_s']:.0f} s, build {first['build_s']:.1f} s, rebuild "
          f"{second['build_s']:.1f} s; exporting to Parquet ...", flush=True)  # fmt: skip
    t = time.perf_counter()
    exported = export_parquet(database, workdir / "parquet")
    phases["export to Parquet"] = time.perf_counter() - t
    print(f"  exported in {exported['export_s']:.0f} s; DuckDB ...", flush=True)
    t = time.perf_counter()
    duck = duckdb_members(exported, 2)
    duck_changed = duckdb_members(exported, 3)
    phases["DuckDB queries"] = time.perf_counter() - t
    ours, ours_changed = set(tessera.pop("members")), set(tessera.pop("members_changed"))
    return {
        "build": built,
        "tessera": tessera,
        "export": {k: v for k, v in exported.items() if k not in ("events", "attribution")},
        "duckdb": {
            "first_s": duck["first_s"],
            "best_s": duck["best_s"],
            "members": len(duck["members"]),
            "only_tessera": len(ours - duck["members"]),
            "only_duckdb": len(duck["members"] - ours),
            "sample": sorted(ours ^ duck["members"])[:3],
        },
        "duckdb_changed": {
            "first_s": duck_changed["first_s"],
            "best_s": duck_changed["best_s"],
            "members": len(duck_changed["members"]),
            "only_tessera": len(ours_changed - duck_changed["members"]),
            "only_duckdb": len(duck_changed["members"] - ours_changed),
            "sample": sorted(ours_changed ^ duck_changed["members"])[:3],
        },
        "members": len(ours),
        "members_changed": len(ours_changed),
        "phases": phases,
    }


RESULTS_SECTION_NOTE = """\
One run of `.venv/bin/python benchmarks/audiences.py --record` (see its docstring for what is
measured and how). Targets: evaluation cost per event p95 <= 1 ms with 50 audiences; processing
with audiences >= 10,000 events/s; recomputing one audience over 1M profiles <= 10 s. "other
processes" is CPU used by anything else on the machine."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark computed traits and audiences (see the module docstring)."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument(
        "--parts",
        type=comma_list,
        default=list(PARTS),
        help="comma-separated subset of processing (parts 1-2), recompute (parts 3-4)",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the demo datasets")
    parser.add_argument(
        "--people", type=int, default=20_000, help="demo people processed for real (parts 1-2)"
    )
    big = parser.add_argument_group("the recompute store (parts 3-4)")
    big.add_argument("--profiles", type=int, default=1_000_000, help="profiles (= demo people)")
    big.add_argument(
        "--events-per-person",
        type=int,
        default=None,
        help="keep at most this many of each person's latest events (default: all, ~19.4)",
    )
    big.add_argument("--slice-people", type=int, default=20_000, help="people generated at once")
    big.add_argument(
        "--build-workers", type=int, default=2, help="processes generating slices meanwhile"
    )
    add_output_flags(parser)
    args = parser.parse_args(argv)
    unknown = set(args.parts) - set(PARTS)
    if unknown or not args.parts:
        parser.error(f"--parts takes {', '.join(PARTS)}; got {args.parts}")
    if args.events_per_person is not None and args.events_per_person < 1:
        parser.error("--events-per-person must be at least 1")
    if args.quick:
        args.people = min(args.people, 2_000)
        args.profiles = min(args.profiles, 50_000)
        args.slice_people = min(args.slice_people, 10_000)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    announce("audience", info)
    settings = default_settings()
    region = region_of(settings)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    workdir = make_workdir("audiences")
    results: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        if "processing" in args.parts:
            results["processing"] = part_processing(args, workdir, settings, region)
        if "recompute" in args.parts:
            results["recompute"] = part_recompute(args, workdir, settings, region)
    finally:
        remove_workdir(workdir, keep=args.keep)
    results["elapsed_s"] = time.perf_counter() - started
    lines, targets, failed = summary_lines(results)
    lines += targets
    lines.append(f"peak RSS of the main process: {rss_mib():,.0f} MiB")
    if failed:
        lines += ["checks failed:", *(f"  {line}" for line in failed)]
    print()
    print("\n".join(lines))
    for part in ("processing", "recompute"):
        found = results.get(part, {})
        for key in ("audiences", "rebuilt", "tessera"):
            text = found.get(key, {}).get("profile_summary") if isinstance(found, dict) else None
            if text:
                print()
                print(text)
    if args.record:
        cap = "all" if args.events_per_person is None else str(args.events_per_person)
        record(
            f"audiences {info['date']}",
            lines,
            info=info,
            note=RESULTS_SECTION_NOTE,
            run=f"parts {','.join(args.parts)}; {args.people:,} demo people (seed {args.seed}) "
            f"for processing; {args.profiles:,} profiles ({cap} events a person, slices of "
            f"{args.slice_people:,}, {args.build_workers} generating processes) for the recompute"
            + (", profiled with py-spy" if args.profile else ""),
        )
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; child processes were stopped", file=sys.stderr)
        sys.exit(130)
