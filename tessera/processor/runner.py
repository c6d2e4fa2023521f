"""The background runner: `Processor` loops over the stages this process runs, and the
worker jobs, in a thread until stopped; the collector's tuning for such a process."""

from __future__ import annotations

import functools
import gc
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy.engine import Engine

from tessera.logs import event
from tessera.processor.claims import LayoutChanged, PositionMoved
from tessera.processor.derived_stage import run_derived_once, run_maintenance
from tessera.processor.extensions import WorkerJob
from tessera.processor.health import lag, record_failure
from tessera.processor.main_stage import run_once
from tessera.processor.models import DERIVED, MAIN, STAGES
from tessera.processor.partitions import ensure_layout, run_partition_due, run_partition_once
from tessera.processor.pipeline import Pipeline

log = logging.getLogger(__name__)

# The cyclic collector's thresholds in a process that runs the processor. A batch
# allocates hundreds of thousands of objects that live until its transaction ends; with
# Python's default (700, 10, 10) they outlive a few young collections, are promoted, and
# set off full collections over everything every few batches: ~20% of either stage's CPU
# (benchmarks/RESULTS.md, 2026-11-22). Almost none of them are in cycles, so reference
# counting frees them when the batch ends and a rarer young collection loses nothing.
PROCESSING_GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc_for_processing() -> None:
    """Set up the collector for a process whose work is the processor's loop (`tessera
    worker`): what exists at start lives as long as the process and is frozen out of
    collections, and young collections run at `PROCESSING_GC_THRESHOLDS`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*PROCESSING_GC_THRESHOLDS)


# A worker keeping to its own partitions of the derived stage takes another's over once
# nobody has claimed it for this long (its worker died, or stopped).
TAKEOVER_SECONDS = 2.0


# A worker job that raised waits this long before its next try, doubling up to the second.
JOB_BACKOFF_SECONDS = (1.0, 60.0)


class _JobTurns:
    """Runs the worker jobs in turn. A job that raised backs off on its own, so a broken
    import never stalls the stages or the other jobs."""

    def __init__(self, jobs: Sequence[WorkerJob]) -> None:
        self.jobs = list(jobs)
        self._not_before = [0.0] * len(self.jobs)
        self._backoff = [JOB_BACKOFF_SECONDS[0]] * len(self.jobs)
        self.failures = 0

    def run(self, engine: Engine, now: datetime) -> int:
        """Run each job whose back-off has passed once; return the work they did."""
        done = 0
        for index, job in enumerate(self.jobs):
            if time.monotonic() < self._not_before[index]:
                continue
            try:
                done += job.run(engine, now=now)
            except Exception as exc:
                self.failures += 1
                wait = self._backoff[index]
                self._not_before[index] = time.monotonic() + wait
                self._backoff[index] = min(wait * 2, JOB_BACKOFF_SECONDS[1])
                event(
                    log,
                    logging.ERROR,
                    "processor.job_failed",
                    job=job.name,
                    retry_in_seconds=wait,
                    error=repr(exc)[:500],
                )
            else:
                self._backoff[index] = JOB_BACKOFF_SECONDS[0]
        return done


class Processor:
    """Runs the processor's stages in a background thread until stopped: `run_once` for
    the main stage, `run_derived_once` and `run_maintenance` for the derived one, then the
    worker jobs (`extensions.WorkerJob`); `wake()` says events arrived."""

    def __init__(
        self,
        engine: Engine,
        pipeline: Pipeline,
        *,
        poll_seconds: float = 0.2,
        on_applied: Callable[[], None] | None = None,
        stages: tuple[str, ...] = STAGES,
        partitions: tuple[int, ...] = (),
        jobs: Sequence[WorkerJob] = (),
    ) -> None:
        unknown = set(stages) - set(STAGES)
        if unknown or not stages:
            raise ValueError(f"stages must be some of {STAGES}, not {stages}")
        self._engine = engine
        # Called after every transaction that did something (the delivery worker in the
        # same process then looks at the outbox at once).
        self._on_applied = on_applied
        self._pipeline = pipeline
        self._stages = stages
        # A worker running only the derived stage is not woken by the main stage's
        # commits (another process): it looks more often.
        self._poll = poll_seconds if MAIN in stages else min(poll_seconds, 0.05)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.applied = 0
        self.failures = 0
        # Where this worker starts its round of the derived stage's partitions: workers
        # starting at different ones spread over them from the first round.
        self._first_partition = random.randrange(max(1, pipeline.config.partitions))
        # The derived stage's partitions this worker keeps to (none: any free one); it
        # takes another's only once no worker has claimed it for `TAKEOVER_SECONDS`.
        self._own = set(partitions)
        self._jobs = _JobTurns(jobs)

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="processor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _steps(self) -> list[tuple[str, str, Callable[[], int]]]:
        engine, pipeline = self._engine, self._pipeline
        steps: list[tuple[str, str, Callable[[], int]]] = []
        if MAIN in self._stages:
            steps.append((MAIN, "processor.batch_failed", lambda: run_once(engine, pipeline)))
        partitions = pipeline.config.partitions
        if DERIVED in self._stages and partitions > 1:
            # Every partition in turn: those another worker holds are skipped, so workers
            # share the partitions and one takes over a dead one's at once.
            start = self._first_partition
            for k in [*range(start, partitions), *range(start)]:
                takeover = TAKEOVER_SECONDS if self._own and k not in self._own else None
                batch = functools.partial(
                    run_partition_once, engine, pipeline, k, unless_claimed_within=takeover
                )
                due = functools.partial(run_partition_due, engine, pipeline, k)
                steps.append((DERIVED, "processor.batch_failed", batch))
                steps.append((DERIVED, "processor.maintenance_failed", due))
            steps.append(
                (DERIVED, "processor.maintenance_failed", lambda: run_maintenance(engine, pipeline))
            )
        elif DERIVED in self._stages:
            steps.append(
                (DERIVED, "processor.batch_failed", lambda: run_derived_once(engine, pipeline))
            )
            steps.append(
                (
                    DERIVED,
                    "processor.maintenance_failed",
                    lambda: run_maintenance(engine, pipeline),
                )
            )
        return steps

    def _run(self) -> None:
        backoff = self._poll
        steps = self._steps()
        while not self._stop.is_set():
            done = 0
            failed = False
            for stage, failure, step in steps:
                try:
                    applied = step()
                except LayoutChanged:
                    done += 1  # another layout: this process's setting takes over
                    try:
                        ensure_layout(self._engine, self._pipeline)
                    except Exception as exc:
                        self.failures += 1
                        event(log, logging.ERROR, failure, stage=stage, error=repr(exc)[:500])
                        failed = True
                        break
                    continue
                except PositionMoved:
                    done += 1  # another processor moved on: look again at once
                    continue
                except Exception as exc:
                    self.failures += 1
                    event(log, logging.ERROR, failure, stage=stage, error=repr(exc)[:500])
                    record_failure(self._engine, exc, name=stage)
                    failed = True
                    break
                if stage == MAIN:
                    self.applied += applied
                done += applied
            if failed:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = self._poll
            if self._jobs.jobs:
                done += self._jobs.run(self._engine, self._pipeline.clock())
            if done and self._on_applied is not None:
                self._on_applied()
            if not done:
                self._wake.wait(self._poll)
                self._wake.clear()


def wait_until_caught_up(engine: Engine, *, timeout: float = 30.0) -> None:
    """Block until both stages have applied every event in the log (tests, demo)."""
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            if lag(conn).events == 0 and lag(conn, name=DERIVED).events == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError("the processor did not catch up")
        time.sleep(0.02)
