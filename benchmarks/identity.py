"""Identity benchmark: how fast does Tessera turn events into profiles, how soon does an event
show in its profile under load, how fast is a profile lookup in a 1-million-profile store, and
how right is the clustering?

Run it with the project's virtualenv (nothing else needed; no network beyond loopback):

    .venv/bin/python benchmarks/identity.py            # full run: 3-5 minutes, < 2 GB RAM
    .venv/bin/python benchmarks/identity.py --quick    # small sizes, short windows: 45 s
    .venv/bin/python benchmarks/identity.py --record   # also append the figures to RESULTS.md
    .venv/bin/python benchmarks/identity.py --profile /tmp/prof   # py-spy the measured processes
    .venv/bin/python benchmarks/identity.py --help     # every knob (sizes, rates, durations)

The shared parts (server, machine, CPU, py-spy, RESULTS.md) are the harness modules
(`harness*.py`); part 2 is in `identity_latency.py`, part 3 in `identity_lookup.py`. Every
store is a fresh SQLite file in a temporary directory, with the settings a default
`tessera serve` uses (synchronous=FULL); other TESSERA_* variables in the environment reach
every part and are printed (and recorded). The demo
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
import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import (
    add_output_flags,
    announce,
    comma_list,
    comma_numbers,
    machine,
    machine_ticks,
    make_workdir,
    mark,
    ms,
    other_cores,
    pct,
    record,
    remove_workdir,
)
from harness_profile import finish_spy, start_spy, write_summary
from harness_server import (
    child_main,
    receive,
    run_child,
    stop_child,
)
from harness_store import (
    append_dataset,
    fresh_store,
    make_pipeline,
    region_of,
    store_engine,
)
from harness_store import (
    settings as default_settings,
)
from identity_latency import part_latency
from identity_lookup import part_lookup

if TYPE_CHECKING:
    from tessera.config import Settings
    from tessera.demo import Dataset

# Frames every stack of the processing process shares (this file's wrapper): left out of the
# profile summary's inclusive table.
PROFILE_IGNORE = ("(identity.py",)

TARGET_EVENTS_PER_S = 10_000
TARGET_VISIBLE_P95_S = 1.0
TARGET_LOOKUP_P99_MS = 10.0
TARGET_PRECISION = TARGET_RECALL = 1.0

PARTS = ("processing", "latency", "lookup")


# --------------------------------------------------------------------------------------------
# Part 1: processing throughput (and the store part 4 scores).
# --------------------------------------------------------------------------------------------


def _processing_main(database: str, conn: Connection) -> None:
    def work(conn: Connection) -> dict[str, Any]:
        from tessera.processor import lag, run_once, tune_gc_for_processing

        settings = default_settings()
        engine = store_engine(Path(database), settings)
        pipeline = make_pipeline(settings)
        with engine.connect() as db:
            waiting = lag(db).events
        tune_gc_for_processing()  # as `tessera worker` does
        conn.send(("ready", {"pid": os.getpid(), "waiting": waiting}))
        conn.recv()  # "go", once a profiler (if any) is attached
        hz = os.sysconf("SC_CLK_TCK")
        cpu0, busy0 = sum(os.times()[:2]), machine_ticks()[0]
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
        cpu, busy = sum(os.times()[:2]) - cpu0, (machine_ticks()[0] - busy0) / hz
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

    child_main(work, conn)


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
    output = args.profile / "processing.txt" if args.profile else None
    text = write_summary(output, result["elapsed"], args.profile_rate, PROFILE_IGNORE)
    if text is not None:
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
# Reporting.
# --------------------------------------------------------------------------------------------


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
            f"{p['batches']:,} batches of {p['batch_size']}: p50 {ms(p['batch_p50'])}, "
            f"p99 {ms(p['batch_p99'])}, max {ms(p['batch_max'])})",
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
            f"{mark(rate >= TARGET_EVENTS_PER_S)}"
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
            f"{q['evidence_recall']:.4f}  {mark(ok)}"
        )
    latency = results.get("latency")
    if latency is not None:
        r = latency
        statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["bg_status"].items()))
        lines += [
            f"event-to-profile latency: identify of a new userId -> GET /api/v1/profiles/"
            f"user_id:... shows its trait ({r['probes']:,} probes at {r['probe_rate']:g}/s, "
            f"polled every {r['poll_interval'] * 1000:.0f} ms, {r['polls_per_s']:.0f} GETs/s)",
            f"  p50 {ms(r['visible_p50'])}  p95 {ms(r['visible_p95'])}  "
            f"p99 {ms(r['visible_p99'])}  max {ms(r['visible_max'])}  (identify acknowledged: "
            f"p50 {ms(r['ack_p50'])}, p99 {ms(r['ack_p99'])}; never visible: {r['invisible']})",
            f"  background load: {r['events_per_s']:,.0f} events/s acknowledged of "
            f"{r['rate']:,.0f} offered through /v1/batch ({r['requests_per_s']:.1f} requests/s "
            f"on {r['connections']} connections, p50 {ms(r['batch_p50'])}, p99 "
            f"{ms(r['batch_p99'])}; statuses {statuses}; most waiting: {r['max_backlog']})",
            f"  processor lag in the window: mean {r['lag_mean']:,.0f} events, max "
            f"{r['lag_max']:,.0f}, oldest waiting up to {r['oldest_max']:.2f} s, "
            f"{r['lag_end']:,.0f} at the end; caught up {r['catch_up_s']:.1f} s after the load",
            f"  CPU (cores busy): server {r['server_cores']:.2f}, driver {r['driver_cores']:.2f}"
            f", other processes {other_cores(r, 'server_cores', 'driver_cores'):.2f}",
        ]
        p95 = r["visible_p95"]
        targets.append(
            f"  event-to-profile p95 <= {TARGET_VISIBLE_P95_S:g} s (at {r['events_per_s']:,.0f} "
            f"events/s): {ms(p95)}  {mark(p95 <= TARGET_VISIBLE_P95_S)}"
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
                f"    {phase['requests_per_s']:,.0f} lookups/s  p50 {ms(phase['p50'])}  "
                f"p90 {ms(phase['p90'])}  p99 {ms(phase['p99'])}  max {ms(phase['max'])}  "
                f"({statuses}; wrong answers: {phase['wrong']})",
                f"    server CPU {phase['server_cpu_per_request'] * 1000:.2f} ms a lookup; "
                f"CPU (cores busy): server {phase['server_cores']:.2f}, driver "
                f"{phase['driver_cores']:.2f}, other processes "
                f"{other_cores(phase, 'server_cores', 'driver_cores'):.2f}",
            ]
            for sample in phase["wrong_sample"]:
                lines.append(f"    wrong: {sample}")
            if phase["wrong"]:
                failed.append(f"lookup: {phase['wrong']} wrong answers")
        lines.append(
            f"  in-process, no HTTP ({c['lookups']:,} lookups): resolve + assemble p50 "
            f"{ms(c['store_p50'], 2)}, p99 {ms(c['store_p99'], 2)}; response model + JSON "
            f"p50 {ms(c['render_p50'], 2)}, p99 {ms(c['render_p99'], 2)}"
        )
        if lookup["phases"]:
            last = lookup["phases"][-1]
            targets.append(
                f"  lookup p99 <= {TARGET_LOOKUP_P99_MS:g} ms with {b['profiles']:,} profiles "
                f"({last['concurrency']} connections): {ms(last['p99'])}  "
                f"{mark(last['p99'] * 1000 <= TARGET_LOOKUP_P99_MS)}"
            )
    return lines, targets, failed


RESULTS_SECTION_NOTE = """\
One run of `.venv/bin/python benchmarks/identity.py --record` (see its docstring for what is
measured and how). Targets: >= 10,000 events/s processed; event-to-profile p95 <= 1 s under
load; profile lookup p99 <= 10 ms with 1M profiles; precision and recall 1.0 against the
evidence-provable clustering. "other processes" is CPU used by anything else on the machine."""


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark identity resolution and profiles (see the module docstring)."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and short windows")
    parser.add_argument(
        "--parts",
        type=comma_list,
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
        type=comma_numbers,
        default=[1, 4],
        help="comma-separated connection counts, one closed-loop phase each (target: the last)",
    )
    look.add_argument("--lookup-refs", type=int, default=20_000, help="distinct random refs")
    look.add_argument("--lookup-warmup", type=float, default=2.0)
    look.add_argument("--lookup-duration", type=float, default=10.0)
    look.add_argument(
        "--lookup-in-process", type=int, default=5_000, help="lookups timed without HTTP"
    )
    add_output_flags(parser)
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
    announce("identity", info)
    settings = default_settings()
    region = region_of(settings)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    workdir = make_workdir("identity")
    results: dict[str, Any] = {}
    try:
        if "processing" in args.parts:
            results["processing"] = part_processing(args, workdir, settings, region)
        if "latency" in args.parts:
            results["latency"] = part_latency(args, workdir, region)
        if "lookup" in args.parts:
            results["lookup"] = part_lookup(args, workdir, settings, region)
    finally:
        remove_workdir(workdir, keep=args.keep)
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
        record(
            f"identity {info['date']}",
            lines,
            info=info,
            note=RESULTS_SECTION_NOTE,
            run=f"parts {','.join(args.parts)}; {args.people:,} demo people (seed {args.seed}); "
            f"latency {args.warmup:g} s warm-up + {args.duration:g} s at "
            f"{args.background_rate:,.0f} events/s; lookups {args.lookup_warmup:g} s + "
            f"{args.lookup_duration:g} s per concurrency"
            + (", profiled with py-spy" if args.profile else ""),
        )
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers and drivers were stopped", file=sys.stderr)
        sys.exit(130)
