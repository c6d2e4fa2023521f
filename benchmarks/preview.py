"""Preview and list-page benchmark: how long does a draft audience's live preview (size and a
sample) take over 1,000,000 profiles, how far is its size from the exact one, and what do the
audience pages' queries cost at that scale?

Run it with the project's virtualenv:

    .venv/bin/python benchmarks/preview.py            # the 1M store: ~20 min to build once,
                                                      # then ~3 minutes a run
    .venv/bin/python benchmarks/preview.py --quick    # 50,000 profiles
    .venv/bin/python benchmarks/preview.py --record   # also append the figures to RESULTS.md
    .venv/bin/python benchmarks/preview.py --profile /tmp/prof   # py-spy the measuring process

The store (`preview_store.py`) is the audience benchmark's bulk store (`audiences_store.py`:
`--profiles` demo people, their latest `--events-per-person` events, traits and consent as the
processor derives them) with the definitions a workspace already has (3 named computed traits,
4 audiences, one of them with event conditions), backfilled and built by the real maintenance
loop. It is built once into `--cache-dir` and reused (a newer schema is migrated on open).
Time is fixed at the audience benchmark's NOW (2026-10-31 01:00 UTC).

1. Preview. Each draft in `DRAFTS` is previewed `--repeat` times with
   `tessera.audiences.preview.preview_audience` on one connection in a spawned process (the
   first run pays a cold page cache of a 13 GiB file; p50 and max are printed). Past its
   1.5 s budget a preview estimates the size with a 95% margin; each estimate is compared
   with the exact size, from the same function without a time budget (one walk over every
   profile, the reference: its seconds are printed; the walk takes from 25 s to 6 minutes,
   so the sizes are kept beside the store in `<store>.exact.json` and walked again only
   for a new draft or store).
2. Pages. After seeding 30 days of hourly size snapshots through the worker job's
   `take_snapshots`, each service function a page calls is timed `--page-calls` times:
   the audience list (`audience_overview`, `list_audiences`), the trait list
   (`computed_trait_overview`), a detail page (`get_audience`, `size_trend` 7 days,
   `daily_changes` 30 days, the first members page). Reference: what the list cost when it
   counted (members grouped by audience, surviving profiles).

Targets: preview <= 2 s; page queries p95 <= 300 ms (DESIGN.md's page budget).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from audiences_definitions import NOW, resolve
from audiences_drain import follow
from harness import add_output_flags, announce, machine, mark, ms, pct, record, rss_mib
from harness_server import child_main, run_child
from harness_store import region_of, store_engine
from harness_store import settings as default_settings
from preview_store import default_cache, ensure_store

# (label, draft). "@name" is an existing audience of the store.
DRAFTS: list[tuple[str, dict[str, Any]]] = [
    ("trait condition", {"trait": "city", "op": "in", "value": ["Los Angeles", "Seattle"]}),
    ("computed trait", {"computed": "spend", "op": "gte", "value": 300}),
    ("event count in a window, a new condition",
     {"event": "Product Viewed", "count": {"op": "gte", "value": 3}, "window": {"days": 30}}),
    ("event in a window, an existing condition",
     {"event": "Cart Viewed", "performed": True, "window": {"days": 7}}),
    ("nested AND/OR/NOT", {"and": [
        {"or": [{"trait": "city", "op": "eq", "value": "New York"}, {"consent": "marketing"}]},
        {"not": {"audience": "@cart abandoners"}},
        {"computed": "views_7d", "op": "gte", "value": 1}]}),
]  # fmt: skip
# What the audience list ran per request before sizes were kept (the pages' reference).
COUNT_MEMBERS = "SELECT audience_id, count(*) FROM audience_members GROUP BY audience_id"
COUNT_PROFILES = "SELECT count(*) FROM profiles WHERE merged_into IS NULL"
PREVIEW_TARGET_S = 2.0
PAGE_TARGET_S = 0.3


def _timed(function: Any, calls: int) -> dict[str, float]:
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return {"p50": pct(seconds, 0.5), "p95": pct(seconds, 0.95), "max": seconds[-1]}


def _exact_sizes(database: str) -> tuple[Path, dict[str, Any]]:
    """The exact sizes found before for this store (a walk over every profile takes from
    a minute to several; the store does not change between runs)."""
    path = Path(f"{database}.exact.json")
    return path, (json.loads(path.read_text()) if path.exists() else {})


def _previews(
    conn: Any, ids: dict[str, str], args: argparse.Namespace, database: str
) -> list[dict[str, Any]]:
    from tessera.audiences.preview import preview_audience

    cache_path, cached = _exact_sizes(database)
    out = []
    for label, draft in DRAFTS:
        document = resolve(draft, ids)
        key = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]
        runs = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            answer = preview_audience(conn, document=document, now=NOW)
            runs.append({**answer, "wall_s": time.perf_counter() - started})
        exact = cached.get(key)
        if exact is None and not args.no_exact:
            print(f"  {label}: the exact size (a walk over every profile) ...", flush=True)
            started = time.perf_counter()
            found = preview_audience(conn, document=document, now=NOW, budget_seconds=1e9)
            exact = {"size": found["size"], "seconds": time.perf_counter() - started,
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
            cached[key] = exact
            cache_path.write_text(json.dumps(cached, indent=1))
        out.append({"label": label, "runs": runs, "exact": exact})
        walls = sorted(run["wall_s"] for run in runs)
        print(f"  {label}: p50 {walls[len(walls) // 2]:.2f} s, size {runs[-1]['size']:,}"
              + ("" if exact is None else f" (exact {exact['size']:,})"), flush=True)  # fmt: skip
    return out


def _pages(engine: Any, ids: dict[str, str], calls: int) -> dict[str, Any]:
    import sqlalchemy as sa

    from tessera.audiences import service
    from tessera.audiences.overview import audience_overview, computed_trait_overview
    from tessera.audiences.trends import daily_changes, size_trend, take_snapshots

    with engine.begin() as conn:
        seeded = conn.execute(sa.text("SELECT count(*) FROM audience_size_snapshots")).scalar()
    if not seeded:
        for hour in range(30 * 24, -1, -1):
            with engine.begin() as conn:
                take_snapshots(conn, now=NOW - timedelta(hours=hour))
    audience_id = ids["marketing opt-in"]  # the largest
    timings: dict[str, Any] = {}
    with engine.connect() as conn:
        checks = {
            "audience_overview": lambda: audience_overview(conn, now=NOW),
            "list_audiences": lambda: service.list_audiences(conn),
            "computed_trait_overview": lambda: computed_trait_overview(conn),
            "get_audience": lambda: service.get_audience(conn, audience_id=audience_id),
            "size_trend (7 days)": lambda: size_trend(
                conn, audience_id=audience_id, since=NOW - timedelta(days=7)
            ),
            "daily_changes (30 days)": lambda: daily_changes(
                conn, audience_id=audience_id, days=30, now=NOW
            ),
            "members, first page": lambda: service.list_members(
                conn, audience_id=audience_id, cursor=None, limit=100
            ),
            "reference: counting members and profiles": lambda: (
                list(conn.execute(sa.text(COUNT_MEMBERS))),
                conn.execute(sa.text(COUNT_PROFILES)).scalar(),
            ),
        }
        for name, check in checks.items():
            check()  # warm
            timings[name] = _timed(check, calls)
        sizes = {item["name"]: item["size"] for item in audience_overview(conn, now=NOW)}
    return {"timings": timings, "sizes": sizes}


def _measure_main(database: str, args: argparse.Namespace, conn: Connection) -> None:
    def work(conn: Connection) -> dict[str, Any]:
        import sqlalchemy as sa

        engine = store_engine(Path(database), default_settings())
        with engine.connect() as db:
            ids = {name: aid for aid, name in db.execute(sa.text("SELECT id, name FROM audiences"))}
            profiles = db.execute(
                sa.text("SELECT count(*) FROM profiles WHERE merged_into IS NULL")
            ).scalar_one()
        conn.send(("ready", {"pid": os.getpid()}))
        conn.recv()
        out: dict[str, Any] = {"profiles": int(profiles)}
        print("preview ...", flush=True)
        with engine.connect() as db:
            out["previews"] = _previews(db, ids, args, database)
        print("pages ...", flush=True)
        out["pages"] = _pages(engine, ids, args.page_calls)
        out["rss_mib"] = rss_mib()
        engine.dispose()
        return out

    child_main(work, conn)


def summary(result: dict[str, Any]) -> tuple[list[str], list[str]]:
    lines = [f"store: {result['profiles']:,} profiles ({result['store']})", "preview:"]
    targets = []
    worst = 0.0
    for item in result["previews"]:
        runs, exact = item["runs"], item["exact"]
        walls = sorted(run["wall_s"] for run in runs)
        worst = max(worst, walls[len(walls) // 2])
        head = f"  {item['label']}: p50 {walls[len(walls) // 2]:.2f} s (max {walls[-1]:.2f} s)"
        if exact is not None:
            head += (
                f"; exact size {exact['size']:,} (the walk over every profile: "
                f"{exact['seconds']:.0f} s, {exact['date']})"
            )
        lines.append(head)
        for run in runs:
            if run["exact"]:
                said = f"{run['size']:,} exact"
            else:
                margin = "?" if run["margin"] is None else f"{run['margin']:,}"
                said = f"{run['size']:,} ± {margin} estimated"
            line = (
                f"    {run['wall_s']:.2f} s: {said} from {run['evaluated_profiles']:,} of "
                f"{run['profiles']:,} profiles, sample of {len(run['sample'])}"
            )
            if exact is not None and exact["size"] and not run["exact"]:
                error = run["size"] - exact["size"]
                inside = run["margin"] is not None and abs(error) <= run["margin"]
                line += f"; error {error / exact['size']:+.1%}" + (
                    ", within the margin" if inside else ", OUTSIDE the margin"
                )
            lines.append(line)
    lines.append("pages (p50 / p95 / max over calls):")
    slowest = 0.0
    for name, t in result["pages"]["timings"].items():
        lines.append(f"  {name}: {ms(t['p50'])} / {ms(t['p95'])} / {ms(t['max'])}")
        if not name.startswith("reference"):
            slowest = max(slowest, t["p95"])
    targets.append(
        f"  preview <= {PREVIEW_TARGET_S:.0f} s at 1M profiles (slowest p50): {worst:.2f} s  "
        + mark(worst <= PREVIEW_TARGET_S)
    )
    targets.append(
        f"  page queries p95 <= 300 ms (slowest): {ms(slowest)}  " + mark(slowest <= PAGE_TARGET_S)
    )
    return lines, targets


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark audience previews and list pages.")
    parser.add_argument("--quick", action="store_true", help="50,000 profiles")
    parser.add_argument("--seed", type=int, default=42, help="seed of the demo people")
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument(
        "--events-per-person", type=int, default=10, help="each person's latest events kept"
    )
    parser.add_argument("--slice-people", type=int, default=20_000)
    parser.add_argument(
        "--build-workers", type=int, default=1, help="processes generating the store's slices"
    )
    parser.add_argument("--cache-dir", default=str(default_cache()), help="where stores are kept")
    parser.add_argument("--repeat", type=int, default=3, help="previews of each draft")
    parser.add_argument("--page-calls", type=int, default=20, help="calls of each page query")
    parser.add_argument("--no-exact", action="store_true", help="skip the exact reference walk")
    parser.add_argument("--build-only", action="store_true", help="build the store and stop")
    add_output_flags(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.profiles = min(args.profiles, 50_000)
        args.slice_people = min(args.slice_people, 10_000)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    announce("preview", info)
    settings = default_settings()
    database, how = ensure_store(args, settings, region_of(settings))
    if args.build_only:
        print(f"{database}: {how}")
        return 0
    from tessera.store import upgrade

    engine = store_engine(database, settings)
    upgrade(engine)
    engine.dispose()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    ready, conn, process = run_child(_measure_main, (str(database), args), "preview", 600)
    result = follow(ready, conn, process, args, "preview")
    result["store"] = f"{database.name}, {how}"
    lines, targets = summary(result)
    lines += [
        "targets:",
        *targets,
        f"peak RSS of the measuring process: {result['rss_mib']:,.0f} MiB",
    ]
    print()
    print("\n".join(lines))
    if result.get("profile_summary"):
        print()
        print(result["profile_summary"])
    if args.record:
        cap = "all" if args.events_per_person is None else str(args.events_per_person)
        record(
            f"preview {info['date']}",
            lines,
            info=info,
            note="One run of `.venv/bin/python benchmarks/preview.py --record` (see its "
            "docstring). Targets: a draft's preview <= 2 s at 1M profiles; page queries p95 "
            "<= 300 ms.",
            run=f"{args.profiles:,} profiles ({cap} events a person, seed {args.seed}), "
            f"{args.repeat} previews a draft, {args.page_calls} calls a page query"
            + (", profiled with py-spy" if args.profile else ""),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
