"""The main stage's step (`run_once`): identity and profiles for the next batch of events,
with the derived stage in the same transaction when it runs inline and level."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tessera.audiences.stage import (
    Resident,
)
from tessera.processor.claims import Claim, confirm, dropped_on_failure, read_claim, set_position
from tessera.processor.events import NO_END, next_events
from tessera.processor.health import count_drops
from tessera.processor.models import (
    DERIVED,
    MAIN,
    processor_state,
)
from tessera.processor.pipeline import Pipeline


def run_once(
    engine: Engine, pipeline: Pipeline, *, name: str = MAIN, limit: int | None = None
) -> int:
    """Apply the next batch of events through the main stage in one transaction, and
    through the derived stage too when it is inline and in step; return how many were
    applied."""
    limit = limit or pipeline.config.batch_events
    resident = pipeline.resident if name == MAIN else None
    with dropped_on_failure(resident):
        applied, derived = _apply_next(engine, pipeline, name=name, limit=limit, resident=resident)
    if resident is not None and derived is not None:
        resident.commit(version=derived.version, position=derived.position)
    return applied


def _apply_next(
    engine: Engine, pipeline: Pipeline, *, name: str, limit: int, resident: Resident | None
) -> tuple[int, Claim | None]:
    """`run_once`'s transaction: the events applied, and the derived position's claim
    when the derived stage went with them (inline and level)."""
    with engine.begin() as conn:
        lock = conn.dialect.name == "postgresql"
        claim = read_claim(conn, name, lock=lock)
        rows = next_events(conn, after=claim.position, upto=NO_END, limit=limit)
        if not rows:
            return 0, None
        derived: Claim | None = None
        if pipeline.config.derived == "inline" and name == MAIN:
            derived = read_claim(conn, DERIVED, lock=lock)
            if derived.position != claim.position or derived.partitions != 1:
                # Behind (it ran separately; `run_derived_once` catches up), or left in
                # partitions (`ensure_layout` levels them first).
                derived = None
        if derived is None:
            resident = None
        elif resident is not None:
            resident.open(version=derived.seen, position=derived.position)

        def before_write() -> None:
            confirm(conn, claim)
            if derived is not None:
                confirm(conn, derived)

        attributed = pipeline.apply_batch(
            conn,
            rows,
            before_write=before_write,
            fan_out=True,
            derive=derived is not None,
            resident=resident,
        )
        missing = sum(1 for _, pid in attributed if pid is None)
        count_drops(conn, pipeline.batch_drops)
        conn.execute(
            sa.update(processor_state)
            .where(processor_state.c.name == name)
            .values(position=rows[-1].seq, unattributed_events=claim.unattributed + missing)
        )
        if derived is not None:
            set_position(conn, DERIVED, rows[-1].seq)
            derived.position = rows[-1].seq
        return len(rows), derived
