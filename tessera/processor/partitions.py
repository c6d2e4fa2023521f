"""The derived stage in partitions by profile: each partition's step (`run_partition_once`,
`run_partition_due`), merges across partitions, levelling, and layouts (`ensure_layout`)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tessera.activation import fanout as fanout_stage
from tessera.audiences.catalog import catalog_version
from tessera.audiences.models import evaluation_schedule
from tessera.audiences.stage import (
    DerivedState,
    Resident,
    backfill_step,
    build_step,
    next_due,
    pending_work,
    run_due,
)
from tessera.eventlog.models import events
from tessera.identity.models import profile_merges
from tessera.logs import event
from tessera.processor import derive
from tessera.processor.claims import (
    Claim,
    LayoutChanged,
    PositionMoved,
    confirm,
    dropped_on_failure,
    hold_partitions,
    hold_stage,
    lock_position,
    partition_positions,
    position_of,
    set_position,
    set_stage_position,
    try_partition,
)
from tessera.processor.events import LogRow
from tessera.processor.models import (
    DERIVED,
    MAIN,
    PARTITION_NAMES,
    partition_name,
    partition_of,
    partition_sql,
    processor_state,
)
from tessera.processor.pipeline import Pipeline
from tessera.profiles.models import (
    event_profiles,
)

log = logging.getLogger(__name__)

# -- the derived stage in partitions ------------------------------------------------------
#
# With `partitions` > 1 the derived stage runs in that many partitions by profile
# (`partition_of`), each with its own position row ("derived.0", …) that one worker at a
# time holds. A partition derives the events the main stage attributed to its profiles
# when it applied them (`event_profiles.applied_to`, which merges leave alone), in log
# order, so one profile's events are applied in order, by one worker at a time.
#
# - **Merges across partitions.** A merge at seq `s` is the survivor's partition's to
#   apply: it takes the absorbed profile's state as that profile's partition committed
#   it, so it waits until that partition has passed `s - 1` (it derives up to the merge,
#   commits, and looks again), and holds that partition's row while it absorbs (nothing
#   there can write the absorbed profile meanwhile). Whichever partition waits on
#   another, the one waiting at the smallest seq can always go on, so none waits for ever.
# - **One writer of the change stream at a time.** A partition computes without the
#   stage's row ("derived") and holds it from its flush to its commit, so audience
#   changes commit in seq order, as the activation cursor needs. The stage row's
#   position is the smallest partition's (lag, readiness).
# - **Work over every profile** (a backfill, a build, an unmerge, a rebuild, a new
#   layout) holds every partition's row, then the stage's; a backfill and a new layout
#   first level the partitions (derive the ones behind up to the one furthest ahead).
#
# Lock order: main; partitions (a whole-stage holder takes them all, in name order, and
# waits; a partition takes its own and the ones it absorbs from without waiting); derived.


def derive_partition(
    conn: Connection,
    pipeline: Pipeline,
    claim: Claim,
    *,
    partitions: int,
    head: int,
    limit: int,
    resident: Resident | None,
    held: dict[int, Claim] | None,
) -> DerivedState | None:
    """Derive the next events of `claim`'s partition (no further than `head`, and not
    past a merge whose absorbed profile's partition is behind it); move `claim.position`
    on. `held` collects the other partitions' rows taken for merges (None: the caller
    holds every partition already)."""
    partition = int(claim.name.rsplit(".", 1)[1])
    # The range: about `limit` of the partition's own events (every partition's share of
    # `limit` times as many), read by seq alone; only the partition's own are read whole.
    last = conn.execute(
        sa.select(events.c.seq)
        .where(events.c.seq > claim.position, events.c.seq <= head)
        .order_by(events.c.seq)
        .offset(limit * partitions - 1)
        .limit(1)
    ).scalar()
    end = head if last is None else int(last)
    mine: list[Any] = []
    positions = partition_positions(conn) if held is None else {}
    for merge in conn.execute(
        sa.select(profile_merges.c.seq, profile_merges.c.survivor_id, profile_merges.c.absorbed_id)
        .where(profile_merges.c.seq > claim.position, profile_merges.c.seq <= end)
        .order_by(profile_merges.c.seq, profile_merges.c.id)
    ):
        if partition_of(merge.survivor_id, partitions) != partition:
            continue
        other = partition_of(merge.absorbed_id, partitions)
        if other != partition:
            if held is None:
                passed = positions.get(other, 0)
            else:
                if other not in held:
                    taken = try_partition(conn, other, bump=False)
                    if taken is None:
                        end = merge.seq - 1
                        break
                    held[other] = taken
                passed = held[other].position
            if passed < merge.seq - 1:
                end = merge.seq - 1  # derive up to the merge; absorb once it has passed
                break
        mine.append(merge)
    if end <= claim.position:
        return None
    applied = sa.func.coalesce(event_profiles.c.applied_to, event_profiles.c.profile_id)
    found = conn.execute(
        sa.select(*(events.c[field] for field in LogRow._fields), applied.label("owner"))
        .join(event_profiles, event_profiles.c.seq == events.c.seq)
        .where(
            events.c.seq > claim.position,
            events.c.seq <= end,
            event_profiles.c.profile_id.is_not(None),
            partition_sql(applied, partitions) == partition,
        )
        .order_by(events.c.seq)
    )
    rows: list[LogRow] = []
    owners: dict[int, str] = {}
    for row in found:
        rows.append(LogRow(*row[:-1]))
        owners[row.seq] = row.owner
    derived = (
        derive.derive_partition_rows(
            pipeline, conn, rows, applied=owners, merged=mine, resident=resident
        )
        if rows
        else None
    )
    claim.position = end
    return derived


def commit_partition(
    conn: Connection,
    pipeline: Pipeline,
    claim: Claim,
    held: dict[int, Claim],
    derived: DerivedState | None,
) -> None:
    """Write a partition's batch: confirm its rows, hold the stage's, refuse the batch if
    the layout or a definition changed meanwhile, then flush, fan out, and move the
    partition's position and the stage's."""
    confirm(conn, claim)
    for other in held.values():
        confirm(conn, other, bump=False)
    hold_stage(conn, pipeline.config.partitions)
    if derived is not None:
        if catalog_version(conn) != derived.catalog.version:
            raise PositionMoved("a computed trait or audience changed; the batch is retried")
        derived.flush(conn)
    pipeline.fan_out_changes(conn)
    set_position(conn, claim.name, claim.position)
    set_stage_position(conn)


def level_partitions(conn: Connection, pipeline: Pipeline, partitions: int, target: int) -> None:
    """Derive every partition up to `target`; the caller holds every partition's row."""
    while True:
        behind = {k: at for k, at in partition_positions(conn).items() if at < target}
        if not behind:
            return
        moved = False
        for partition, at in sorted(behind.items()):
            claim = Claim(partition_name(partition), at, 0, 0, locked=True)
            derived = derive_partition(
                conn,
                pipeline,
                claim,
                partitions=partitions,
                head=target,
                limit=pipeline.config.batch_events,
                resident=None,
                held=None,
            )
            if claim.position > at:
                if derived is not None:
                    derived.flush(conn)
                set_position(conn, claim.name, claim.position)
                moved = True
        if not moved:  # cannot happen: the partition waiting at the smallest seq can go on
            raise RuntimeError(f"the derived stage's partitions cannot reach {target}")


def run_partition_once(
    engine: Engine,
    pipeline: Pipeline,
    partition: int,
    *,
    limit: int | None = None,
    unless_claimed_within: float | None = None,
) -> int:
    """Apply one partition of the derived stage to its next batch of events, unless
    another worker holds it; return how many events it moved past (0: level with the
    main stage, held elsewhere, or waiting for another partition to pass a merge).

    With `unless_claimed_within` (seconds), a partition another worker claimed that
    recently is left to it: a worker keeps to its own partitions, whose resident working
    sets it has, and takes another's over only once that one has stopped."""
    limit = limit or pipeline.config.batch_events
    partitions = pipeline.config.partitions
    resident = pipeline.partition_resident(partition)
    name = partition_name(partition)
    with engine.connect() as conn:  # a cheap look first: an idle partition takes no lock
        marks = {
            row.name: row
            for row in conn.execute(
                sa.select(
                    processor_state.c.name,
                    processor_state.c.position,
                    processor_state.c.version,
                    processor_state.c.updated_at,
                ).where(processor_state.c.name.in_([MAIN, name]))
            )
        }
    if name not in marks:
        raise LayoutChanged(f"the derived stage has no partition {partition}")
    head = marks[MAIN].position if MAIN in marks else 0
    if marks[name].position >= head:
        return 0
    if (
        unless_claimed_within is not None
        and pipeline.partition_marks.get(partition) != marks[name].version
    ):
        claimed = marks[name].updated_at
        if claimed.tzinfo is None:
            claimed = claimed.replace(tzinfo=UTC)
        if (datetime.now(UTC) - claimed).total_seconds() < unless_claimed_within:
            return 0
    held: dict[int, Claim] = {}
    with dropped_on_failure(resident), engine.begin() as conn:
        claim = try_partition(conn, partition)
        if claim is None:
            return 0
        before = claim.position
        if resident is not None:
            resident.open(version=claim.seen, position=claim.position)
        head = position_of(conn, MAIN)
        if claim.position < head:
            derived = derive_partition(
                conn,
                pipeline,
                claim,
                partitions=partitions,
                head=head,
                limit=limit,
                resident=resident,
                held=held,
            )
            if claim.position > before:
                commit_partition(conn, pipeline, claim, held, derived)
    if claim.locked:
        pipeline.partition_marks[partition] = claim.version
        if resident is not None:
            resident.commit(version=claim.version, position=claim.position)
    return claim.position - before


def run_partition_due(engine: Engine, pipeline: Pipeline, partition: int) -> int:
    """Time's re-evaluations of one partition's profiles, holding its row like a batch
    (skipped while another worker holds it); returns how many were due."""
    partitions = pipeline.config.partitions
    resident = pipeline.partition_resident(partition)
    now = pipeline.clock()
    mine = partition_sql(evaluation_schedule.c.profile_id, partitions) == partition
    with engine.connect() as conn:
        due = next_due(conn, mine)
    if due is None or due > now:
        return 0
    touched: set[str] = set()
    with dropped_on_failure(resident), engine.begin() as conn:
        claim = try_partition(conn, partition)
        if claim is None:
            return 0
        if resident is not None:
            resident.open(version=claim.seen, position=claim.position)
        confirm(conn, claim)
        hold_stage(conn, partitions)
        done = run_due(conn, pipeline.catalog(conn), now, touched=touched, where=mine)
        pipeline.fan_out_changes(conn)
    if resident is not None:
        resident.commit(version=claim.version, position=claim.position, forget=touched)
    return done


def maintain_partitioned(engine: Engine, pipeline: Pipeline) -> int:
    """`run_maintenance` for a stage in partitions: a backfill or build step holding every
    partition (a backfill levels them first, so it ends where every partition is), and
    audience changes other writers left for the fan-out. Time's re-evaluations are each
    partition's (`run_partition_due`)."""
    partitions = pipeline.config.partitions
    with engine.connect() as conn:
        backfilling, building = pending_work(pipeline.catalog(conn))
        changes = fanout_stage.changes_waiting(conn)
    if not backfilling and not building and not changes:
        return 0
    done = 0
    with engine.begin() as conn:
        if backfilling or building:
            hold_partitions(conn)
        hold_stage(conn, partitions)
        catalog = pipeline.catalog(conn)
        backfilling, building = pending_work(catalog)
        now = pipeline.clock()
        if backfilling:
            top = max(partition_positions(conn).values())
            level_partitions(conn, pipeline, partitions, top)
            set_position(conn, DERIVED, top)
            backfill_step(conn, catalog, backfilling, position=top, now=now)
            done += 1
        elif building:
            build_step(conn, catalog, building[0], now=now)
            done += 1
        pipeline.fan_out_changes(conn)
    return done + (1 if changes else 0)


def ensure_layout(engine: Engine, pipeline: Pipeline) -> bool:
    """Lay the derived stage out in this process's number of partitions, if it runs in
    another: level the partitions it has (none behind the one furthest ahead), then
    replace them by this setting's, all at that position. True when it changed."""
    want = pipeline.config.partitions

    def laid_out(conn: Connection) -> bool:
        stage = conn.execute(
            sa.select(processor_state.c.partitions).where(processor_state.c.name == DERIVED)
        ).scalar()
        have = set(partition_positions(conn))
        return (stage or 1) == want and have == (set(range(want)) if want > 1 else set())

    with engine.connect() as conn:
        if laid_out(conn):
            return False
    with engine.begin() as conn:
        hold_partitions(conn)
        stage = lock_position(conn, DERIVED)
        if laid_out(conn):
            return False
        positions = partition_positions(conn)
        if stage.partitions > 1 and positions:
            position = max(positions.values())
            level_partitions(conn, pipeline, stage.partitions, position)
        else:
            position = stage.position
        conn.execute(processor_state.delete().where(processor_state.c.name.like(PARTITION_NAMES)))
        now = datetime.now(UTC)
        if want > 1:
            conn.execute(
                processor_state.insert(),
                [
                    {
                        "name": partition_name(k),
                        "position": position,
                        "unattributed_events": 0,
                        "version": 0,
                        "updated_at": now,
                    }
                    for k in range(want)
                ],
            )
        conn.execute(
            sa.update(processor_state)
            .where(processor_state.c.name == DERIVED)
            .values(partitions=want, position=position)
        )
        event(log, logging.INFO, "processor.partitions", partitions=want, position=position)
    return True
