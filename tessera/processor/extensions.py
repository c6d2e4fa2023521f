"""The two ways a capability adds work to the processor without editing its loop: a batch
stage, which derives state from every batch the main stage applies, and a worker job,
which runs on every turn of a worker's loop.

Both are plugins: a factory `(settings) -> BatchStage | WorkerJob` registered in the
entry-point group `tessera.batch_stages` or `tessera.worker_jobs` (Tessera's own are
ordinary entries in its `pyproject.toml`), or passed to `Pipeline(stages=...)` and
`Processor(jobs=...)` directly (tests, embedding).

**A batch stage** (orders and purchase history, loyalty ledgers: state that derives from
events per person) is called once per batch, in the batch's transaction, after identity
and profiles are written and before the position moves. So what it writes commits with
the events it reflects: a failed batch rolls it back, and it sees each event exactly
once. It must be re-derivable: `tessera rebuild` empties its `tables` and replays the log
through it, and an unmerge deletes the cluster's rows from them and replays the
cluster's events, so each table keys its rows by a `profile_id` column. A table without
one tallies the whole log rather than people (the schema catalog): rebuild empties it too,
an unmerge leaves it alone, and the stage skips the events of a batch marked `replay`
(it has counted them already). It must not send anything itself (a rebuild would send it
again); what others should hear of goes to the log or the outbox as the rest of the
processor does.

**A worker job** (imports, syncs, workflow timers, SLA timers) runs on each turn of the
loop of every worker that runs the main stage (`tessera worker`, `serve`'s child), after
the stages. It claims its own work (a lease, `FOR UPDATE SKIP LOCKED`), since several
workers may run it at once on PostgreSQL, does a bounded step, and returns how much it did
(0: nothing waits), so an idle loop sleeps and a busy one comes straight back. A job that
raises is logged and retried after a back-off of its own; the stages go on meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tessera.errors import ConfigurationError

if TYPE_CHECKING:
    from tessera.config import Settings

log = logging.getLogger(__name__)

STAGE_GROUP = "tessera.batch_stages"
JOB_GROUP = "tessera.worker_jobs"


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """One event of an applied batch, as a batch stage sees it."""

    seq: int
    message_id: str
    source_id: int
    type: str
    name: str | None  # a track's event name, a page's or screen's name
    timestamp: datetime
    received_at: datetime
    payload: dict[str, Any]
    # The profile the event belongs to once the whole batch is applied (a merge later in
    # the batch moves it to the survivor); None for an event no identifier attributed.
    profile_id: str | None


@dataclass(frozen=True, slots=True)
class AppliedBatch:
    """What the main stage applied in this transaction."""

    events: list[BatchEvent]
    # (survivor, absorbed) in log order; the survivor as it is at the batch's end. A
    # stage moves the absorbed profile's rows to the survivor.
    merges: list[tuple[str, str]] = field(default_factory=list)
    now: datetime | None = None  # the pipeline's clock (tests fix it)
    # An unmerge re-applying events that were applied before: per-profile tables were
    # emptied for them, tallies of the whole log were not.
    replay: bool = False


class BatchStage(Protocol):
    """Derives state of its own from every batch, in the batch's transaction."""

    name: str
    # The tables it derives. Rebuild empties them all before it replays the log through
    # `apply`; an unmerge deletes the cluster's rows from those with a `profile_id` column
    # and leaves the others (tallies of the whole log) alone.
    tables: Sequence[sa.Table]

    def apply(self, conn: Connection, batch: AppliedBatch) -> None:
        """Write what `batch` changes; raising rolls back the whole batch."""
        ...


class WorkerJob(Protocol):
    """A bounded step of background work, run on every turn of a worker's loop."""

    name: str

    def run(self, engine: Engine, *, now: datetime) -> int:
        """Do one step in transactions of its own; return how much was done (0: idle)."""
        ...


def _load(group: str, settings: Settings) -> list[Any]:
    found = []
    for entry in sorted(entry_points(group=group), key=lambda e: e.name):
        factory: Callable[[Settings], Any] = entry.load()
        try:
            found.append(factory(settings))
        except ConfigurationError:
            raise
        except Exception as exc:
            raise ConfigurationError(
                f"the {group} plugin {entry.name!r} ({entry.value}) failed to start: {exc!r}"
            ) from exc
    return found


def batch_stages(settings: Settings) -> list[BatchStage]:
    """The batch stages registered in `tessera.batch_stages`, in name order."""
    return _load(STAGE_GROUP, settings)


def worker_jobs(settings: Settings) -> list[WorkerJob]:
    """The worker jobs registered in `tessera.worker_jobs`, in name order."""
    return _load(JOB_GROUP, settings)


def forget_profiles(conn: Connection, stages: Sequence[BatchStage], cluster: list[str]) -> None:
    """Delete the stages' rows of `cluster`'s profiles (an unmerge replays them); tables
    without a `profile_id` tally the whole log and keep their rows."""
    for stage in stages:
        for table in stage.tables:
            if "profile_id" in table.c:
                conn.execute(table.delete().where(table.c.profile_id.in_(cluster)))


def forget_everything(conn: Connection, stages: Sequence[BatchStage]) -> None:
    """Empty the stages' tables (a rebuild replays the log through them)."""
    for stage in stages:
        for table in stage.tables:
            conn.execute(table.delete())
