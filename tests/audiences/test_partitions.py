"""The derived stage in partitions by profile (`processor_partitions`): each partition
derives its profiles' events in log order from its own position; a merge across
partitions waits for the absorbed profile's partition; workers share the partitions and
skip the ones another holds; the layout can change at any time. Whatever the order the
partitions run in, the result equals a rebuild."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from tessera.processor import (
    DERIVED,
    MAIN,
    Pipeline,
    ensure_layout,
    lag,
    reset_derived_state,
    run_maintenance,
    run_partition_due,
    run_partition_once,
    unmerge,
)
from tessera.processor.models import partition_name, partition_of, processor_state
from tessera.profiles.models import event_profiles
from tessera.profiles.views import computed_trait_values_of
from tests.audiences.test_derived_stage import run_main, settle_derived
from tests.audiences.test_rebuild_audiences import messages
from tests.audiences.test_stage import T0, Clock, define, derived, make_pipeline, order, settle
from tests.examples import examples
from tests.identity.helpers import ingest, profile_id


def partitioned(clock: Clock, partitions: int) -> Pipeline:
    pipe = make_pipeline(clock)
    pipe.config = replace(pipe.config, derived="separate", partitions=partitions)
    return pipe


def marks(engine: Engine) -> dict[str, int]:
    """Every position row: main, derived, derived.0, …"""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(processor_state.c.name, processor_state.c.position))
        return {name: int(position) for name, position in rows}


def run_partitions(
    engine: Engine, pipe: Pipeline, *, rng: random.Random | None = None, steps: int | None = None
) -> None:
    """Run the partitions (in `rng`'s order, a few events at a time) with their time and
    the stage's maintenance until all are level, or for `steps` rounds."""
    ensure_layout(engine, pipe)
    partitions = list(range(pipe.config.partitions))
    for done in range(2000):
        if steps is not None and done >= steps:
            return
        if rng is not None:
            rng.shuffle(partitions)
        moved = 0
        for k in partitions:
            moved += run_partition_once(engine, pipe, k, limit=rng.randint(1, 4) if rng else 3)
            moved += run_partition_due(engine, pipe, k)
            if steps is not None and rng is not None and rng.random() < 0.5:
                break  # the others fall behind this round
        moved += run_maintenance(engine, pipe)
        if not moved:
            return
    raise AssertionError("the partitions never settled")


def assert_equals_a_rebuild(engine: Engine, clock: Clock) -> None:
    """The derived state now equals what one unpartitioned processor rebuilds."""
    incremental = derived(engine)
    with engine.begin() as conn:
        reset_derived_state(conn)
    rebuilt = make_pipeline(clock)
    ensure_layout(engine, rebuilt)
    settle(engine, rebuilt)
    assert derived(engine) == incremental


def assert_stage_is_the_lowest_partition(engine: Engine) -> None:
    now = marks(engine)
    parts = [at for name, at in now.items() if name.startswith(f"{DERIVED}.")]
    if parts:
        assert now[DERIVED] == min(parts)
    assert now[DERIVED] <= now[MAIN]


@given(
    bursts=st.lists(
        st.tuples(
            st.lists(messages(), min_size=1, max_size=6),
            st.integers(0, 20 * 24),  # hours the clock moves on after the burst
            st.sampled_from([1, 2, 3]),  # partitions (1: the inline mode)
            st.sampled_from([0, 1, 2, 5, None]),  # rounds of the partitions (None: all)
        ),
        min_size=1,
        max_size=5,
    ),
    define_at=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
@settings(
    max_examples=examples(30),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_partitions_in_any_order_and_any_layout_equal_a_rebuild(
    engine: Engine,
    bursts: list[tuple[list[dict[str, Any]], int, int, int | None]],
    define_at: int,
    seed: int,
) -> None:
    note(f"{bursts=} {define_at=} {seed=}")
    with engine.begin() as conn:
        for table in ("audiences", "computed_traits", "merge_blocks"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
        reset_derived_state(conn)
        conn.execute(sa.text("DELETE FROM events"))
    clock = Clock(T0)
    rng = random.Random(seed)
    defined = False
    pipe = make_pipeline(clock)
    for index, (batch, hours, partitions, rounds) in enumerate(bursts):
        if index == define_at:
            define(engine)
            defined = True
        ingest(engine, batch)
        if partitions == 1:
            pipe = make_pipeline(clock)
            ensure_layout(engine, pipe)  # levels the partitions and lays out none
            settle_derived(engine, pipe)
            settle(engine, pipe)
        else:
            pipe = partitioned(clock, partitions)
            run_main(engine, pipe)
            run_partitions(engine, pipe, rng=rng, steps=rounds)
        clock.now += timedelta(hours=hours)
        assert_stage_is_the_lowest_partition(engine)
    if not defined:
        define(engine)
    pipe = partitioned(clock, 2)
    run_main(engine, pipe)
    run_partitions(engine, pipe, rng=rng)
    assert_equals_a_rebuild(engine, clock)


def _two_profiles_then_a_merge(engine: Engine, pipe: Pipeline) -> tuple[str, str, int]:
    """dan's device orders (10), cat orders (25), then an identify ties the device to cat:
    two profiles in different partitions, merged. Returns (survivor, absorbed, merge seq)."""
    define(engine)
    run_partitions(engine, pipe)  # backfill and build the definitions
    ingest(engine, [order("dan", 10, T0, userId=None, anonymousId="d1"), order("cat", 25, T0)])
    identify = {"type": "identify", "userId": "cat", "anonymousId": "d1", "traits": {}}
    ingest(engine, [{**identify, "timestamp": T0.isoformat()}])
    run_main(engine, pipe)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT seq, survivor_id, absorbed_id FROM profile_merges"))
        ((seq, survivor, absorbed),) = list(rows)
    partitions = pipe.config.partitions
    assert partition_of(survivor, partitions) != partition_of(absorbed, partitions)
    return survivor, absorbed, int(seq)


def test_a_merge_across_partitions_waits_for_the_absorbed_profiles_partition(
    engine: Engine,
) -> None:
    clock = Clock(T0 + timedelta(days=1))
    pipe = partitioned(clock, 2)
    ensure_layout(engine, pipe)
    survivor, absorbed, seq = _two_profiles_then_a_merge(engine, pipe)
    mine, theirs = partition_of(survivor, 2), partition_of(absorbed, 2)
    with engine.connect() as conn:
        attributed = dict(
            conn.execute(sa.select(event_profiles.c.seq, event_profiles.c.applied_to)).all()
        )
        owners = set(conn.execute(sa.select(event_profiles.c.profile_id)).scalars())
    # The main stage moved the absorbed profile's events to the survivor, not their
    # attribution as applied.
    assert owners == {survivor}
    assert absorbed in attributed.values()

    # The survivor's partition derives up to the merge, and no further, while the absorbed
    # profile's partition has not passed it.
    run_partition_once(engine, pipe, mine)
    assert marks(engine)[partition_name(mine)] == seq - 1
    assert run_partition_once(engine, pipe, mine) == 0
    assert run_partition_once(engine, pipe, theirs) > 0
    assert run_partition_once(engine, pipe, mine) > 0
    assert marks(engine)[DERIVED] == marks(engine)[MAIN]
    with engine.connect() as conn:
        values = computed_trait_values_of(conn, survivor)
        left = conn.execute(
            sa.text("SELECT count(*) FROM computed_trait_values WHERE profile_id = :p"),
            {"p": absorbed},
        ).scalar_one()
    assert values["spend"]["value"] == 35
    assert values["orders_30d"]["value"] == 2
    assert left == 0
    assert_equals_a_rebuild(engine, clock)


def test_a_merge_after_the_survivors_partition_passed_the_absorbed_profiles_events(
    engine: Engine,
) -> None:
    """The main stage merges after one partition has passed both profiles' orders and
    before the other has: the merge moves the events' current owner, and a partition
    that read owners (not the attribution as applied) would skip or double one order."""
    clock = Clock(T0 + timedelta(days=1))
    pipe = partitioned(clock, 2)
    ensure_layout(engine, pipe)
    define(engine)
    run_partitions(engine, pipe)
    ingest(engine, [order("dan", 10, T0, userId=None, anonymousId="d1"), order("cat", 25, T0)])
    run_main(engine, pipe)
    first = partition_of(profile_id(engine, "anonymous_id:d1"), 2)
    while run_partition_once(engine, pipe, first):
        pass
    assert marks(engine)[partition_name(1 - first)] < marks(engine)[MAIN]
    identify = {"type": "identify", "userId": "cat", "anonymousId": "d1", "traits": {}}
    ingest(engine, [{**identify, "timestamp": T0.isoformat()}])
    run_main(engine, pipe)
    run_partitions(engine, pipe)
    with engine.connect() as conn:
        values = computed_trait_values_of(conn, profile_id(engine, "user_id:cat"))
    assert values["spend"]["value"] == 35
    assert_equals_a_rebuild(engine, clock)


def test_an_unmerge_levels_the_partitions_first(engine: Engine) -> None:
    clock = Clock(T0 + timedelta(days=1))
    pipe = partitioned(clock, 2)
    ensure_layout(engine, pipe)
    survivor, absorbed, _ = _two_profiles_then_a_merge(engine, pipe)
    with engine.begin() as conn:
        merge_id = conn.execute(sa.text("SELECT id FROM profile_merges")).scalar_one()
        unmerge(conn, pipe, profile_id=survivor, merge_id=merge_id, actor="test")
    now = marks(engine)
    assert now[partition_name(0)] == now[partition_name(1)] == now[DERIVED] == now[MAIN]
    with engine.connect() as conn:
        spend = {
            computed_trait_values_of(conn, pid)["spend"]["value"] for pid in (survivor, absorbed)
        }
    assert spend == {10, 25}
    assert_equals_a_rebuild(engine, clock)


def test_a_new_layout_levels_the_old_partitions_first(engine: Engine) -> None:
    """Two partitions far apart, then three: nothing is derived twice or skipped."""
    clock = Clock(T0 + timedelta(days=1))
    two = partitioned(clock, 2)
    ensure_layout(engine, two)
    define(engine)
    run_partitions(engine, two)
    people = [f"p{n}" for n in range(12)]
    for round_ in range(3):
        ingest(engine, [order(p, 10, T0 - timedelta(hours=round_)) for p in people])
    run_main(engine, two)
    run_partition_once(engine, two, 0, limit=5)
    assert marks(engine)[partition_name(1)] == 0
    three = partitioned(clock, 3)
    assert ensure_layout(engine, three)
    now = marks(engine)
    assert {now[partition_name(k)] for k in range(3)} == {now[DERIVED]} == {10}  # 5 x 2
    assert partition_name(3) not in now
    run_partitions(engine, three)
    with engine.connect() as conn:
        spend = {
            computed_trait_values_of(conn, profile_id(engine, f"user_id:{p}"))["spend"]["value"]
            for p in people
        }
    assert spend == {30}


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_a_partition_another_worker_holds_is_skipped_not_waited_for(engine: Engine) -> None:
    clock = Clock(T0 + timedelta(days=1))
    pipe = partitioned(clock, 2)
    ensure_layout(engine, pipe)
    define(engine)
    run_partitions(engine, pipe)
    ingest(engine, [order(f"p{n}", 10, T0) for n in range(10)])
    run_main(engine, pipe)
    with engine.connect() as holder:
        holder.execute(
            sa.select(processor_state.c.name)
            .where(processor_state.c.name == partition_name(0))
            .with_for_update()
        )
        started = time.monotonic()
        assert run_partition_once(engine, pipe, 0) == 0
        assert run_partition_once(engine, pipe, 1) > 0
        assert time.monotonic() - started < 20  # not blocked on the held row
        holder.rollback()
    assert run_partition_once(engine, pipe, 0) > 0
    assert marks(engine)[DERIVED] == marks(engine)[MAIN]


def _worker(store_url: str, stage: str, log: Path) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "TESSERA_DATABASE_URL": store_url,
        "TESSERA_PROCESSOR_DERIVED": "separate",
        "TESSERA_PROCESSOR_PARTITIONS": "3",
        "TESSERA_PROCESSOR_POLL_SECONDS": "0.05",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tessera", "worker", "--stage", stage, "--no-delivery"],
        env=environment,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def test_workers_share_the_partitions_and_one_killed_loses_nothing(
    engine: Engine, store_url: str, tmp_path: Path
) -> None:
    """A `--stage main` worker and two `--stage derived` workers on three partitions; one
    derived worker is SIGKILLed mid-way and the other carries on with its partitions:
    every order is counted exactly once, and merges across partitions fold."""
    define(engine)
    people = [f"p{n}" for n in range(40)]
    for round_ in range(5):
        ingest(engine, [order(p, 10, T0 - timedelta(hours=round_)) for p in people])
    # Each person's device ordered before they signed in: merges across partitions.
    ingest(
        engine,
        [order(p, 5, T0 - timedelta(hours=9), userId=None, anonymousId=f"d{p}") for p in people],
    )
    identify = {"type": "identify", "traits": {}, "timestamp": T0.isoformat()}
    ingest(engine, [{**identify, "userId": p, "anonymousId": f"d{p}"} for p in people])
    log = tmp_path / "workers.log"
    main = _worker(store_url, "main", log)
    first = _worker(store_url, "derived", log)
    second = _worker(store_url, "derived", log)
    try:
        deadline = time.monotonic() + 90
        while marks(engine).get(DERIVED, 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        first.kill()
        first.wait()
        ingest(engine, [order(p, 10, T0 - timedelta(hours=6)) for p in people])
        with engine.connect() as conn:
            total = conn.execute(sa.text("SELECT max(seq) FROM events")).scalar_one()
        while time.monotonic() < deadline:
            now = marks(engine)
            if now.get(MAIN) == now.get(DERIVED) == total:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"not level: {marks(engine)}; log: {log.read_text()}")
    finally:
        for process in (main, second):
            process.terminate()
            process.wait(30)
        first.kill()
    now = marks(engine)
    assert {now[partition_name(k)] for k in range(3)} == {total}
    with engine.connect() as conn:
        spend = {
            p: computed_trait_values_of(conn, profile_id(engine, f"user_id:{p}"))["spend"]["value"]
            for p in people
        }
        assert lag(conn, name=DERIVED).events == 0
    assert set(spend.values()) == {65}, spend
