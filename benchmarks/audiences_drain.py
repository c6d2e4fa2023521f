"""The audience benchmark's drains: a store processed by `run_once` + `run_maintenance` in a
spawned process (instrumented, or with the stages separate), backfill + build, and the
memberships and computed values to compare."""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import sqlite3
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiences_definitions import define, make_pipeline
from harness import (
    own_cores,
    own_cpu,
    pct,
    rss_mib,
)
from harness_profile import finish_spy, start_spy, write_summary
from harness_server import child_main, receive, run_child, stop_child
from harness_store import (
    settings as default_settings,
)
from harness_store import (
    store_engine,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from tessera.processor import Pipeline


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


def _drain_main(database: str, instrument: bool, conn: Connection) -> None:  # noqa: PLR0915
    def work(conn: Connection) -> dict[str, Any]:  # noqa: PLR0915
        from tessera.audiences.stage import DerivedState
        from tessera.processor import lag, run_maintenance, run_once, tune_gc_for_processing

        settings = default_settings()
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
        before = own_cpu()
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
        cores, others = own_cores(before, elapsed)
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
            "rss_mib": rss_mib(),
        }

    child_main(work, conn)


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

        settings = default_settings().model_copy(update={"processor_derived": "separate"})
        engine = store_engine(Path(database), settings)
        pipeline = make_pipeline(settings)
        with engine.connect() as db:
            total = db.exec_driver_sql("SELECT max(seq) FROM events").scalar_one()
        tune_gc_for_processing()  # as `tessera worker` does
        conn.send(("ready", {"pid": os.getpid()}))
        conn.recv()
        before = own_cpu()
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
        cores, others = own_cores(before, elapsed)
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
            "rss_mib": rss_mib(),
        }

    child_main(work, conn)


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


def rebuild_main(database: str, conn: Connection) -> None:
    """A's definitions created after its drain, then backfilled and built for real."""

    def work(conn: Connection) -> dict[str, Any]:
        from tessera.processor import tune_gc_for_processing

        settings = default_settings()
        engine = store_engine(Path(database), settings)
        pipeline = make_pipeline(settings)
        tune_gc_for_processing()  # as `tessera worker` does
        conn.send(("ready", {"pid": os.getpid()}))
        conn.recv()
        started = time.perf_counter()
        define(engine)
        defined = time.perf_counter() - started
        before = own_cpu()
        t = time.perf_counter()
        result = maintain(engine, pipeline)
        elapsed = time.perf_counter() - t
        cores, others = own_cores(before, elapsed)
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
            rss_mib=rss_mib(),
        )
        return result

    child_main(work, conn)


def drain(
    database: Path, *, instrument: bool, args: argparse.Namespace, name: str
) -> dict[str, Any]:
    ready, conn, process = run_child(_drain_main, (str(database), instrument), name, 300)
    return follow(ready, conn, process, args, name)


def follow(
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
    seconds = time.perf_counter() - started
    text = write_summary(output, seconds, args.profile_rate, ("benchmarks/audiences",))
    if text is not None:
        result["profile_summary"] = text
    return result
