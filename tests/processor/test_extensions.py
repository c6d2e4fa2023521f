"""The processor's extension points: a batch stage derives its own state in the batch's
transaction, is rebuilt and unmerged with the rest; a worker job runs on the worker's loop,
and one that fails neither stops the stages nor the other jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from importlib.metadata import EntryPoint
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Connection, Engine

from tessera.config import Settings
from tessera.errors import ConfigurationError
from tessera.processor import (
    AppliedBatch,
    Pipeline,
    Processor,
    lag,
    reset_derived_state,
    unmerge,
)
from tessera.processor import extensions as extensions_module
from tessera.processor.extensions import batch_stages, worker_jobs
from tests.examples import examples
from tests.identity.helpers import ingest, pipeline, process, profile_id

# A stage's own table: what a purchase-history stage would keep, per profile.
_metadata = sa.MetaData()
order_totals = sa.Table(
    "test_order_totals",
    _metadata,
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("orders", sa.Integer, nullable=False),
    sa.Column("revenue_cents", sa.BigInteger, nullable=False),
)


class OrderTotals:
    """Orders and revenue per profile, from `Order Completed` events."""

    name = "order_totals"
    tables: Sequence[sa.Table] = (order_totals,)

    def __init__(self, fail_on: str | None = None) -> None:
        self.fail_on = fail_on  # an order id whose batch raises (once)
        self.batches = 0

    def apply(self, conn: Connection, batch: AppliedBatch) -> None:
        self.batches += 1
        totals: dict[str, list[int]] = {}
        for survivor, absorbed in batch.merges:
            totals.setdefault(survivor, [0, 0])
            row = conn.execute(
                sa.select(order_totals).where(order_totals.c.profile_id == absorbed)
            ).first()
            if row is not None:
                totals[survivor][0] += row.orders
                totals[survivor][1] += row.revenue_cents
                conn.execute(order_totals.delete().where(order_totals.c.profile_id == absorbed))
        for item in batch.events:
            if item.type != "track" or item.name != "Order Completed" or item.profile_id is None:
                continue
            order = item.payload.get("properties", {})
            if self.fail_on is not None and order.get("order_id") == self.fail_on:
                self.fail_on = None
                raise RuntimeError("injected failure in a batch stage")
            counts = totals.setdefault(item.profile_id, [0, 0])
            counts[0] += 1
            counts[1] += round(order.get("total", 0) * 100)
        for pid, (orders, cents) in totals.items():
            current = conn.execute(
                sa.select(order_totals).where(order_totals.c.profile_id == pid)
            ).first()
            if current is None:
                conn.execute(
                    order_totals.insert().values(profile_id=pid, orders=orders, revenue_cents=cents)
                )
            else:
                conn.execute(
                    order_totals.update()
                    .where(order_totals.c.profile_id == pid)
                    .values(
                        orders=current.orders + orders, revenue_cents=current.revenue_cents + cents
                    )
                )


@pytest.fixture
def store(engine: Engine) -> Iterator[Engine]:
    _metadata.create_all(engine)
    yield engine


def _with(stage: OrderTotals) -> Pipeline:
    base = pipeline()
    return Pipeline(base.config, stages=[stage])


def _totals(engine: Engine) -> dict[str, tuple[int, int]]:
    with engine.connect() as conn:
        return {
            row.profile_id: (row.orders, row.revenue_cents)
            for row in conn.execute(sa.select(order_totals))
        }


def _order(user: str | None, anon: str, order_id: str, total: float) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "track",
        "event": "Order Completed",
        "anonymousId": anon,
        "properties": {"order_id": order_id, "total": total},
    }
    if user:
        message["userId"] = user
    return message


def test_a_batch_stage_sees_every_event_once_and_follows_merges(store: Engine) -> None:
    stage = OrderTotals()
    pipe = _with(stage)
    ingest(store, [_order(None, "a1", "o1", 10.0), _order(None, "a1", "o2", 5.5)])
    process(store, pipe)
    anonymous = profile_id(store, "anonymous_id:a1")
    assert _totals(store) == {anonymous: (2, 1550)}

    # u1 bought on another device, then logs in on a1's: the two profiles merge.
    ingest(store, [_order("u1", "a2", "o3", 20.0)])
    process(store, pipe)
    ingest(store, [{"type": "identify", "userId": "u1", "anonymousId": "a1"}])
    process(store, pipe)
    person = profile_id(store, "user_id:u1")
    assert profile_id(store, "anonymous_id:a1") == person
    assert _totals(store) == {person: (3, 3550)}
    assert stage.batches == 3


def test_a_failing_batch_stage_rolls_back_the_whole_batch(store: Engine) -> None:
    stage = OrderTotals(fail_on="o2")
    pipe = _with(stage)
    ingest(store, [_order("u1", "a1", "o1", 1.0), _order("u1", "a1", "o2", 2.0)])
    with pytest.raises(RuntimeError, match="injected"):
        process(store, pipe)
    with store.connect() as conn:
        assert lag(conn).events == 2  # nothing applied: identity and profiles rolled back
        assert conn.execute(sa.text("SELECT count(*) FROM profiles")).scalar_one() == 0
    assert _totals(store) == {}
    process(store, pipe)  # the retry applies the batch once
    assert _totals(store) == {profile_id(store, "user_id:u1"): (2, 300)}


def test_rebuild_and_unmerge_rederive_a_batch_stages_tables(store: Engine) -> None:
    stage = OrderTotals()
    pipe = _with(stage)
    ingest(
        store,
        [
            _order("u1", "a1", "o1", 10.0),
            _order(None, "a2", "o2", 7.0),
            {"type": "identify", "userId": "u1", "anonymousId": "a2"},
            _order("u1", "a2", "o3", 1.0),
        ],
    )
    process(store, pipe)
    person = profile_id(store, "user_id:u1")
    assert _totals(store) == {person: (3, 1800)}

    with store.begin() as conn:
        reset_derived_state(conn, stages=pipe.stages)
    assert _totals(store) == {}
    process(store, pipe)
    assert _totals(store) == {person: (3, 1800)}

    with store.begin() as conn:
        merge_id = conn.execute(sa.text("SELECT id FROM profile_merges")).scalar_one()
        result = unmerge(conn, pipe, profile_id=person, merge_id=merge_id, actor="test")
    # The anonymous device's order goes back to its own profile; the later order, sent
    # with u1's id, stays with u1.
    assert _totals(store) == {result.survivor_id: (2, 1100), result.restored_id: (1, 700)}


orders = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", None]),
        st.sampled_from(["a1", "a2", "a3"]),
        st.integers(1, 500),
        st.booleans(),  # an identify joining the user to the device after the order
    ),
    min_size=1,
    max_size=12,
)


@given(batch=orders, step=st.integers(1, 5))
@settings(
    max_examples=examples(20),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_a_batch_stage_incremental_equals_rebuilt(
    store: Engine, batch: list[tuple[str | None, str, int, bool]], step: int
) -> None:
    pipe = _with(OrderTotals())
    with store.begin() as conn:
        reset_derived_state(conn, stages=pipe.stages)
        conn.execute(sa.text("DELETE FROM events"))
    messages: list[dict[str, Any]] = []
    for index, (user, anon, cents, joins) in enumerate(batch):
        messages.append(_order(user, anon, f"o{index}", cents / 100))
        if joins and user:
            messages.append({"type": "identify", "userId": user, "anonymousId": anon})
    ingest(store, messages)
    process(store, pipe, limit=step)
    incremental = _totals(store)
    assert sum(orders for orders, _ in incremental.values()) == len(batch)
    assert sum(cents for _, cents in incremental.values()) == sum(c for _, _, c, _ in batch)
    with store.begin() as conn:
        reset_derived_state(conn, stages=pipe.stages)
    process(store, pipe)
    assert _totals(store) == incremental


class Counting:
    name = "counting"

    def __init__(self) -> None:
        self.runs = 0

    def run(self, engine: Engine, *, now: datetime) -> int:
        self.runs += 1
        return 0


class Broken:
    name = "broken"

    def __init__(self) -> None:
        self.runs = 0

    def run(self, engine: Engine, *, now: datetime) -> int:
        self.runs += 1
        raise RuntimeError("the import's file is gone")


def test_worker_jobs_run_on_the_loop_and_a_failing_one_stops_nothing(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    good, broken = Counting(), Broken()
    processor = Processor(engine, pipeline(), poll_seconds=0.01, jobs=[broken, good])
    ingest(engine, [_order("u1", "a1", "o1", 1.0)])
    processor.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (processor.applied < 1 or good.runs < 20):
            time.sleep(0.02)
        ingest(engine, [_order("u2", "a2", "o2", 1.0)])
        processor.wake()
        while time.monotonic() < deadline and processor.applied < 2:
            time.sleep(0.02)
    finally:
        processor.stop()
    assert processor.applied == 2  # the stages went on while the broken job failed
    assert good.runs >= 20
    # It backs off (1 s, then 2 s, ...), so it ran far fewer times than the good one.
    assert 1 <= broken.runs < good.runs / 4
    assert processor.failures == 0  # a job's failure is its own, not a failed batch
    assert any("processor.job_failed" in record.getMessage() for record in caplog.records)


def make_stage(settings: Settings) -> OrderTotals:
    return OrderTotals()


def make_broken_job(settings: Settings) -> Broken:
    raise ValueError("no such bucket")


def test_plugins_load_from_their_entry_point_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    here = __name__
    points = {
        "tessera.batch_stages": [
            EntryPoint("orders", f"{here}:make_stage", "tessera.batch_stages")
        ],
        "tessera.worker_jobs": [
            EntryPoint("imports", f"{here}:make_broken_job", "tessera.worker_jobs")
        ],
    }
    monkeypatch.setattr(extensions_module, "entry_points", lambda group: points.get(group, []))
    settings = Settings()
    stages = batch_stages(settings)
    assert [stage.name for stage in stages] == ["order_totals"]
    assert Pipeline.from_settings(settings).stages[0].name == "order_totals"
    with pytest.raises(ConfigurationError, match=r"'imports'.*no such bucket"):
        worker_jobs(settings)
