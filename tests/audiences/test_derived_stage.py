"""The derived stage run apart from the main one (`processor_derived = "separate"`): it
follows the main stage at any distance, the two modes can be switched at any time, an
unmerge brings the derived stage level first, and the result always equals a rebuild;
then the two stages as two `tessera worker` processes on one store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from tessera.audiences import service
from tessera.processor import (
    DERIVED,
    MAIN,
    Pipeline,
    lag,
    reset_derived_state,
    run_derived_once,
    run_maintenance,
    run_once,
    unmerge,
)
from tessera.profiles.views import computed_trait_values_of
from tessera.store.migrate import alembic_config, upgrade
from tests.audiences.test_rebuild_audiences import messages
from tests.audiences.test_stage import T0, Clock, define, derived, make_pipeline, order, settle
from tests.examples import examples
from tests.identity.helpers import ingest, profile_id


def separate(clock: Clock) -> Pipeline:
    pipe = make_pipeline(clock)
    pipe.config = replace(pipe.config, derived="separate")
    return pipe


def positions(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {MAIN: lag(conn).position, DERIVED: lag(conn, name=DERIVED).position}


def settle_derived(engine: Engine, pipe: Pipeline, *, steps: int | None = None) -> None:
    """Run the derived stage (and maintenance) until level, or for `steps` batches."""
    for done in range(1000):
        if steps is not None and done >= steps:
            return
        moved = run_derived_once(engine, pipe, limit=3)
        maintained = run_maintenance(engine, pipe)
        if not moved and not maintained:
            return
    raise AssertionError("the derived stage never settled")


def run_main(engine: Engine, pipe: Pipeline) -> int:
    total = 0
    while applied := run_once(engine, pipe, limit=4):
        total += applied
    return total


@given(
    bursts=st.lists(
        st.tuples(
            st.lists(messages(), min_size=1, max_size=6),
            st.integers(0, 20 * 24),  # hours the clock moves on after the burst
            st.sampled_from(["inline", "separate"]),
            st.sampled_from([0, 1, None]),  # derived batches run after it (None: all)
        ),
        min_size=1,
        max_size=5,
    ),
    define_at=st.integers(0, 5),
)
@settings(
    max_examples=examples(40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_separate_and_switched_stages_equal_a_rebuild(
    engine: Engine,
    bursts: list[tuple[list[dict[str, Any]], int, str, int | None]],
    define_at: int,
) -> None:
    note(f"{bursts=} {define_at=}")
    with engine.begin() as conn:
        for table in ("audiences", "computed_traits", "merge_blocks"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
        reset_derived_state(conn)
        conn.execute(sa.text("DELETE FROM events"))
    clock = Clock(T0)
    inline, apart = make_pipeline(clock), separate(clock)
    defined = False
    for index, (batch, hours, mode, derived_steps) in enumerate(bursts):
        if index == define_at:
            define(engine)
            defined = True
        ingest(engine, batch)
        if mode == "inline":
            # Inline derives only while level: it first needs the derived stage caught up.
            settle_derived(engine, inline)
            settle(engine, inline)
        else:
            run_main(engine, apart)
            settle_derived(engine, apart, steps=derived_steps)
        clock.now += timedelta(hours=hours)
        positions_now = positions(engine)
        assert positions_now[DERIVED] <= positions_now[MAIN]
    if not defined:
        define(engine)
    run_main(engine, apart)
    settle_derived(engine, apart)
    incremental = derived(engine)
    with engine.begin() as conn:
        reset_derived_state(conn)
    settle(engine, make_pipeline(clock))
    assert derived(engine) == incremental


def test_the_main_stage_runs_ahead_and_the_derived_stage_follows(engine: Engine) -> None:
    clock = Clock(T0 + timedelta(days=1))
    pipe = separate(clock)
    define(engine)
    settle_derived(engine, pipe)
    ingest(engine, [order("ann", 60, T0), order("ann", 70, T0 + timedelta(hours=1))])
    run_main(engine, pipe)
    ann = profile_id(engine, "user_id:ann")
    with engine.connect() as conn:
        assert computed_trait_values_of(conn, ann) == {}  # main alone derives nothing
        assert lag(conn, name=DERIVED).events == 2
    settle_derived(engine, pipe)
    with engine.connect() as conn:
        values = computed_trait_values_of(conn, ann)
        assert lag(conn, name=DERIVED).events == 0
    assert values["orders_30d"]["value"] == 2


def test_an_unmerge_first_brings_a_lagging_derived_stage_level(engine: Engine) -> None:
    """The main stage merged a device into cat and ran on with two more orders; the
    derived stage is still before the merge. The unmerge derives what was waiting, then
    re-derives the split cluster: each order counted once, as a rebuild counts them."""
    clock = Clock(T0 + timedelta(days=1))
    pipe = separate(clock)
    define(engine)
    settle_derived(engine, pipe)
    device = {"anonymousId": "device-1"}
    ingest(
        engine,
        [
            {
                "type": "track",
                "event": "Order Completed",
                "properties": {"total": 10},
                "timestamp": T0.isoformat(),
                **device,
            }
        ],
    )
    ingest(engine, [order("cat", 25, T0)])
    run_main(engine, pipe)
    settle_derived(engine, pipe)
    ingest(engine, [{"type": "identify", "userId": "cat", **device}])
    ingest(engine, [order("cat", 5, T0), order("cat", 7, T0, **device)])
    run_main(engine, pipe)
    assert positions(engine)[DERIVED] < positions(engine)[MAIN]
    cat = profile_id(engine, "user_id:cat")
    with engine.connect() as conn:
        merge_id = conn.execute(sa.text("SELECT id FROM profile_merges")).scalar_one()
    with engine.begin() as conn:
        result = unmerge(conn, pipe, profile_id=cat, merge_id=merge_id, actor="test")
    level = positions(engine)
    assert level[DERIVED] == level[MAIN]
    settle_derived(engine, pipe)
    after = derived(engine)
    with engine.connect() as conn:
        spend = {
            pid: computed_trait_values_of(conn, pid)["spend"]["value"]
            for pid in (cat, result.restored_id)
        }
    assert sorted(spend.values()) == [10, 37]
    with engine.begin() as conn:
        reset_derived_state(conn)
    settle(engine, make_pipeline(clock))
    assert derived(engine) == after


def test_a_store_from_before_the_split_starts_its_derived_position_at_the_main_one(
    engine: Engine,
) -> None:
    """Migration 0007 puts the derived row where the main one is: nothing derived twice."""
    clock = Clock(T0 + timedelta(days=1))
    define(engine)
    ingest(engine, [order("bob", 60, T0)])
    settle(engine, make_pipeline(clock))
    config = alembic_config()
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0006")
        conn.commit()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM processor_state")).scalars().all() == ["main"]
    upgrade(engine)
    assert positions(engine)[DERIVED] == positions(engine)[MAIN] > 0
    settle_derived(engine, separate(clock))
    bob = profile_id(engine, "user_id:bob")
    with engine.connect() as conn:
        assert computed_trait_values_of(conn, bob)["orders_30d"]["value"] == 1


def _worker(store_url: str, stage: str, log: Path) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "TESSERA_DATABASE_URL": store_url,
        "TESSERA_PROCESSOR_DERIVED": "separate",
        "TESSERA_PROCESSOR_POLL_SECONDS": "0.05",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tessera", "worker", "--stage", stage, "--no-delivery"],
        env=environment,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def test_two_workers_one_per_stage_and_a_killed_derived_worker(
    engine: Engine, store_url: str, tmp_path: Path
) -> None:
    """`tessera worker --stage main` and `--stage derived` side by side; the derived one
    is SIGKILLed mid-way and a new one carries on: every order counted exactly once."""
    define(engine)
    people = [f"p{n}" for n in range(40)]
    for round_ in range(5):
        ingest(engine, [order(p, 10, T0 - timedelta(hours=round_)) for p in people])
    log = tmp_path / "workers.log"
    main = _worker(store_url, "main", log)
    first = _worker(store_url, "derived", log)
    try:
        deadline = time.monotonic() + 60
        while positions(engine)[DERIVED] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        first.kill()
        first.wait()
        ingest(engine, [order(p, 10, T0 - timedelta(hours=6)) for p in people])
        second = _worker(store_url, "derived", log)
        try:
            with engine.connect() as conn:
                total = conn.execute(sa.text("SELECT max(seq) FROM events")).scalar_one()
            while time.monotonic() < deadline:
                level = positions(engine)
                if level[MAIN] == level[DERIVED] == total:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"not level: {positions(engine)}; log: {log.read_text()}")
        finally:
            second.terminate()
            second.wait(30)
    finally:
        main.terminate()
        main.wait(30)
        first.kill()
    with engine.connect() as conn:
        counts = {
            p: computed_trait_values_of(conn, profile_id(engine, f"user_id:{p}"))["spend"]["value"]
            for p in people
        }
    assert set(counts.values()) == {60}, counts


def test_deleting_an_audience_while_the_derived_stage_lags(engine: Engine) -> None:
    """The deletion holds both positions and writes its exits; the derived stage then
    catches up without evaluating the deleted audience, and equals a rebuild."""
    clock = Clock(T0 + timedelta(days=1))
    pipe = separate(clock)
    define(engine)
    with engine.begin() as conn:
        big = service.create_audience(
            conn,
            name="big spenders",
            description="",
            document={"computed": "spend", "op": "gt", "value": 100},
            actor=None,
        )
    settle_derived(engine, pipe)
    ingest(engine, [order("dan", 60, T0), order("dan", 70, T0)])
    run_main(engine, pipe)
    settle_derived(engine, pipe)
    dan = profile_id(engine, "user_id:dan")

    def changes() -> list[tuple[str, str]]:
        with engine.connect() as conn:
            query = "SELECT profile_id, change FROM audience_changes WHERE audience_id = :a"
            return [tuple(row) for row in conn.execute(sa.text(query), {"a": big["id"]})]

    assert changes() == [(dan, "entered")]
    ingest(engine, [order("dan", 80, T0), order("eve", 500, T0)])
    run_main(engine, pipe)
    assert positions(engine)[DERIVED] < positions(engine)[MAIN]
    with engine.begin() as conn:
        service.delete_audience(conn, audience_id=big["id"])
    settle_derived(engine, pipe)
    assert changes() == [(dan, "entered"), (dan, "exited")]  # eve never enters it
    with engine.connect() as conn:
        assert computed_trait_values_of(conn, dan)["spend"]["value"] == 210
    after = derived(engine)
    with engine.begin() as conn:
        reset_derived_state(conn)
    settle(engine, make_pipeline(clock))
    assert derived(engine) == after


def test_a_merge_by_an_event_no_trait_reads_folds_into_the_survivor(engine: Engine) -> None:
    """A device's order, then cat's; a Product Viewed (which no computed trait reads) ties
    the device to cat. The separate derived stage must still load cat to absorb the device:
    it once skipped that event, and the device's state replaced cat's (spend 10, not 35)."""
    clock = Clock(T0 + timedelta(days=1))
    pipe = separate(clock)
    define(engine)
    settle_derived(engine, pipe)
    ingest(engine, [order("cat", 25, T0), order("dan", 10, T0, userId=None, anonymousId="d1")])
    run_main(engine, pipe)
    settle_derived(engine, pipe)
    viewed = {"type": "track", "userId": "cat", "anonymousId": "d1", "event": "Product Viewed"}
    ingest(engine, [{**viewed, "timestamp": T0.isoformat()}])
    run_main(engine, pipe)
    settle_derived(engine, pipe)
    with engine.connect() as conn:
        values = computed_trait_values_of(conn, profile_id(engine, "user_id:cat"))
    assert values["spend"]["value"] == 35
    assert values["orders_30d"]["value"] == 2
    after = derived(engine)
    with engine.begin() as conn:
        reset_derived_state(conn)
    settle(engine, make_pipeline(clock))
    assert derived(engine) == after
