"""The processor: reads the event log in order and moves each event through two stages,
each with its own position in the log:

- **main** (`run_once`, `main_stage`): identity, then profiles (traits, consent,
  accounts), the batch stages capabilities add (`extensions`), and the events and trait
  changes destinations subscribe to;
- **derived** (`run_derived_once`, `run_maintenance`, `derived_stage`; `partitions` when it
  runs in several): computed traits and audiences, the audience changes destinations
  subscribe to, backfills, builds and time's re-evaluations.

Each stage's state and its position commit in one transaction (`claims` holds the
positions), so a crash or an injected failure never leaves an event half applied,
applied twice, or skipped. `Processor` (`runner`) loops over the stages and the worker
jobs in a thread; `replay` resets, rebuilds and unmerges.

With `processor_derived = "inline"` (the default) `run_once` applies both stages in its
transaction while the derived position keeps step with the main one, so one processor
does everything. With `"separate"`, `run_once` applies only the main stage and a second
worker (`tessera worker --stage derived`) follows it, on its own core: the derived stage
reads the events the main stage has attributed (`event_profiles`, `profile_merges`) and
the profiles' current traits. Switching mode is safe at any time: an inline `run_once`
derives only while the positions are equal, and `run_derived_once` catches up first.

One processor applies a stage at a time: the stage's position row is locked for the
transaction (on PostgreSQL extra `tessera worker` processes wait their turn and take over
if one dies). Locks are always taken main first, then the partitions, then derived.
"""

from tessera.processor.claims import LayoutChanged, PositionMoved
from tessera.processor.derived_stage import run_derived_once, run_maintenance
from tessera.processor.extensions import (
    AppliedBatch,
    BatchEvent,
    BatchStage,
    ProfileChanges,
    WorkerJob,
)
from tessera.processor.health import Health, Lag, dropped_counts, health, lag, record_failure
from tessera.processor.main_stage import run_once
from tessera.processor.models import DERIVED, MAIN, STAGES
from tessera.processor.partitions import ensure_layout, run_partition_due, run_partition_once
from tessera.processor.pipeline import Pipeline, ProcessorConfig
from tessera.processor.replay import Unmerged, reset_derived_state, unmerge
from tessera.processor.runner import (
    Processor,
    tune_gc_for_processing,
    wait_until_caught_up,
)

__all__ = [
    "DERIVED",
    "MAIN",
    "STAGES",
    "AppliedBatch",
    "BatchEvent",
    "BatchStage",
    "Health",
    "Lag",
    "LayoutChanged",
    "Pipeline",
    "PositionMoved",
    "Processor",
    "ProcessorConfig",
    "ProfileChanges",
    "Unmerged",
    "WorkerJob",
    "dropped_counts",
    "ensure_layout",
    "health",
    "lag",
    "record_failure",
    "reset_derived_state",
    "run_derived_once",
    "run_maintenance",
    "run_once",
    "run_partition_due",
    "run_partition_once",
    "tune_gc_for_processing",
    "unmerge",
    "wait_until_caught_up",
]
