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

It reuses the helpers of `benchmarks/identity.py` and `benchmarks/ingest.py` (imported from the
same directory). Every store is a fresh SQLite file in a temporary directory with the settings
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
import multiprocessing
import os
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from identity import (
    _child,
    _ms,
    _settings,
    append_dataset,
    disk_size,
    finish_spy,
    fresh_store,
    pct,
    receive,
    region_of,
    run_child,
    start_spy,
    stop_child,
    store_engine,
)
from ingest import ROOT, _machine_ticks, machine, summarize_profile, tessera_overrides

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from tessera.config import Settings
    from tessera.processor import Pipeline

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

TARGET_EVAL_PER_EVENT_MS = 1.0
TARGET_EVENTS_PER_S = 10_000
TARGET_RECOMPUTE_S = 10.0

NOW = datetime(2026, 10, 31, 1, 0, tzinfo=UTC)  # generator: 2026-09-01 + 60 days, plus an hour
RECEIVED = NOW  # received_at of the bulk-built store's events
PARTS = ("processing", "recompute")
EXPORT_BATCH = 250_000
SAMPLE_EVERY = 97  # bulk rows checked against normalise_message: one in this many

# --------------------------------------------------------------------------------------------
# The definitions.
# --------------------------------------------------------------------------------------------

NAMED_TRAITS: list[dict[str, Any]] = [
    {"name": "orders_30d", "kind": "count", "event": {"name": "Order Completed"},
     "window": {"days": 30}},
    {"name": "spend", "kind": "sum", "event": {"name": "Order Completed"}, "property": "total"},
    {"name": "avg_order", "kind": "avg", "event": {"name": "Order Completed"},
     "property": "total"},
    {"name": "max_order", "kind": "max", "event": {"name": "Order Completed"},
     "property": "total"},
    {"name": "last_order_at", "kind": "last_time", "event": {"name": "Order Completed"}},
    {"name": "first_seen_at", "kind": "first_time"},  # any event at all
    {"name": "categories_viewed", "kind": "unique_list", "event": {"name": "Product Viewed"},
     "property": "category", "limit": 10},
    {"name": "favourite_category", "kind": "most_frequent",
     "event": {"name": "Product Viewed"}, "property": "category"},
    {"name": "views_7d", "kind": "count", "event": {"name": "Product Viewed"},
     "window": {"days": 7}},
    {"name": "last_campaign", "kind": "last", "event": {"name": "Email Opened"},
     "property": "campaign_name"},
    {"name": "pages_14d", "kind": "count", "event": {"type": "page"}, "window": {"days": 14}},
    {"name": "refunds", "kind": "count", "event": {"name": "Order Refunded"}},
]  # fmt: skip


def _ev(name: str, **rest: Any) -> dict[str, Any]:
    return {"event": name, **rest}


def _days(n: int) -> dict[str, int]:
    return {"days": n}


def _gte(n: int) -> dict[str, Any]:
    return {"op": "gte", "value": n}


TARGET_NAME = "big-order repeaters, not browsing"
TARGET: dict[str, Any] = {
    "and": [
        _ev(
            "Order Completed",
            where={"property": "total", "op": "gt", "value": 50},
            count=_gte(2),
            window=_days(30),
        ),
        {"not": _ev("Cart Viewed", performed=True, window=_days(7))},
        {"not": _ev("Product Added", performed=True, window=_days(7))},
    ]
}
# The PATCH of part 3: a stricter count on the same implicit trait (nothing to backfill).
TARGET_CHANGED: dict[str, Any] = {
    "and": [
        {**TARGET["and"][0], "count": _gte(3)},
        *TARGET["and"][1:],
    ]
}
# "@name" refers to an audience defined earlier in the list.
AUDIENCES: list[tuple[str, dict[str, Any]]] = [
    ("repeat buyers", {"computed": "orders_30d", "op": "gte", "value": 2}),
    ("big spenders", {"computed": "spend", "op": "gte", "value": 300}),
    ("high basket", {"computed": "avg_order", "op": "gt", "value": 120}),
    ("recent buyers", {"computed": "last_order_at", "op": "within_last_days", "value": 14}),
    ("lapsed buyers", {"and": [
        {"computed": "spend", "op": "gt", "value": 0},
        _ev("Order Completed", performed=False, window=_days(30))]}),
    ("window shoppers", {"and": [
        _ev("Product Viewed", count=_gte(5), window=_days(30)),
        _ev("Order Completed", performed=False)]}),
    ("cart abandoners", {"and": [
        _ev("Cart Viewed", performed=True, window=_days(7)),
        {"not": _ev("Order Completed", performed=True, window=_days(7))}]}),
    ("checkout abandoners", {"and": [
        _ev("Checkout Started", performed=True, window={"hours": 72}),
        {"not": _ev("Order Completed", performed=True, window={"hours": 72})}]}),
    (TARGET_NAME, TARGET),
    ("marketing opt-in", {"consent": "marketing"}),
    ("marketable repeat buyers", {"and": [{"audience": "@repeat buyers"},
                                          {"consent": "marketing"}]}),
    ("new yorkers", {"trait": "city", "op": "eq", "value": "New York"}),
    ("west coast", {"trait": "city", "op": "in",
                    "value": ["Los Angeles", "San Francisco", "Seattle", "Portland"]}),
    ("international", {"and": [{"trait": "country", "op": "exists"},
                               {"trait": "country", "op": "neq", "value": "US"}]}),
    ("example.com emails", {"trait": "email", "op": "contains", "value": "example.com"}),
    ("signed up lately", {"trait": "created_at", "op": "within_last_days", "value": 14}),
    ("early sign-ups", {"trait": "created_at", "op": "before", "value": "2026-09-15"}),
    ("phone known", {"trait": "phone", "op": "exists"}),
    ("anonymous", {"trait": "email", "op": "is_empty"}),
    ("shoe browsers", {"computed": "categories_viewed", "op": "contains", "value": "Shoes"}),
    ("dress lovers", {"computed": "favourite_category", "op": "eq", "value": "Dresses"}),
    ("newsletter readers", _ev("Email Opened", count=_gte(2), window=_days(30))),
    ("campaign clickers", _ev("Email Link Clicked", performed=True, window=_days(14))),
    ("aw26 readers", {"computed": "last_campaign", "op": "eq", "value": "aw26-launch"}),
    ("refunders", {"computed": "refunds", "op": "gte", "value": 1}),
    ("clean big spenders", {"and": [{"audience": "@big spenders"},
                                    {"computed": "refunds", "op": "eq", "value": 0}]}),
    ("support seekers", _ev("Support Ticket Opened", performed=True, window=_days(30))),
    ("unhappy", {"and": [{"audience": "@support seekers"}, {"audience": "@refunders"}]}),
    ("buying or carting", {"or": [{"audience": "@recent buyers"},
                                  _ev("Cart Viewed", performed=True, window={"hours": 48})]}),
    ("searchers", _ev("Products Searched", count=_gte(1), window=_days(14))),
    ("searched, did not buy", {"and": [
        {"audience": "@searchers"},
        {"not": _ev("Order Completed", performed=True, window=_days(14))}]}),
    ("heavy browsers", {"computed": "views_7d", "op": "gte", "value": 5}),
    ("page readers", {"computed": "pages_14d", "op": "gt", "value": 10}),
    ("new visitors", {"computed": "first_seen_at", "op": "within_last_days", "value": 7}),
    ("old timers", {"computed": "first_seen_at", "op": "before", "value": "2026-09-20"}),
    ("signed in lately", _ev("Signed In", performed=True, window=_days(30))),
    ("luxury viewers", _ev("Product Viewed", where={"property": "price", "op": "gt", "value": 150},
                           count=_gte(2), window=_days(30))),
    ("knitwear viewers", _ev("Product Viewed",
                             where={"property": "category", "op": "eq", "value": "Knitwear"},
                             performed=True, window=_days(14))),
    ("premium first item", _ev("Order Completed",
                               where={"property": "products.0.price", "op": "gte", "value": 100},
                               performed=True)),
    ("free shipping", _ev("Order Completed",
                          where={"property": "shipping", "op": "eq", "value": 0},
                          count=_gte(1), window=_days(30))),
    ("small baskets only", {"and": [{"computed": "orders_30d", "op": "gte", "value": 1},
                                    {"computed": "max_order", "op": "lt", "value": 50}]}),
    ("vip", {"and": [{"audience": "@big spenders"}, {"audience": "@repeat buyers"},
                     {"consent": "marketing"}]}),
    ("vip outside new york", {"and": [{"audience": "@vip"},
                                      {"not": {"audience": "@new yorkers"}}]}),
    ("win back", {"and": [{"audience": "@lapsed buyers"}, {"consent": "marketing"},
                          {"not": {"audience": "@unhappy"}}]}),
    ("first order this month", _ev("Order Completed",
                                   first_time={"op": "within_last_days", "value": 30})),
    ("quiet since september", _ev("Order Completed",
                                  last_time={"op": "before", "value": "2026-10-01"})),
    ("reachable", {"or": [{"trait": "phone", "op": "exists"}, {"consent": "analytics"}]}),
    ("measured browsers", {"and": [{"consent": "analytics"},
                                   {"computed": "views_7d", "op": "gte", "value": 1}]}),
    ("regional repeaters", {"or": [
        {"and": [{"trait": "country", "op": "eq", "value": "GB"},
                 {"audience": "@repeat buyers"}]},
        {"and": [{"trait": "country", "op": "eq", "value": "US"},
                 {"computed": "spend", "op": "gte", "value": 500}]}]}),
    ("engaged", {"or": [{"audience": "@window shoppers"}, {"audience": "@cart abandoners"},
                        {"audience": "@newsletter readers"}, {"audience": "@heavy browsers"}]}),
]  # fmt: skip

# The reference: TARGET written by hand over the raw events, at the same NOW. Parameters:
# the Parquet files and the count threshold.
DUCKDB_QUERY = """
WITH recent AS (
    SELECT e.seq, e.name, e.timestamp, e.properties
    FROM read_parquet('{events}') AS e
    WHERE e.type = 'track'
      AND e.name IN ('Order Completed', 'Cart Viewed', 'Product Added')
      AND e.timestamp > TIMESTAMP '{now}' - INTERVAL 30 DAY
)
SELECT a.profile_id
FROM recent AS r
JOIN read_parquet('{attribution}') AS a ON a.seq = r.seq
WHERE a.profile_id IS NOT NULL
GROUP BY a.profile_id
HAVING count(*) FILTER (
           WHERE r.name = 'Order Completed'
             AND TRY_CAST(json_extract(r.properties, '$.total') AS DOUBLE) > 50
       ) >= {count}
   AND count(*) FILTER (
           WHERE r.name IN ('Cart Viewed', 'Product Added')
             AND r.timestamp > TIMESTAMP '{now}' - INTERVAL 7 DAY
       ) = 0
"""


def resolve(document: Any, ids: dict[str, str]) -> Any:
    """The document with "@name" audience references replaced by their ids."""
    if isinstance(document, dict):
        out = {key: resolve(value, ids) for key, value in document.items()}
        ref = out.get("audience")
        if isinstance(ref, str) and ref.startswith("@"):
            out["audience"] = ids[ref[1:]]
        return out
    if isinstance(document, list):
        return [resolve(item, ids) for item in document]
    return document


def define(engine: Engine, *, only_target: bool = False) -> dict[str, str]:
    """Create the definitions through the service (one transaction); audience name → id."""
    from tessera.audiences import service

    ids: dict[str, str] = {}
    with engine.begin() as conn:
        if not only_target:
            for document in NAMED_TRAITS:
                service.create_computed_trait(conn, document=document)
        for name, document in AUDIENCES:
            if only_target and name != TARGET_NAME:
                continue
            created = service.create_audience(
                conn,
                name=name,
                description="benchmarks/audiences.py",
                document=resolve(document, ids),
                actor=None,
            )
            ids[name] = created["id"]
    return ids


def make_pipeline(settings: Settings) -> Pipeline:
    """The pipeline `tessera serve` builds, on the fixed clock."""
    from tessera.processor import Pipeline

    return Pipeline(Pipeline.from_settings(settings).config, clock=lambda: NOW)


def add_consent(messages: list[dict[str, Any]]) -> None:
    """Segment consent on every identify call, decided by a hash of its messageId."""
    for message in messages:
        if message.get("type") == "identify":
            h = zlib.crc32(message["messageId"].encode())
            preferences = {"marketing": h % 10 < 6, "analytics": (h // 10) % 10 < 8}
            context = message.get("context") or {}
            message["context"] = {**context, "consent": {"categoryPreferences": preferences}}


def pending(engine: Engine) -> tuple[int, int]:
    """(computed traits not ready, audiences not ready), read without the catalog."""
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT (SELECT count(*) FROM computed_traits WHERE status != 'ready'), "
            "(SELECT count(*) FROM audiences WHERE status != 'ready')"
        ).one()
    return int(row[0]), int(row[1])


def maintain(engine: Engine, pipeline: Pipeline, *, limit: int = 1_000_000) -> dict[str, Any]:
    """`run_maintenance` until nothing waits, each step classed by what waited before it:
    backfill (a computed trait not ready) or build (an audience not ready)."""
    from tessera.processor import run_maintenance

    steps: dict[str, list[float]] = {"backfill": [], "build": []}
    for _ in range(limit):
        traits, building = pending(engine)
        if not traits and not building:
            break
        kind = "backfill" if traits else "build"
        started = time.perf_counter()
        run_maintenance(engine, pipeline)
        steps[kind].append(time.perf_counter() - started)
    else:
        raise RuntimeError("maintenance never finished")
    return {
        "backfill_s": sum(steps["backfill"]),
        "backfill_steps": len(steps["backfill"]),
        "build_s": sum(steps["build"]),
        "build_steps": len(steps["build"]),
        "build_step_p50": pct(sorted(steps["build"]), 0.5),
        "build_step_max": max(steps["build"], default=float("nan")),
    }


def memberships(database: Path) -> dict[str, set[str]]:
    """Audience name → member profile ids."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        found: dict[str, set[str]] = {
            name: set() for (name,) in db.execute("SELECT name FROM audiences")
        }
        for name, pid in db.execute(
            "SELECT a.name, m.profile_id FROM audience_members m "
            "JOIN audiences a ON a.id = m.audience_id"
        ):
            found[name].add(pid)
    return found


def computed_values(database: Path) -> dict[tuple[str, str], str | None]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return {
            (pid, name): value
            for pid, name, value in db.execute(
                "SELECT profile_id, name, value FROM computed_trait_values"
            )
        }


def _cpu() -> tuple[float, float]:
    """(this process's CPU seconds, the machine's busy seconds)."""
    hz = os.sysconf("SC_CLK_TCK")
    return sum(os.times()[:2]), _machine_ticks()[0] / hz


def _cores(before: tuple[float, float], elapsed: float) -> tuple[float, float]:
    """(cores this process used, cores everything else used) since `before`."""
    cpu, busy = _cpu()
    mine = cpu - before[0]
    return mine / elapsed, max(0.0, busy - before[1] - mine) / elapsed


def _rss_mib() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited from the
    parent that spawned it)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------
# Parts 1 and 2: processing with and without the 50 audiences.
# --------------------------------------------------------------------------------------------


def _drain_main(database: str, instrument: bool, conn: Connection) -> None:  # noqa: PLR0915
    def work(conn: Connection) -> dict[str, Any]:  # noqa: PLR0915
        from tessera.audiences.stage import DerivedState
        from tessera.processor import lag, run_maintenance, run_once, tune_gc_for_processing

        settings = _settings()
        engine = store_engine(Path(database), settings)
        pipeline = make_pipeline(settings)
        derive: list[tuple[float, int]] = []  # (seconds, events) a batch
        flushes: list[float] = []
        evaluations: list[float] = []
        affected: list[int] = []
        if instrument:
            original_derive = pipeline._derive

            def timed_derive(c: Any, batch: list[Any], *rest: Any, **options: Any) -> Any:
                started = time.perf_counter()
                result = original_derive(c, batch, *rest, **options)
                derive.append((time.perf_counter() - started, len(batch)))
                return result

            setattr(pipeline, "_derive", timed_derive)  # noqa: B010 (a method: mypy refuses =)
            original_evaluate = DerivedState.evaluate
            original_flush = DerivedState.flush

            def timed_evaluate(
                self: DerivedState, profile_id: str, audience_ids: set[str], *a: Any, **k: Any
            ) -> None:
                started = time.perf_counter()
                original_evaluate(self, profile_id, audience_ids, *a, **k)
                evaluations.append(time.perf_counter() - started)
                affected.append(len(audience_ids))

            def timed_flush(self: DerivedState, c: Any) -> None:
                started = time.perf_counter()
                original_flush(self, c)
                flushes.append(time.perf_counter() - started)

            setattr(DerivedState, "evaluate", timed_evaluate)  # noqa: B010
            setattr(DerivedState, "flush", timed_flush)  # noqa: B010
        with engine.connect() as db:
            waiting = lag(db).events
        tune_gc_for_processing()  # as `tessera worker` does
        conn.send(("ready", {"pid": os.getpid(), "waiting": waiting}))
        conn.recv()  # "go", once a profiler (if any) is attached
        batches: list[float] = []
        maintenance: list[float] = []
        applied = 0
        before = _cpu()
        started = time.perf_counter()
        while True:
            t = time.perf_counter()
            done = run_once(engine, pipeline)
            if done:
                batches.append(time.perf_counter() - t)
                applied += done
            t = time.perf_counter()
            maintained = run_maintenance(engine, pipeline)
            maintenance.append(time.perf_counter() - t)
            if not done and not maintained:
                break
        elapsed = time.perf_counter() - started
        cores, others = _cores(before, elapsed)
        engine.dispose()
        per_event = sorted(seconds / events for seconds, events in derive if events)
        derive_total = sum(seconds for seconds, _ in derive)
        batches.sort()
        evaluations.sort()
        return {
            "waiting": waiting,
            "applied": applied,
            "elapsed": elapsed,
            "batches": len(batches),
            "batch_size": pipeline.config.batch_events,
            "batch_p50": pct(batches, 0.5),
            "batch_p99": pct(batches, 0.99),
            "maintenance_s": sum(maintenance),
            "cores": cores,
            "other_cores": others,
            "derive_s": derive_total,
            "derive_per_event_p50": pct(per_event, 0.5),
            "derive_per_event_p95": pct(per_event, 0.95),
            "derive_per_event_max": per_event[-1] if per_event else float("nan"),
            "derive_per_event_mean": derive_total / applied if applied else float("nan"),
            "flush_s": sum(flushes),
            "evaluations": len(evaluations),
            "evaluate_s": sum(evaluations),
            "evaluate_p50": pct(evaluations, 0.5),
            "evaluate_p95": pct(evaluations, 0.95),
            "evaluate_p99": pct(evaluations, 0.99),
            "evaluate_max": evaluations[-1] if evaluations else float("nan"),
            "affected_mean": sum(affected) / len(affected) if affected else float("nan"),
            "rss_mib": _rss_mib(),
        }

    _child(work, conn)


def _stage_main(database: str, stage: str, conn: Connection) -> None:
    """One stage of a separate-stages drain (TESSERA_PROCESSOR_DERIVED=separate), as
    `tessera worker --stage STAGE` runs it: main applies `run_once` until the log is
    applied; derived follows with `run_derived_once` + `run_maintenance` until it is level
    with a finished main stage."""

    def work(conn: Connection) -> dict[str, Any]:
        from tessera.processor import (
            DERIVED,
            lag,
            run_derived_once,
            run_maintenance,
            run_once,
            tune_gc_for_processing,
        )

        settings = _settings().model_copy(update={"processor_derived": "separate"})
        engine = store_engine(Path(database), settings)
        pipeline = make_pipeline(settings)
        with engine.connect() as db:
            total = db.exec_driver_sql("SELECT max(seq) FROM events").scalar_one()
        tune_gc_for_processing()  # as `tessera worker` does
        conn.send(("ready", {"pid": os.getpid()}))
        conn.recv()
        before = _cpu()
        wall = time.time()
        started = time.perf_counter()
        applied = idle = 0
        while True:
            if stage == "main":
                done = run_once(engine, pipeline)
                applied += done
                if not done:
                    break
                continue
            done = run_derived_once(engine, pipeline)
            done += run_maintenance(engine, pipeline)
            applied += done
            if done:
                continue
            with engine.connect() as db:
                level = lag(db).position == total and lag(db, name=DERIVED).position == total
            if level:
                break
            idle += 1
            time.sleep(0.002)  # waiting for the main stage
        elapsed = time.perf_counter() - started
        cores, others = _cores(before, elapsed)
        engine.dispose()
        return {
            "stage": stage,
            "applied": applied,
            "elapsed": elapsed,
            "wall_start": wall,
            "wall_end": wall + elapsed,
            "cores": cores,
            "other_cores": others,
            "idle_polls": idle,
            "rss_mib": _rss_mib(),
        }

    _child(work, conn)


def drain_separate(database: Path, *, args: argparse.Namespace) -> dict[str, Any]:
    """Both stages at once, each in its own process (and core); the elapsed time runs from
    the first to start to the last to finish."""
    children = {
        stage: run_child(_stage_main, (str(database), stage), f"drain-{stage}", 300)
        for stage in ("main", "derived")
    }
    spies = []
    results: dict[str, dict[str, Any]] = {}
    try:
        if args.profile:
            for stage, (ready, _, _) in children.items():
                output = args.profile / f"drain-separate-{stage}.txt"
                spies.append(start_spy(ready["pid"], output, args.profile_rate, None))
            time.sleep(1.0)
        for _, conn, _ in children.values():
            conn.send("go")
        for stage, (_, conn, process) in children.items():
            _, results[stage] = receive(conn, process, 4 * 3600)
    finally:
        for stage, (_, _, process) in children.items():
            stop_child(process, stage in results)
        for spy in spies:
            finish_spy(spy)
    main, derived = results["main"], results["derived"]
    elapsed = max(main["wall_end"], derived["wall_end"]) - min(
        main["wall_start"], derived["wall_start"]
    )
    return {"main": main, "derived": derived, "elapsed": elapsed, "applied": main["applied"]}


def _rebuild_main(database: str, conn: Connection) -> None:
    """A's definitions created after its drain, then backfilled and built for real."""

    def work(conn: Connection) -> dict[str, Any]:
        from tessera.processor import tune_gc_for_processing

        settings = _settings()
        engine = store_engine(Path(database), settings)
        pipeline = make_pipeline(settings)
        tune_gc_for_processing()  # as `tessera worker` does
        conn.send(("ready", {"pid": os.getpid()}))
        conn.recv()
        started = time.perf_counter()
        define(engine)
        defined = time.perf_counter() - started
        before = _cpu()
        t = time.perf_counter()
        result = maintain(engine, pipeline)
        elapsed = time.perf_counter() - t
        cores, others = _cores(before, elapsed)
        with engine.connect() as db:
            traits = int(db.exec_driver_sql("SELECT count(*) FROM computed_traits").scalar_one())
            events = int(db.exec_driver_sql("SELECT count(*) FROM events").scalar_one())
            profiles = int(
                db.exec_driver_sql(
                    "SELECT count(*) FROM profiles WHERE merged_into IS NULL"
                ).scalar_one()
            )
        engine.dispose()
        result.update(
            define_s=defined,
            traits=traits,
            events=events,
            profiles=profiles,
            cores=cores,
            other_cores=others,
            rss_mib=_rss_mib(),
        )
        return result

    _child(work, conn)


def drain(
    database: Path, *, instrument: bool, args: argparse.Namespace, name: str
) -> dict[str, Any]:
    ready, conn, process = run_child(_drain_main, (str(database), instrument), name, 300)
    return _follow(ready, conn, process, args, name)


def _follow(
    ready: dict[str, Any],
    conn: Connection,
    process: multiprocessing.process.BaseProcess,
    args: argparse.Namespace,
    name: str,
) -> dict[str, Any]:
    """Say go to a ready child (under py-spy with --profile) and wait for its result."""
    spy = None
    result: dict[str, Any] | None = None
    started = time.perf_counter()
    try:
        if args.profile:
            spy = start_spy(ready["pid"], args.profile / f"{name}.txt", args.profile_rate, None)
            time.sleep(1.0)
        conn.send("go")
        _, result = receive(conn, process, 4 * 3600)
    finally:
        stop_child(process, result is not None)
        finish_spy(spy)
    assert result is not None
    output = args.profile / f"{name}.txt" if args.profile else None
    if output is not None and output.exists():
        text = summarize_profile(output, time.perf_counter() - started, args.profile_rate)
        (args.profile / f"{name}.summary.txt").write_text(text + "\n")
        result["profile_summary"] = text
    return result


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
    ready, conn, process = run_child(_rebuild_main, (str(plain),), "rebuild", 300)
    rebuilt = _follow(ready, conn, process, args, "backfill-build")
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


# --------------------------------------------------------------------------------------------
# Part 3: the 1M-profile store, built directly.
# --------------------------------------------------------------------------------------------


def _sql_time(iso: str) -> str:
    """`2026-09-01T10:00:00.123Z` (the generator's and `iso_utc`'s form) as `UtcDateTime`
    stores it on SQLite: `2026-09-01 10:00:00.123000`."""
    return f"{iso[:10]} {iso[11:23]}000"


def log_row(message: dict[str, Any], received_iso: str, received_sql: str) -> tuple[Any, ...]:
    """(message_id, type, name, user_id, anonymous_id, timestamp, original_timestamp, sent_at,
    received_at, payload): what `normalise_message` + `append_events` store for a demo message
    without sentAt (so the timestamp is the client's), without the validation."""
    stamp = message["timestamp"]
    kind = message["type"]
    name = message.get("event") if kind == "track" else None
    if kind in ("page", "screen"):
        name = message.get("name")
    payload = {**message, "originalTimestamp": stamp, "sentAt": None, "receivedAt": received_iso}
    when = _sql_time(stamp)
    return (
        message["messageId"],
        kind,
        name,
        message.get("userId"),
        message.get("anonymousId"),
        when,
        when,
        None,
        received_sql,
        orjson.dumps(payload).decode(),
    )


def reference_row(message: dict[str, Any]) -> tuple[Any, ...]:
    """The same through the real ingest code, for the sample check."""
    from tessera.ingest.messages import normalise_message

    row = normalise_message(message, source_id=1, received_at=RECEIVED)

    def sql(moment: datetime | None) -> str | None:
        return (
            None if moment is None else moment.replace(tzinfo=None).isoformat(" ", "microseconds")
        )

    return (
        row["message_id"],
        row["type"],
        row["name"],
        row["user_id"],
        row["anonymous_id"],
        sql(row["timestamp"]),
        sql(row["original_timestamp"]),
        sql(row["sent_at"]),
        sql(row["received_at"]),
        row["payload"],
    )


def produce_slice(task: tuple[int, int, int, str, int | None, str]) -> dict[str, Any]:  # noqa: PLR0915
    """Generate one slice of people and write its rows, with seqs relative to the slice
    (1, 2, ...), to a SQLite file of its own; the main process adds the offset."""
    index, seed, people, region, cap, directory = task
    from tessera.demo import generate

    gc.disable()  # millions of new objects and nothing to free until the slice is written
    started = time.perf_counter()
    dataset = generate(seed=seed, people=people, region=region)
    add_consent(dataset.messages)
    generated = time.perf_counter() - started
    keep_from: dict[int, int] = {}
    if cap is not None:  # each person's latest `cap` events
        totals = Counter(dataset.owners)
        keep_from = {owner: total - cap for owner, total in totals.items() if total > cap}
    seen: Counter[int] = Counter()
    received_iso = RECEIVED.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
    received_sql = _sql_time(received_iso)
    events: list[tuple[Any, ...]] = []
    first: dict[int, int] = {}  # person → rel seq of their first kept event
    last_at: dict[int, str] = {}
    counts: Counter[int] = Counter()
    traits: dict[tuple[int, str], tuple[Any, ...]] = {}
    consent: dict[tuple[int, str], tuple[Any, ...]] = {}
    mismatches = 0
    rel = 0
    position = -1
    for position, (message, owner) in enumerate(zip(dataset.messages, dataset.owners, strict=True)):
        seen[owner] += 1
        if seen[owner] <= keep_from.get(owner, 0):
            continue
        rel += 1
        row = log_row(message, received_iso, received_sql)
        if position % SAMPLE_EVERY == 0 and row != reference_row(message):
            mismatches += 1
        owner_rel = first.setdefault(owner, rel)
        events.append((rel, *row, owner_rel))
        counts[owner] += 1
        when = row[5]
        last_at[owner] = when
        # What ProfileBatch derives: identify traits, consent, then context.traits; latest wins.
        context = message.get("context") or {}
        found = message.get("traits") if message["type"] == "identify" else None
        for source in (found, context.get("traits")):
            if isinstance(source, dict):
                for name, value in source.items():
                    traits[(owner, name)] = (orjson.dumps(value).decode(), rel, row[0], when)
        preferences = (context.get("consent") or {}).get("categoryPreferences")
        if isinstance(preferences, dict):
            for category, granted in preferences.items():
                consent[(owner, category)] = (int(granted), rel, when)
    del dataset
    path = Path(directory) / f"slice-{index:05d}.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute(
            "CREATE TABLE ev (rel INTEGER PRIMARY KEY, message_id, type, name, user_id, "
            "anonymous_id, timestamp, original_timestamp, sent_at, received_at, payload, owner)"
        )
        db.execute("CREATE TABLE pf (owner INTEGER, created_at, updated_at, event_count)")
        db.execute("CREATE TABLE tr (owner INTEGER, name, value, seq INTEGER, message_id, at)")
        db.execute("CREATE TABLE cs (owner INTEGER, category, granted, seq INTEGER, at)")
        db.execute("BEGIN")
        db.executemany("INSERT INTO ev VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", events)
        db.executemany(
            "INSERT INTO pf VALUES (?, ?, ?, ?)",
            [
                (owner_rel, events[owner_rel - 1][6], last_at[owner], counts[owner])
                for owner, owner_rel in first.items()
            ],
        )
        db.executemany(
            "INSERT INTO tr VALUES (?, ?, ?, ?, ?, ?)",
            [(first[owner], name, *rest) for (owner, name), rest in traits.items()],
        )
        db.executemany(
            "INSERT INTO cs VALUES (?, ?, ?, ?, ?)",
            [(first[owner], category, *rest) for (owner, category), rest in consent.items()],
        )
        db.execute("COMMIT")
    finally:
        db.close()
    return {
        "index": index,
        "path": str(path),
        "events": rel,
        "people": len(first),
        "sampled": len(range(0, position + 1, SAMPLE_EVERY)),
        "mismatches": mismatches,
        "generate_s": generated,
        "total_s": time.perf_counter() - started,
        "rss_mib": _rss_mib(),
    }


def build_store(
    database: Path, *, args: argparse.Namespace, settings: Settings, region: str
) -> dict[str, Any]:
    started = time.perf_counter()
    engine, source_id = fresh_store(database, settings, "demo")
    engine.dispose()
    directory = database.parent / "slices"
    directory.mkdir()
    slices = -(-args.profiles // args.slice_people)
    tasks = [
        (
            k,
            args.seed + 1000 + k,
            min(args.slice_people, args.profiles - k * args.slice_people),
            region,
            args.events_per_person,
            str(directory),
        )
        for k in range(slices)
    ]
    db = sqlite3.connect(database, isolation_level=None)
    base = 0
    people = sampled = mismatches = 0
    insert_s = 0.0
    generate_s = 0.0
    generator_rss = 0.0
    try:
        for pragma in (
            "journal_mode=OFF",
            "synchronous=OFF",
            "cache_size=-1000000",
            "temp_store=MEMORY",
        ):
            db.execute(f"PRAGMA {pragma}")
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.build_workers) as pool:
            for done in pool.imap(produce_slice, tasks):
                t = time.perf_counter()
                db.execute("ATTACH DATABASE ? AS s", (done["path"],))
                db.execute("BEGIN")
                db.execute(
                    "INSERT INTO events (seq, source_id, message_id, type, name, user_id, "
                    "anonymous_id, timestamp, original_timestamp, sent_at, received_at, payload) "
                    "SELECT rel + ?1, ?2, message_id, type, name, user_id, anonymous_id, "
                    "timestamp, original_timestamp, sent_at, received_at, payload "
                    "FROM s.ev ORDER BY rel",
                    (base, source_id),
                )
                db.execute(
                    "INSERT INTO event_profiles (seq, profile_id) "
                    "SELECT rel + ?1, 'prf_' || (owner + ?1) FROM s.ev ORDER BY rel",
                    (base,),
                )
                db.execute(
                    "INSERT INTO profiles (id, created_seq, merged_into, created_at, updated_at, "
                    "event_count) SELECT 'prf_' || (owner + ?1), owner + ?1, NULL, created_at, "
                    "updated_at, event_count FROM s.pf",
                    (base,),
                )
                db.execute(
                    "INSERT INTO profile_traits (profile_id, name, value, source_id, seq, "
                    "message_id, timestamp) SELECT 'prf_' || (owner + ?1), name, value, ?2, "
                    "seq + ?1, message_id, at FROM s.tr",
                    (base, source_id),
                )
                db.execute(
                    "INSERT INTO profile_consent (profile_id, category, granted, source_id, seq, "
                    "timestamp) SELECT 'prf_' || (owner + ?1), category, granted, ?2, seq + ?1, "
                    "at FROM s.cs",
                    (base, source_id),
                )
                db.execute("COMMIT")
                db.execute("DETACH DATABASE s")
                Path(done["path"]).unlink()
                base += done["events"]
                people += done["people"]
                sampled += done["sampled"]
                mismatches += done["mismatches"]
                generate_s += done["generate_s"]
                generator_rss = max(generator_rss, done["rss_mib"])
                insert_s += time.perf_counter() - t
                if done["index"] % 10 == 9 or done["index"] == slices - 1:
                    print(
                        f"  slice {done['index'] + 1}/{slices}: {people:,} people, {base:,} "
                        f"events, {time.perf_counter() - started:.0f} s",
                        flush=True,
                    )
        for stage in ("main", "derived"):  # both stages are level with the log
            db.execute(
                "INSERT OR REPLACE INTO processor_state (name, position, unattributed_events, "
                "updated_at, version, failed_batches) VALUES (?, ?, 0, ?, 0, 0)",
                (stage, base, _sql_time(received_iso_of(RECEIVED))),
            )
        db.execute("PRAGMA journal_mode=WAL")
        counts = {
            table: int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in (
                "events",
                "event_profiles",
                "profiles",
                "profile_traits",
                "profile_consent",
            )
        }
        head = int(db.execute("SELECT max(seq) FROM events").fetchone()[0] or 0)
    finally:
        db.close()
    shutil.rmtree(directory, ignore_errors=True)
    return {
        "build_s": time.perf_counter() - started,
        "insert_s": insert_s,
        "generate_cpu_s": generate_s,
        "slices": slices,
        "workers": args.build_workers,
        "people": people,
        "events": base,
        "head": head,
        "counts": counts,
        "sampled": sampled,
        "mismatches": mismatches,
        "bytes": disk_size(database),
        "rss_mib": _rss_mib(),
        "generator_rss_mib": generator_rss,
    }


def received_iso_of(moment: datetime) -> str:
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


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

        settings = _settings()
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
        before = _cpu()
        t = time.perf_counter()
        first = maintain(engine, pipeline)
        cores, others = _cores(before, time.perf_counter() - t)
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
        before = _cpu()
        t = time.perf_counter()
        second = maintain(engine, pipeline)
        cores, others = _cores(before, time.perf_counter() - t)
        out["second"] = {**second, "cores": cores, "other_cores": others}
        out["members_changed"] = sorted(_members_of(engine, audience_id))
        out["rss_mib"] = _rss_mib()
        engine.dispose()
        return out

    _child(work, conn)


# --------------------------------------------------------------------------------------------
# Part 4: the DuckDB reference.
# --------------------------------------------------------------------------------------------


def export_parquet(database: Path, directory: Path) -> dict[str, Any]:
    """events (seq, type, name, timestamp, properties JSON) and event_profiles (seq,
    profile_id) to Parquet, EXPORT_BATCH rows at a time."""
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    started = time.perf_counter()
    directory.mkdir(exist_ok=True)
    events_path, attribution_path = directory / "events.parquet", directory / "attribution.parquet"
    schema = pa.schema(
        [
            ("seq", pa.int64()),
            ("type", pa.string()),
            ("name", pa.string()),
            ("timestamp", pa.timestamp("us")),
            ("properties", pa.string()),
        ]
    )
    rows = 0
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        cursor = db.execute(
            "SELECT seq, type, name, timestamp, json_extract(payload, '$.properties') "
            "FROM events ORDER BY seq"
        )
        with pq.ParquetWriter(events_path, schema, compression="zstd") as writer:
            while batch := cursor.fetchmany(EXPORT_BATCH):
                seqs, kinds, names, stamps, properties = zip(*batch, strict=True)
                writer.write_table(
                    pa.table(
                        [
                            pa.array(seqs, pa.int64()),
                            pa.array(kinds, pa.string()),
                            pa.array(names, pa.string()),
                            pa.array(stamps, pa.string()).cast(pa.timestamp("us")),
                            pa.array(properties, pa.string()),
                        ],
                        schema=schema,
                    )
                )
                rows += len(batch)
        attribution_schema = pa.schema([("seq", pa.int64()), ("profile_id", pa.string())])
        cursor = db.execute("SELECT seq, profile_id FROM event_profiles ORDER BY seq")
        with pq.ParquetWriter(attribution_path, attribution_schema, compression="zstd") as writer:
            while batch := cursor.fetchmany(EXPORT_BATCH):
                seqs, pids = zip(*batch, strict=True)
                writer.write_table(
                    pa.table(
                        [pa.array(seqs, pa.int64()), pa.array(pids, pa.string())],
                        schema=attribution_schema,
                    )
                )
    return {
        "export_s": time.perf_counter() - started,
        "rows": rows,
        "bytes": events_path.stat().st_size + attribution_path.stat().st_size,
        "events": events_path,
        "attribution": attribution_path,
    }


def duckdb_members(exported: dict[str, Any], count: int, runs: int = 3) -> dict[str, Any]:
    """The reference query: the first run in a fresh connection, then `runs - 1` more."""
    import duckdb

    sql = DUCKDB_QUERY.format(
        events=exported["events"],
        attribution=exported["attribution"],
        now=NOW.replace(tzinfo=None).isoformat(" "),
        count=count,
    )
    times: list[float] = []
    members: set[str] = set()
    connection = duckdb.connect()
    try:
        connection.execute("SET threads = 2")
        for _ in range(runs):
            started = time.perf_counter()
            found = connection.execute(sql).fetchall()
            times.append(time.perf_counter() - started)
            members = {row[0] for row in found}
    finally:
        connection.close()
    return {"first_s": times[0], "best_s": min(times), "members": members}


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
    tessera = _follow(ready, conn, process, args, "recompute")
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


# --------------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------------


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


def summary_lines(results: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(figures, targets, failed checks)."""
    lines: list[str] = []
    targets = ["targets:"]
    failed: list[str] = []
    processing = results.get("processing")
    if processing is not None:
        p, ref, on, rb = (
            processing,
            processing["reference"],
            processing["audiences"],
            processing["rebuilt"],
        )
        rate_ref = ref["applied"] / ref["elapsed"]
        rate_on = on["applied"] / on["elapsed"]
        lines += [
            f"processing: demo dataset of {p['people']:,} people, {p['messages']:,} events "
            f"(with consent on identify calls), appended to the log directly; "
            f"{len(NAMED_TRAITS)} computed traits + {p['audience_count']} audiences "
            f"({rb['traits']} computed traits with the implicit ones), clock fixed at "
            f"{NOW:%Y-%m-%d %H:%M} UTC",
        ]
        for label, r in (("no definitions (reference)", ref), ("50 audiences", on)):
            rate = r["applied"] / r["elapsed"]
            lines.append(
                f"  {label}: {rate:,.0f} events/s ({r['applied']:,} events in "
                f"{r['elapsed']:.1f} s, {r['batches']} batches of {r['batch_size']}: p50 "
                f"{_ms(r['batch_p50'])}, p99 {_ms(r['batch_p99'])}; run_maintenance "
                f"{r['maintenance_s']:.1f} s of it); CPU: {r['cores']:.2f} cores, other "
                f"processes {r['other_cores']:.2f}; peak RSS {r['rss_mib']:,.0f} MiB"
            )
        sep = p["separate"]
        rate_sep = sep["applied"] / sep["elapsed"]
        sm, sd = sep["main"], sep["derived"]
        lines += [
            f"  50 audiences, stages separate (TESSERA_PROCESSOR_DERIVED=separate; a process "
            f"each, as `tessera worker --stage main` and `--stage derived`): {rate_sep:,.0f} "
            f"events/s ({sep['applied']:,} events in {sep['elapsed']:.1f} s: main done after "
            f"{sm['elapsed']:.1f} s at {sm['cores']:.2f} cores, derived level after "
            f"{sd['elapsed']:.1f} s at {sd['cores']:.2f} cores; peak RSS "
            f"{sm['rss_mib']:,.0f} + {sd['rss_mib']:,.0f} MiB); same memberships and values "
            f"as inline: "
            + (
                "yes"
                if p["separate_differences"] == 0
                else f"NO, {p['separate_differences']:,} differences"
            ),
            f"  with audiences / without: {rate_on / rate_ref:.2f} inline, "
            f"{rate_sep / rate_ref:.2f} stages separate",
            f"  derived stage (Pipeline._derive: observe + settle + load + evaluate), per batch "
            f"divided by its events: p50 {_us(on['derive_per_event_p50'])}, p95 "
            f"{_us(on['derive_per_event_p95'])}, max {_us(on['derive_per_event_max'])} a event "
            f"(mean {_us(on['derive_per_event_mean'])}; {on['derive_s']:.1f} s in all, "
            f"{on['derive_s'] / on['elapsed']:.0%} of the drain); its write "
            f"(DerivedState.flush) another {on['flush_s']:.1f} s "
            f"({_us(on['flush_s'] / on['applied'])} a event)",
            f"  DerivedState.evaluate, one call per touched profile ({on['evaluations']:,} calls, "
            f"{on['affected_mean']:.1f} affected audiences a call on average): p50 "
            f"{_us(on['evaluate_p50'])}, p95 {_us(on['evaluate_p95'])}, p99 "
            f"{_us(on['evaluate_p99'])}, max {_ms(on['evaluate_max'])}; "
            f"{on['evaluate_s']:.1f} s in all",
            f"  the same definitions on the reference store after its drain (run_maintenance): "
            f"backfill of {rb['traits']} computed traits over {rb['events']:,} events in "
            f"{rb['backfill_s']:.1f} s ({rb['events'] / rb['backfill_s']:,.0f} events/s, "
            f"{rb['backfill_steps']} steps), build of {p['audience_count']} audiences over "
            f"{rb['profiles']:,} profiles in {rb['build_s']:.1f} s ({rb['build_steps']} steps, "
            f"p50 {_ms(rb['build_step_p50'])}, max {_ms(rb['build_step_max'])}); CPU "
            f"{rb['cores']:.2f} cores, other processes {rb['other_cores']:.2f}",
            f"  memberships: {p['members_total']:,} in all; largest "
            + ", ".join(f"{name!r} {size:,}" for size, name in p["sizes"][:3])
            + f"; empty: {sum(1 for size, _ in p['sizes'] if size == 0)}",
        ]
        diffs = p["membership_differences"]
        same = not diffs and p["value_differences"] == 0
        lines.append(
            "  incremental (B) = backfill + build (A): "
            + (
                f"identical ({p['audience_count']} audiences, {p['values']:,} computed values)"
                if same
                else f"{len(diffs)} audiences differ, {p['value_differences']:,} computed "
                f"values differ"
            )
        )
        for name, (only_b, only_a) in sorted(diffs.items())[:10]:
            lines.append(f"    {name!r}: {only_b} only incremental, {only_a} only rebuilt")
        if not same:
            failed.append("processing: incremental memberships differ from backfill + build")
        if p["separate_differences"]:
            failed.append("processing: separate stages differ from inline")
        if ref["applied"] != ref["waiting"] or on["applied"] != on["waiting"]:
            failed.append(
                f"processing: {ref['waiting']:,} / {on['waiting']:,} waiting, "
                f"{ref['applied']:,} / {on['applied']:,} applied"
            )
        targets += [
            f"  evaluation cost per event p95 <= {TARGET_EVAL_PER_EVENT_MS:g} ms with "
            f"{p['audience_count']} audiences (Pipeline._derive / batch events): "
            f"{on['derive_per_event_p95'] * 1000:.3f} ms  "
            f"{_mark(on['derive_per_event_p95'] * 1000 <= TARGET_EVAL_PER_EVENT_MS)}",
            f"  processing with {p['audience_count']} audiences >= {TARGET_EVENTS_PER_S:,} "
            f"events/s: {max(rate_on, rate_sep):,.0f} (stages "
            f"{'separate' if rate_sep > rate_on else 'inline'}; inline {rate_on:,.0f}, "
            f"separate {rate_sep:,.0f}, without audiences: {rate_ref:,.0f})  "
            f"{_mark(max(rate_on, rate_sep) >= TARGET_EVENTS_PER_S)}",
        ]
    recompute = results.get("recompute")
    if recompute is not None:
        r, b, ts = recompute, recompute["build"], recompute["tessera"]
        first, second = ts["first"], ts["second"]
        counts = b["counts"]
        lines += [
            f"recompute store: {b['people']:,} profiles, {b['events']:,} events "
            f"({b['events'] / max(1, b['people']):.1f} a profile), {counts['profile_traits']:,} "
            f"traits, {counts['profile_consent']:,} consent rows; built directly in "
            f"{b['build_s']:.0f} s ({b['slices']} slices; inserting {b['insert_s']:.0f} s of "
            f"it), {b['bytes'] / 2**30:.1f} GiB on disk; payloads equal normalise_message's on "
            f"{b['sampled'] - b['mismatches']:,} of {b['sampled']:,} sampled events",
            f"  TARGET: {orjson.dumps(TARGET).decode()}",
            f"  backfill of its {ts['traits']} implicit computed traits (one pass, "
            f"backfill_step): {b['events']:,} events in {first['backfill_s']:.1f} s, "
            f"{b['events'] / first['backfill_s']:,.0f} events/s ({first['backfill_steps']} "
            f"steps; {ts['values']:,} values written)",
            f"  full recompute (build_step loop): {ts['profiles']:,} profiles in "
            f"{first['build_s']:.2f} s, {ts['profiles'] / first['build_s']:,.0f} profiles/s "
            f"({first['build_steps']} steps, p50 {_ms(first['build_step_p50'])}, max "
            f"{_ms(first['build_step_max'])}); {r['members']:,} members",
            f"  after update_audience (count >= 2 -> >= 3, same implicit traits; the update "
            f"itself {_ms(ts['update_s'])}): {second['build_s']:.2f} s, "
            f"{ts['profiles'] / second['build_s']:,.0f} profiles/s ({second['build_steps']} "
            f"steps); {r['members_changed']:,} members",
            f"  CPU: {first['cores']:.2f} cores, other processes {first['other_cores']:.2f} "
            f"(backfill + build); peak RSS: recompute process {ts['rss_mib']:,.0f} MiB; while "
            f"building, inserting process {b['rss_mib']:,.0f} MiB and each of "
            f"{b['workers']} generating processes up to {b['generator_rss_mib']:,.0f} MiB",
        ]
        e, d, dc = r["export"], r["duckdb"], r["duckdb_changed"]
        lines += [
            f"duckdb reference: {e['rows']:,} events + attribution exported to Parquet in "
            f"{e['export_s']:.0f} s ({e['bytes'] / 2**20:,.0f} MiB, zstd); the hand-written "
            f"query over the raw events (2 threads)",
        ]
        for label, dd, ours, seconds in (
            ("TARGET", d, r["members"], first["build_s"]),
            ("changed", dc, r["members_changed"], second["build_s"]),
        ):
            same = dd["only_tessera"] == 0 and dd["only_duckdb"] == 0
            lines.append(
                f"  {label}: identical member set: "
                + (
                    f"yes ({ours:,})"
                    if same
                    else f"NO (Tessera {ours:,}, DuckDB {dd['members']:,}: "
                    f"{dd['only_tessera']:,} only in Tessera, {dd['only_duckdb']:,} only in "
                    f"DuckDB, e.g. {dd['sample']})"
                )
                + f"; Tessera recompute {seconds:.2f} s vs DuckDB {dd['first_s']:.2f} s (best "
                f"of 3: {dd['best_s']:.2f} s): Tessera / DuckDB = {seconds / dd['first_s']:.1f}"
            )
            if not same:
                failed.append(f"recompute: {label} members differ from DuckDB's")
        lines.append(
            "  (Tessera's recompute reads the precomputed rollups, the computed-trait values "
            "the processor keeps, and writes members, history, changes and schedule; DuckDB "
            "scans the raw events and returns ids. The rollups cost the backfill above, once, "
            "and the processor's upkeep with every event.)"
        )
        if b["mismatches"]:
            failed.append(f"recompute: {b['mismatches']} bulk rows differ from normalise_message")
        if b["head"] != b["events"] or b["counts"]["event_profiles"] != b["events"]:
            failed.append("recompute: the bulk store's events are not dense or not attributed")
        targets.append(
            f"  recompute one audience over {ts['profiles']:,} profiles <= "
            f"{TARGET_RECOMPUTE_S:g} s: {first['build_s']:.2f} s  "
            f"{_mark(first['build_s'] <= TARGET_RECOMPUTE_S)}"
        )
    phases = [
        (name, seconds)
        for part in ("processing", "recompute")
        for name, seconds in results.get(part, {}).get("phases", {}).items()
    ]
    if phases:
        lines.append(
            "phases: "
            + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases)
            + f"; whole run {results['elapsed_s'] / 60:.1f} min"
        )
    return lines, targets, failed


RESULTS_SECTION_NOTE = """\
One run of `.venv/bin/python benchmarks/audiences.py --record` (see its docstring for what is
measured and how). Targets: evaluation cost per event p95 <= 1 ms with 50 audiences; processing
with audiences >= 10,000 events/s; recomputing one audience over 1M profiles <= 10 s. "other
processes" is CPU used by anything else on the machine."""


def record(lines: list[str], args: argparse.Namespace, info: dict[str, str]) -> None:
    cap = "all" if args.events_per_person is None else str(args.events_per_person)
    section = [
        "",
        f"## audiences {info['date']}",
        "",
        RESULTS_SECTION_NOTE,
        "",
        f"- machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}",
        f"- commit: {info['commit']}",
        *[f"- setting from the environment: {k}={v}" for k, v in tessera_overrides().items()],
        f"- run: parts {','.join(args.parts)}; {args.people:,} demo people (seed {args.seed}) "
        f"for processing; {args.profiles:,} profiles ({cap} events a person, slices of "
        f"{args.slice_people:,}, {args.build_workers} generating processes) for the recompute"
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark computed traits and audiences (see the module docstring)."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument(
        "--parts",
        type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
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
    parser.add_argument("--record", action="store_true", help="append the figures to RESULTS.md")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy into DIR/<part>.txt")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
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
    print(
        f"tessera audience benchmark: {info['date']}, {info['cores']} cores ({info['cpu']}), "
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
    workdir = Path(tempfile.mkdtemp(prefix="tessera-audiences-bench-"))
    results: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        if "processing" in args.parts:
            results["processing"] = part_processing(args, workdir, settings, region)
        if "recompute" in args.parts:
            results["recompute"] = part_recompute(args, workdir, settings, region)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["elapsed_s"] = time.perf_counter() - started
    lines, targets, failed = summary_lines(results)
    lines += targets
    lines.append(f"peak RSS of the main process: {_rss_mib():,.0f} MiB")
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
        record(lines, args, info)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; child processes were stopped", file=sys.stderr)
        sys.exit(130)
