"""The derived stage's steps when it runs separately (`run_derived_once`), and its
maintenance (`run_maintenance`): backfills, builds, and time's re-evaluations."""

from __future__ import annotations

from sqlalchemy.engine import Connection, Engine

from tessera.activation import fanout as fanout_stage
from tessera.audiences.stage import (
    Resident,
    backfill_step,
    build_step,
    next_due,
    pending_work,
    run_due,
)
from tessera.processor import derive
from tessera.processor.claims import (
    Claim,
    LayoutChanged,
    confirm,
    dropped_on_failure,
    hold_partitions,
    lock_position,
    position_of,
    read_claim,
    set_position,
)
from tessera.processor.events import next_events
from tessera.processor.models import (
    DERIVED,
    MAIN,
)
from tessera.processor.partitions import level_partitions, maintain_partitioned
from tessera.processor.pipeline import Pipeline


def run_derived_once(engine: Engine, pipeline: Pipeline, *, limit: int | None = None) -> int:
    """Apply the derived stage (computed traits, audiences, audience changes for
    destinations) to the next batch of events the main stage has applied; return how
    many events it moved past (0: it is level with the main stage)."""
    limit = limit or pipeline.config.batch_events
    resident = pipeline.resident
    with dropped_on_failure(resident), engine.begin() as conn:
        claim = read_claim(conn, DERIVED, lock=conn.dialect.name == "postgresql")
        if claim.partitions != 1:
            raise LayoutChanged("the derived stage runs in partitions; levelling them")
        before = claim.position
        if resident is not None:
            resident.open(version=claim.seen, position=claim.position)
        head = position_of(conn, MAIN)
        if claim.position < head:
            derive_range(conn, pipeline, claim, head=head, limit=limit, resident=resident)
    if resident is not None and claim.locked:  # PostgreSQL locks (and bumps) even when level
        resident.commit(version=claim.version, position=claim.position)
    return claim.position - before


def derive_range(
    conn: Connection,
    pipeline: Pipeline,
    claim: Claim,
    *,
    head: int,
    limit: int,
    resident: Resident | None = None,
) -> None:
    """Derive up to `limit` events after `claim`'s position (no further than `head`),
    commit nothing, and move `claim.position` on (the caller's transaction holds it)."""
    rows = next_events(conn, after=claim.position, upto=head, limit=limit)
    derived = derive.derive_rows(pipeline, conn, rows, resident) if rows else None
    confirm(conn, claim)
    if derived is not None:
        derived.flush(conn)
    pipeline.fan_out_changes(conn)
    # No rows: the events up to `head` are gone (retention), nothing is left to derive.
    claim.position = rows[-1].seq if len(rows) == limit else head
    set_position(conn, DERIVED, claim.position)


def catch_up_derived(conn: Connection, pipeline: Pipeline) -> int:
    """In the caller's transaction, which holds the main position: hold the derived one
    (and its partitions') and derive every event the main stage has applied (an unmerge
    needs both stages level before it re-derives a cluster). Returns the events derived."""
    head = position_of(conn, MAIN)
    hold_partitions(conn)
    claim = lock_position(conn, DERIVED)
    if claim.partitions > 1:
        level_partitions(conn, pipeline, claim.partitions, head)
        set_position(conn, DERIVED, head)
        return head - claim.position
    derived = 0
    while claim.position < head:
        before = claim.position
        derive_range(conn, pipeline, claim, head=head, limit=pipeline.config.batch_events)
        derived += claim.position - before
    return derived


def run_maintenance(engine: Engine, pipeline: Pipeline) -> int:
    """One step of the work that is not a batch of events, holding the derived position
    like a batch: a chunk of a computed trait's backfill (up to that position), or of an
    audience's build, and the re-evaluations time has made due. Returns how much was done
    (0: nothing waits).

    The stage's resident working set stays right across it: a backfill or a build drops
    it, and time's re-evaluations drop the profiles they touched."""
    if pipeline.config.partitions > 1:
        return maintain_partitioned(engine, pipeline)
    resident = pipeline.resident
    touched: set[str] = set()
    with dropped_on_failure(resident), engine.begin() as conn:
        claim = read_claim(conn, DERIVED, lock=conn.dialect.name == "postgresql")
        if claim.partitions != 1:
            raise LayoutChanged("the derived stage runs in partitions; levelling them")
        if resident is not None:
            resident.open(version=claim.seen, position=claim.position)
        done, stepped = _maintain(conn, pipeline, claim, touched)
    if resident is not None and claim.locked:
        if stepped:
            resident.clear()
        else:
            resident.commit(version=claim.version, position=claim.position, forget=touched)
    return done


def _maintain(
    conn: Connection, pipeline: Pipeline, claim: Claim, touched: set[str]
) -> tuple[int, bool]:
    """`run_maintenance`'s transaction: the work done, and whether it took a backfill or
    build step (which change profiles without listing them); time's re-evaluations add
    the profiles they touched to `touched`."""
    catalog = pipeline.catalog(conn)
    now = pipeline.clock()
    backfilling, building = pending_work(catalog)
    due = next_due(conn)
    changes = fanout_stage.changes_waiting(conn)
    if not backfilling and not building and (due is None or due > now) and not changes:
        return 0, False
    confirm(conn, claim)
    done = 0
    if backfilling:
        backfill_step(conn, catalog, backfilling, position=claim.position, now=now)
        done += 1
    elif building:  # in dependency order; its computed traits are ready by now
        build_step(conn, catalog, building[0], now=now)
        done += 1
    # Reloaded: a backfill made traits ready and a build moved its cursor, and the
    # re-evaluations below must see a building audience as live for the profiles the
    # build has passed (`AudienceEntry.live_for`).
    stepped = done > 0
    done += run_due(conn, pipeline.catalog(conn), now, touched=touched)
    pipeline.fan_out_changes(conn)
    return done + (1 if changes else 0), stepped
