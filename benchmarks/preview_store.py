"""The preview benchmark's 1M-profile store, built once and kept in a cache directory: the
audience benchmark's bulk store (`audiences_store.build_store`), then the definitions a
workspace would already have (named computed traits, a few audiences, so some event
conditions have ready implicit traits), backfilled and built by the real maintenance loop."""

from __future__ import annotations

import argparse
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiences_definitions import NOW, make_pipeline
from audiences_drain import maintain
from audiences_store import build_store
from harness_store import store_engine

if TYPE_CHECKING:
    from tessera.config import Settings

# Bump when what the cached store holds changes (definitions, shape), so an old file is
# not mistaken for the current one.
STORE_VERSION = 1

EXISTING_TRAITS: list[dict[str, Any]] = [
    {"name": "spend", "kind": "sum", "event": {"name": "Order Completed"}, "property": "total"},
    {"name": "orders_30d", "kind": "count", "event": {"name": "Order Completed"},
     "window": {"days": 30}},
    {"name": "views_7d", "kind": "count", "event": {"name": "Product Viewed"},
     "window": {"days": 7}},
]  # fmt: skip

EXISTING_AUDIENCES: list[tuple[str, dict[str, Any]]] = [
    ("repeat buyers", {"computed": "orders_30d", "op": "gte", "value": 2}),
    ("marketing opt-in", {"consent": "marketing"}),
    ("new yorkers", {"trait": "city", "op": "eq", "value": "New York"}),
    ("cart abandoners", {"and": [
        {"event": "Cart Viewed", "performed": True, "window": {"days": 7}},
        {"not": {"event": "Order Completed", "performed": True, "window": {"days": 7}}}]}),
]  # fmt: skip


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tessera-benchmarks"


def store_path(args: argparse.Namespace) -> Path:
    cap = "all" if args.events_per_person is None else str(args.events_per_person)
    name = f"preview-v{STORE_VERSION}-{args.profiles}p-{cap}e-s{args.seed}.db"
    return Path(args.cache_dir) / name


def _defined(database: Path) -> bool:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        try:
            row = db.execute("SELECT count(*) FROM audiences WHERE status = 'ready'").fetchone()
        except sqlite3.Error:
            return False
    return int(row[0]) == len(EXISTING_AUDIENCES)


def _bulk_built(database: Path) -> bool:
    """`build_store` finished (its last write is the processor's positions)."""
    if not database.exists():
        return False
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        try:
            row = db.execute("SELECT count(*) FROM processor_state").fetchone()
        except sqlite3.Error:
            return False
    return int(row[0]) > 0


def define_existing(database: Path, settings: Settings) -> dict[str, Any]:
    """Create the existing definitions through the service and run maintenance until they
    are ready, on the benchmark's fixed clock."""
    from tessera.audiences import service
    from tessera.store import upgrade

    engine = store_engine(database, settings)
    upgrade(engine)  # a bulk store kept from an older revision
    try:
        with engine.begin() as conn:
            for document in EXISTING_TRAITS:
                service.create_computed_trait(conn, document=document)
            for name, document in EXISTING_AUDIENCES:
                service.create_audience(
                    conn, name=name, description="benchmarks/preview.py", document=document,
                    actor=None,
                )  # fmt: skip
        return maintain(engine, make_pipeline(settings))
    finally:
        engine.dispose()


def _undefine(database: Path) -> None:
    """Forget definitions (and what they derived) a stopped run left behind."""
    with closing(sqlite3.connect(database)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        for table in (
            "audiences", "computed_traits", "computed_trait_values", "audience_members",
            "audience_history", "audience_changes", "evaluation_schedule", "audience_sizes",
        ):  # fmt: skip
            if table in tables:
                db.execute(f"DELETE FROM {table}")
        db.commit()


def ensure_store(args: argparse.Namespace, settings: Settings, region: str) -> tuple[Path, str]:
    """The cached store (built and defined when missing); its path and how it was had."""
    database = store_path(args)
    partial = database.with_suffix(".building.db")
    if database.exists() and _defined(database):
        return database, "cached"
    database.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if _bulk_built(partial):  # a run stopped while defining: the bulk part is kept
        _undefine(partial)
        print(f"resuming {partial}: bulk-built before; defining the definitions ...", flush=True)
    else:
        for stale in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
            stale.unlink(missing_ok=True)
        cap = "all" if args.events_per_person is None else f"at most {args.events_per_person}"
        print(f"building the store: {args.profiles:,} profiles, {cap} events each, into "
              f"{database} (kept for the next runs) ...", flush=True)  # fmt: skip
        built = build_store(partial, args=args, settings=settings, region=region)
        print(f"  bulk-built in {built['build_s']:.0f} s: {built['events']:,} events, "
              f"{built['bytes'] / 2**30:.1f} GiB; defining {len(EXISTING_TRAITS)} computed "
              f"traits and {len(EXISTING_AUDIENCES)} audiences (backfill + builds at "
              f"{NOW:%Y-%m-%d %H:%M}) ...", flush=True)  # fmt: skip
    steps = define_existing(partial, settings)
    print(
        f"  backfill {steps['backfill_s']:.0f} s, builds {steps['build_s']:.0f} s; "
        f"{time.perf_counter() - started:.0f} s in all",
        flush=True,
    )
    with closing(sqlite3.connect(partial)) as db:  # everything into the main file
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for suffix in ("-wal", "-shm"):
        Path(f"{partial}{suffix}").unlink(missing_ok=True)
    partial.rename(database)
    return database, f"built in {time.perf_counter() - started:.0f} s"
