"""The derived stage's resident working set (`Resident`): kept between batches, used, and
dropped whenever anything else wrote derived state, on both backends. Each scenario ends
equal to a rebuild, and to the same run with nothing kept."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tessera.audiences import service
from tessera.audiences.stage import DerivedState
from tessera.processor import Pipeline, reset_derived_state, run_maintenance, run_once
from tessera.profiles.views import computed_trait_values_of
from tests.audiences.test_derived_stage import run_main, separate, settle_derived
from tests.audiences.test_stage import T0, Clock, define, derived, make_pipeline, order, settle
from tests.identity.helpers import ingest, profile_id


def spend(engine: Engine, user: str) -> float:
    with engine.connect() as conn:
        value = computed_trait_values_of(conn, profile_id(engine, f"user_id:{user}"))
    return float(value["spend"]["value"])


def ann_kept(engine: Engine, clock: Clock) -> Pipeline:
    """A separate pipeline whose derived stage applied one of ann's orders and kept her."""
    pipe = separate(clock)
    define(engine)
    settle(engine, pipe)
    ingest(engine, [order("ann", 10, T0)])
    run_main(engine, pipe)
    settle_derived(engine, pipe)
    assert pipe.resident is not None and len(pipe.resident) == 1
    return pipe


def rebuilt(engine: Engine, clock: Clock) -> dict[str, list[tuple[object, ...]]]:
    with engine.begin() as conn:
        reset_derived_state(conn)
    settle(engine, make_pipeline(clock))
    return derived(engine)


@pytest.mark.parametrize("mode", ["inline", "separate"])
def test_kept_profiles_are_lent_to_the_next_batch(engine: Engine, mode: str) -> None:
    clock = Clock(T0 + timedelta(days=1))
    pipe = separate(clock) if mode == "separate" else make_pipeline(clock)
    define(engine)
    settle(engine, pipe)
    for total in (10, 20, 30):
        ingest(engine, [order("ann", total, T0), order("bob", total, T0)])
        run_main(engine, pipe)
        settle_derived(engine, pipe)
    assert pipe.resident is not None
    assert pipe.resident.hits >= 4  # ann and bob, lent to the second and third batches
    assert spend(engine, "ann") == 60
    assert derived(engine) == rebuilt(engine, clock)


def test_nothing_kept_gives_the_same_result(engine: Engine) -> None:
    clock = Clock(T0 + timedelta(days=1))
    define(engine)
    events = [order(user, total, T0 + timedelta(hours=total)) for total in range(1, 9)
              for user in ("ann", "bob", "cat")]  # fmt: skip
    kept = separate(clock)
    for start in range(0, len(events), 5):
        ingest(engine, events[start : start + 5])
        run_main(engine, kept)
        settle_derived(engine, kept)
    with_resident = derived(engine)
    with engine.begin() as conn:
        reset_derived_state(conn)
    unkept = separate(clock)
    unkept.resident = None  # what `TESSERA_PROCESSOR_RESIDENT_PROFILES=0` builds
    settle(engine, unkept)
    settle_derived(engine, unkept)
    assert derived(engine) == with_resident


def test_another_processor_writing_drops_what_was_kept(engine: Engine) -> None:
    """A separate derived stage keeps ann; another process's inline processor then counts
    two more of ann's orders. What the first kept is stale: it must load ann again."""
    clock = Clock(T0 + timedelta(days=1))
    first = ann_kept(engine, clock)
    other = make_pipeline(clock)  # inline, level: derives in its own transaction
    ingest(engine, [order("ann", 20, T0), order("ann", 30, T0)])
    settle(engine, other)
    assert spend(engine, "ann") == 60
    ingest(engine, [order("ann", 40, T0)])
    run_main(engine, first)
    settle_derived(engine, first)
    assert spend(engine, "ann") == 100  # 50 had it used what it kept
    assert derived(engine) == rebuilt(engine, clock)


def test_deleting_an_audience_drops_what_was_kept(engine: Engine) -> None:
    clock = Clock(T0 + timedelta(days=1))
    pipe = separate(clock)
    ids = define(engine)
    settle(engine, pipe)
    ingest(engine, [order("ann", 10, T0), order("ann", 20, T0)])
    run_main(engine, pipe)
    settle_derived(engine, pipe)
    with engine.begin() as conn:
        service.delete_audience(conn, audience_id=ids["vip"])
    ingest(engine, [order("ann", 30, T0)])
    run_main(engine, pipe)
    settle_derived(engine, pipe)
    assert derived(engine) == rebuilt(engine, clock)


def test_time_re_evaluates_what_was_kept(engine: Engine) -> None:
    """Maintenance re-evaluates ann when her orders leave the 30-day window: the batch
    after it must start from that, not from what the stage kept before."""
    clock = Clock(T0 + timedelta(hours=1))
    pipe = separate(clock)
    ids = define(engine)
    settle(engine, pipe)
    ingest(engine, [order("ann", 10, T0), order("ann", 20, T0)])
    run_main(engine, pipe)
    settle_derived(engine, pipe)
    ann = profile_id(engine, "user_id:ann")
    with engine.connect() as conn:
        assert ann in {m["profile_id"] for m in service.list_members(
            conn, audience_id=ids["repeat"], cursor=None, limit=10)[0]}  # fmt: skip
    clock.now = T0 + timedelta(days=31)
    assert run_maintenance(engine, pipe)  # the window passed: ann leaves, lapsed enters
    ingest(engine, [order("ann", 5, T0 + timedelta(days=31))])
    run_main(engine, pipe)
    settle_derived(engine, pipe)
    with engine.connect() as conn:
        values = computed_trait_values_of(conn, ann)
    assert values["orders_30d"]["value"] == 1
    assert derived(engine) == rebuilt(engine, clock)


def test_a_failed_batch_drops_what_was_kept(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(T0 + timedelta(days=1))
    pipe = ann_kept(engine, clock)
    assert pipe.resident is not None
    ingest(engine, [order("ann", 20, T0)])
    run_main(engine, pipe)
    flush = DerivedState.flush

    def failing(self: DerivedState, conn: sa.Connection) -> None:
        flush(self, conn)  # ann's states were changed in memory, then the batch fails
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(DerivedState, "flush", failing)
    with pytest.raises(RuntimeError):
        settle_derived(engine, pipe)
    assert len(pipe.resident) == 0
    monkeypatch.setattr(DerivedState, "flush", flush)
    settle_derived(engine, pipe)
    assert spend(engine, "ann") == 30  # not 50: the failed batch's changes are gone
    assert derived(engine) == rebuilt(engine, clock)


def test_the_resident_is_bounded(engine: Engine) -> None:
    clock = Clock(T0 + timedelta(days=1))
    pipe: Pipeline = separate(clock)
    assert pipe.resident is not None
    pipe.resident.capacity = 2
    define(engine)
    settle(engine, pipe)
    ingest(engine, [order(user, 10, T0) for user in ("ann", "bob", "cat", "dan")])
    run_main(engine, pipe)
    settle_derived(engine, pipe)
    assert len(pipe.resident) == 2
    ingest(engine, [order(user, 10, T0) for user in ("ann", "bob", "cat", "dan")])
    run_once(engine, pipe)
    settle_derived(engine, pipe)
    assert spend(engine, "dan") == 20
    assert derived(engine) == rebuilt(engine, clock)
