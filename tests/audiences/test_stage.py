"""Computed traits and audiences maintained by the processor, on both backends: backfill,
real-time entries and exits, windows that expire at the exact moment, merges, unmerge,
restarts, and rebuild reaching the same state."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tessera.audiences import service
from tessera.audiences.models import audience_changes, audience_daily_changes, audiences
from tessera.identity.config import IdentityRules
from tessera.processor import (
    Pipeline,
    ProcessorConfig,
    reset_derived_state,
    run_maintenance,
    run_once,
    unmerge,
)
from tessera.profiles.views import computed_trait_values_of
from tests.identity.helpers import ingest, profile_id

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_pipeline(clock: Clock) -> Pipeline:
    return Pipeline(ProcessorConfig(rules=IdentityRules(), trait_policies={}), clock=clock)


def settle(engine: Engine, pipe: Pipeline) -> None:
    """Apply every event, then every backfill, build and due re-evaluation."""
    for _ in range(1000):
        applied = run_once(engine, pipe)
        maintained = run_maintenance(engine, pipe)
        if not applied and not maintained:
            return
    raise AssertionError("the processor never settled")


def order(user: str, total: float, at: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user,
        "event": "Order Completed",
        "properties": {"total": total},
        "timestamp": at.isoformat(),
        **extra,
    }


def define(engine: Engine) -> dict[str, str]:
    with engine.begin() as conn:
        service.create_computed_trait(
            conn,
            document={
                "name": "orders_30d",
                "kind": "count",
                "event": {"name": "Order Completed"},
                "window": {"days": 30},
            },
        )
        service.create_computed_trait(
            conn,
            document={
                "name": "spend",
                "kind": "sum",
                "event": {"name": "Order Completed"},
                "property": "total",
            },
        )
        repeat = service.create_audience(
            conn,
            name="repeat buyers",
            description="",
            document={"computed": "orders_30d", "op": "gte", "value": 2},
            actor=None,
        )
        lapsed = service.create_audience(
            conn,
            name="lapsed",
            description="",
            document={
                "and": [
                    {"computed": "spend", "op": "gt", "value": 0},
                    {"event": "Order Completed", "performed": False, "window": {"days": 30}},
                ]
            },
            actor=None,
        )
        vip = service.create_audience(
            conn,
            name="vip",
            description="",
            document={
                "and": [
                    {"audience": repeat["id"]},
                    {"trait": "plan", "op": "eq", "value": "gold"},
                ]
            },
            actor=None,
        )
    return {"repeat": repeat["id"], "lapsed": lapsed["id"], "vip": vip["id"]}


def members(engine: Engine, audience_id: str) -> set[str]:
    with engine.connect() as conn:
        page, _ = service.list_members(conn, audience_id=audience_id, cursor=None, limit=1000)
    return {item["profile_id"] for item in page}


def values(engine: Engine, ref: str) -> dict[str, Any]:
    with engine.connect() as conn:
        found = computed_trait_values_of(conn, profile_id(engine, ref))
    return {name: item["value"] for name, item in found.items()}


def changes(engine: Engine) -> list[tuple[str, str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT audience_id, profile_id, change, cause FROM audience_changes ORDER BY seq"
            )
        )
        return [tuple(row) for row in rows]


def test_backfill_then_real_time_then_time(engine: Engine) -> None:
    clock = Clock(T0)
    pipe = make_pipeline(clock)
    # History from before the definitions exist: backfilled.
    ingest(
        engine,
        [order("ann", 30, T0 - timedelta(days=40)), order("ann", 20, T0 - timedelta(days=10))],
    )
    ingest(engine, [{"type": "identify", "userId": "bob", "traits": {"plan": "gold"}}])
    settle(engine, pipe)
    ids = define(engine)
    settle(engine, pipe)
    ann, bob = profile_id(engine, "user_id:ann"), profile_id(engine, "user_id:bob")
    assert values(engine, "user_id:ann") == {"orders_30d": 1, "spend": 50}
    assert members(engine, ids["repeat"]) == set()
    assert members(engine, ids["lapsed"]) == set()  # ordered 10 days ago

    # An event changes membership at once, and dependents follow.
    ingest(engine, [order("bob", 80, T0 - timedelta(hours=1)), order("bob", 15, T0)])
    settle(engine, pipe)
    assert members(engine, ids["repeat"]) == {bob}
    assert members(engine, ids["vip"]) == {bob}
    assert values(engine, "user_id:bob") == {"orders_30d": 2, "spend": 95}

    # Ann's last order leaves the 30-day window at exactly T0 + 20 days.
    edge = T0 - timedelta(days=10) + timedelta(days=30)
    clock.now = edge - timedelta(seconds=1)
    settle(engine, pipe)
    assert ann not in members(engine, ids["lapsed"])
    clock.now = edge
    settle(engine, pipe)
    assert ann in members(engine, ids["lapsed"])
    assert values(engine, "user_id:ann")["orders_30d"] == 0
    # Bob's first order leaves his window: he stops being a repeat buyer, and a vip.
    clock.now = T0 - timedelta(hours=1) + timedelta(days=30)
    settle(engine, pipe)
    assert members(engine, ids["repeat"]) == set()
    assert members(engine, ids["vip"]) == set()
    published = changes(engine)
    assert (ids["lapsed"], ann, "entered", "time") in published
    assert (ids["vip"], bob, "exited", "time") in published
    entered_by_event = [c for c in published if c[:3] == (ids["repeat"], bob, "entered")]
    assert entered_by_event and entered_by_event[0][3].startswith("event:")

    # A restart (a new pipeline, nothing in memory) misses nothing that falls due.
    clock.now = T0 + timedelta(days=31)
    settle(engine, make_pipeline(clock))
    assert bob in members(engine, ids["lapsed"])


def test_a_merge_folds_computed_traits_and_memberships(engine: Engine) -> None:
    clock = Clock(T0)
    pipe = make_pipeline(clock)
    ids = define(engine)
    settle(engine, pipe)
    anonymous = {"anonymousId": "device-1"}
    ingest(
        engine,
        [
            {"type": "track", "event": "Order Completed", "properties": {"total": 10}, **anonymous},
            order("cat", 25, T0),
        ],
    )
    settle(engine, pipe)
    device = profile_id(engine, "anonymous_id:device-1")
    assert members(engine, ids["repeat"]) == set()
    ingest(engine, [{"type": "identify", "userId": "cat", **anonymous}])
    settle(engine, pipe)
    cat = profile_id(engine, "user_id:cat")
    assert values(engine, "user_id:cat") == {"orders_30d": 2, "spend": 35}
    assert members(engine, ids["repeat"]) == {cat}
    assert device == cat or device not in members(engine, ids["repeat"])

    # Unmerge: the counts split again.
    with engine.connect() as conn:
        merge_id = conn.execute(sa.text("SELECT id FROM profile_merges")).scalar_one()
    with engine.begin() as conn:
        unmerge(conn, pipe, profile_id=cat, merge_id=merge_id, actor="test")
    settle(engine, pipe)
    assert values(engine, "user_id:cat") == {"orders_30d": 1, "spend": 25}
    assert values(engine, "anonymous_id:device-1") == {"orders_30d": 1, "spend": 10}
    assert members(engine, ids["repeat"]) == set()


def derived(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """The derived state to compare; the kept sizes must equal the member rows' counts."""
    queries = {
        "values": "SELECT profile_id, name, value FROM computed_trait_values",
        "members": "SELECT audience_id, profile_id FROM audience_members",
        "schedule": "SELECT profile_id, item, due_at FROM evaluation_schedule",
        "sizes": "SELECT audience_id, members FROM audience_sizes WHERE members <> 0",
    }
    with engine.connect() as conn:
        found = {
            name: sorted((tuple(row) for row in conn.execute(sa.text(sql))), key=repr)
            for name, sql in queries.items()
        }
    counted = Counter(audience_id for audience_id, _ in found["members"])
    assert dict(found["sizes"]) == dict(counted), "kept sizes differ from the members"
    assert kept_daily_changes(engine) == counted_daily_changes(engine)
    return found


def kept_daily_changes(engine: Engine) -> dict[tuple[str, Any], tuple[int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                audience_daily_changes.c.audience_id,
                audience_daily_changes.c.day,
                audience_daily_changes.c.entered,
                audience_daily_changes.c.exited,
            )
        )
        return {(row[0], row[1]): (row[2], row[3]) for row in rows if row[2] or row[3]}


def counted_daily_changes(engine: Engine) -> dict[tuple[str, Any], tuple[int, int]]:
    """The change stream of existing audiences counted per UTC day."""
    counts: dict[tuple[str, Any], list[int]] = {}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(audience_changes.c.audience_id, audience_changes.c.change,
                      audience_changes.c.at)
            .join(audiences, audiences.c.id == audience_changes.c.audience_id)
        )  # fmt: skip
        for audience_id, change, at in rows:
            pair = counts.setdefault((audience_id, at.date()), [0, 0])
            pair[change == "exited"] += 1
    return {key: (pair[0], pair[1]) for key, pair in counts.items()}


def test_rebuild_reaches_the_same_memberships(engine: Engine) -> None:
    clock = Clock(T0)
    pipe = make_pipeline(clock)
    define(engine)
    messages = []
    for n in range(40):
        user = f"u{n % 7}"
        messages.append(order(user, n, T0 - timedelta(days=n % 45, hours=n)))
        if n % 5 == 0:
            messages.append({"type": "identify", "userId": user, "traits": {"plan": "gold"}})
    ingest(engine, messages)
    settle(engine, pipe)
    clock.now = T0 + timedelta(days=3)
    settle(engine, pipe)
    incremental = derived(engine)
    assert incremental["members"], "the scenario should put someone in an audience"
    with engine.begin() as conn:
        reset_derived_state(conn)
    settle(engine, make_pipeline(clock))
    assert derived(engine) == incremental


def test_consent_state_decides_membership(engine: Engine) -> None:
    clock = Clock(T0)
    pipe = make_pipeline(clock)
    with engine.begin() as conn:
        audience = service.create_audience(
            conn,
            name="marketable",
            description="",
            document={"consent": "marketing"},
            actor=None,
        )
    settle(engine, pipe)

    def prefs(granted: bool, at: datetime) -> dict[str, Any]:
        return {
            "type": "track",
            "userId": "dee",
            "event": "Consent Updated",
            "timestamp": at.isoformat(),
            "context": {"consent": {"categoryPreferences": {"marketing": granted}}},
        }

    ingest(engine, [prefs(True, T0)])
    settle(engine, pipe)
    dee = profile_id(engine, "user_id:dee")
    assert members(engine, audience["id"]) == {dee}
    # A late event with an older timestamp does not override the newer choice.
    ingest(engine, [prefs(False, T0 - timedelta(days=1))])
    settle(engine, pipe)
    assert members(engine, audience["id"]) == {dee}
    ingest(engine, [prefs(False, T0 + timedelta(minutes=1))])
    settle(engine, pipe)
    assert members(engine, audience["id"]) == set()
    with engine.connect() as conn:
        from tessera.profiles.views import get_profile

        assert get_profile(conn, dee)["consent"]["marketing"]["granted"] is False
