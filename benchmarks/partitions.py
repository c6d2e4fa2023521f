"""The derived stage in partitions, on PostgreSQL: extra `tessera worker --stage derived`
processes sharing the stage (TESSERA_PROCESSOR_PARTITIONS), one person's events applied in
order by one of them at a time.

One store is built once: benchmarks/audiences.py's computed traits and 50 audiences are
defined on an empty store, the demo's journeys (--people) are appended to the log, and the
main stage (identity, profiles) is applied in this process. Its database is then copied
(CREATE DATABASE ... TEMPLATE) for each run, so every run derives the same log:

- **1 worker**: one `tessera worker --stage derived` process, the stage unpartitioned;
- **2 workers**: two such processes on TESSERA_PROCESSOR_PARTITIONS=2, one keeping to
  each partition (`--partition 0`, `--partition 1`).

Each run is timed from the workers' start until the derived position reaches the main one
(their start-up, about a second, is inside it). The runs' memberships and computed values
must be equal. Prints events/s and the ratio of the two; `--record` appends them to
benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/partitions.py --people 6000 --record

The PostgreSQL server is TESSERA_BENCH_POSTGRES_URL's (default the local one, trust auth).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BASE = "tessera_bench_partitions"


def _admin(url: str) -> Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT")


def _recreate(admin: Engine, name: str, template: str | None = None) -> None:
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        suffix = f' TEMPLATE "{template}"' if template else ""
        conn.execute(sa.text(f'CREATE DATABASE "{name}"{suffix}'))


def _url(admin_url: str, name: str) -> str:
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def build(admin_url: str, people: int, seed: int) -> dict[str, Any]:
    """The template store: definitions, the demo's log, the main stage applied."""
    from audiences_definitions import define
    from harness_store import append_dataset

    from tessera.config import Settings
    from tessera.demo import generate
    from tessera.ingest.sources import create_source
    from tessera.processor import Pipeline, run_maintenance, run_once, tune_gc_for_processing
    from tessera.store import create_store_engine, upgrade

    admin = _admin(admin_url)
    _recreate(admin, BASE)
    admin.dispose()
    url = _url(admin_url, BASE)
    engine = create_store_engine(url)
    upgrade(engine)
    settings = Settings(database_url=url, processor_derived="separate")
    pipeline = Pipeline.from_settings(settings)
    with engine.begin() as conn:
        source_id = create_source(conn, name="bench").id
    define(engine)
    while run_maintenance(engine, pipeline):  # backfill and build over nothing: ready
        pass
    dataset = generate(seed=seed, people=people)
    started = time.perf_counter()
    events = append_dataset(engine, dataset, source_id)
    appended = time.perf_counter() - started
    tune_gc_for_processing()
    started = time.perf_counter()
    while run_once(engine, pipeline, limit=2000):
        pass
    main = time.perf_counter() - started
    with engine.connect() as conn:
        merges = conn.execute(sa.text("SELECT count(*) FROM profile_merges")).scalar_one()
        profiles = conn.execute(
            sa.text("SELECT count(*) FROM profiles WHERE merged_into IS NULL")
        ).scalar_one()
    engine.dispose()
    return {
        "events": events,
        "append_s": appended,
        "main_s": main,
        "merges": int(merges),
        "profiles": int(profiles),
    }


def _positions(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT name, position FROM processor_state"))
        return {name: int(position) for name, position in rows}


def _server_cpu() -> float:
    """CPU seconds of every local `postgres` process so far (0 if none is visible)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name.startswith("postgres"):
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def derive(admin_url: str, workers: int, *, timeout: float) -> dict[str, Any]:
    """Copy the template, run `workers` derived workers on as many partitions until level."""
    from tessera.store import create_store_engine
    from tessera.store.secrets import generate_key

    name = f"{BASE}_{workers}"
    admin = _admin(admin_url)
    _recreate(admin, name, template=BASE)
    admin.dispose()
    url = _url(admin_url, name)
    engine = create_store_engine(url)
    head = _positions(engine)["main"]
    environment = {
        **os.environ,
        "TESSERA_DATABASE_URL": url,
        "TESSERA_PROCESSOR_DERIVED": "separate",
        "TESSERA_PROCESSOR_PARTITIONS": str(workers),
        "TESSERA_PROCESSOR_POLL_SECONDS": "0.05",
        "TESSERA_LOG_LEVEL": "warning",
        # A PostgreSQL store's workers refuse to start without a key for stored secrets.
        "TESSERA_SECRET_KEY": os.environ.get("TESSERA_SECRET_KEY") or generate_key(),
    }
    command = [sys.executable, "-m", "tessera", "worker", "--stage", "derived", "--no-delivery"]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server = _server_cpu()
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [*command, *(["--partition", str(k)] if workers > 1 else [])],
            env=environment,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        for k in range(workers)
    ]
    try:
        while True:
            if _positions(engine).get("derived", 0) >= head:
                break
            if time.perf_counter() - started > timeout:
                raise SystemExit(f"{workers} workers did not level in {timeout:g} s")
            if any(process.poll() is not None for process in processes):
                raise SystemExit(f"a derived worker exited: {[p.returncode for p in processes]}")
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        server = _server_cpu() - server  # before the workers' backends exit
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    with engine.connect() as conn:
        members = set(conn.execute(sa.text("SELECT audience_id, profile_id FROM audience_members")))
        values = set(
            conn.execute(sa.text("SELECT profile_id, name, value FROM computed_trait_values"))
        )
    engine.dispose()
    return {
        "seconds": elapsed,
        "rate": head / elapsed,
        "workers_cpu": workers_cpu,
        "server_cpu": server,
        "members": members,
        "values": values,
    }


def summary(built: dict[str, Any], runs: dict[int, dict[str, Any]]) -> list[str]:
    one, two = runs[1], runs[2]
    differences = len(one["members"] ^ two["members"]) + len(one["values"] ^ two["values"])
    return [
        f"store: {built['events']:,} events, {built['profiles']:,} profiles, "
        f"{built['merges']:,} merges; main stage applied in {built['main_s']:.1f} s "
        f"({built['events'] / built['main_s']:,.0f} events/s)",
        f"derived stage, 1 worker (unpartitioned):      {one['seconds']:6.1f} s  "
        f"{one['rate']:8,.0f} events/s  CPU: workers {one['workers_cpu']:.1f} s, "
        f"PostgreSQL {one['server_cpu']:.1f} s",
        f"derived stage, 2 workers on 2 partitions:     {two['seconds']:6.1f} s  "
        f"{two['rate']:8,.0f} events/s  CPU: workers {two['workers_cpu']:.1f} s, "
        f"PostgreSQL {two['server_cpu']:.1f} s",
        f"ratio 2 workers / 1 worker: {two['rate'] / one['rate']:.2f}x (2 cores)",
        f"memberships {len(one['members']):,}, computed values {len(one['values']):,}; "
        f"differences between the runs: {differences} " + ("PASS" if differences == 0 else "FAIL"),
    ]


def record_run(lines: list[str], args: argparse.Namespace) -> None:
    from harness import machine, record

    info = machine()
    record(
        f"partitions {info['date']}",
        lines,
        info=info,
        machine_suffix=", PostgreSQL",
        settings=False,
        run=f"{args.people:,} demo people (seed {args.seed})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--record", action="store_true", help="append to RESULTS.md")
    args = parser.parse_args(argv)
    admin_url = os.environ.get("TESSERA_BENCH_POSTGRES_URL", DEFAULT_URL)
    print(f"building the store ({args.people:,} demo people) ...", flush=True)
    built = build(admin_url, args.people, args.seed)
    runs: dict[int, dict[str, Any]] = {}
    for workers in (1, 2):
        print(f"deriving with {workers} worker(s) ...", flush=True)
        runs[workers] = derive(admin_url, workers, timeout=args.timeout)
    lines = summary(built, runs)
    print("\n".join(lines))
    if args.record:
        record_run(lines, args)
    admin = _admin(admin_url)
    for name in (BASE, f"{BASE}_1", f"{BASE}_2"):
        _recreate(admin, name)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
    return 0 if "FAIL" not in lines[-1] else 1


if __name__ == "__main__":
    raise SystemExit(main())
