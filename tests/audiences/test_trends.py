"""What the audience pages chart, on both backends: hourly size snapshots (once per
audience and hour), entries and exits per day (every day present), where a backfill or a
build has got to, and the same through the API of a live server."""

from __future__ import annotations

import time
from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine

from tessera.audiences import service
from tessera.audiences.catalog import load_catalog
from tessera.audiences.overview import audience_overview, computed_trait_overview
from tessera.audiences.stage import backfill_step, build_step
from tessera.audiences.trends import (
    KEEP_DAYS,
    SizeSnapshots,
    daily_changes,
    size_trend,
    take_snapshots,
)
from tessera.processor import wait_until_caught_up
from tessera.store import upgrade
from tessera.store.migrate import alembic_config
from tests.audiences.test_api import AUDIENCES, SPEND, Api
from tests.audiences.test_stage import T0, Clock, define, make_pipeline, order, settle
from tests.conftest import LiveTessera
from tests.identity.helpers import ingest
from tests.ingest.helpers import post


def sizes(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {item["name"]: item["size"] for item in audience_overview(conn, now=T0)}


def test_snapshots_are_taken_once_per_audience_and_hour(engine: Engine) -> None:
    clock = Clock(T0)  # 12:00
    pipe = make_pipeline(clock)
    ids = define(engine)
    ingest(engine, [order("u1", 10, T0 - timedelta(days=1)), order("u1", 20, T0 - timedelta(2))])
    settle(engine, pipe)
    job = SizeSnapshots()
    assert job.run(engine, now=T0 + timedelta(minutes=5)) == 3  # one per audience

    # u2 becomes a repeat buyer within the hour: the hour's snapshot stays as taken.
    ingest(engine, [order("u2", 5, T0 - timedelta(days=3)), order("u2", 7, T0)])
    settle(engine, pipe)
    assert sizes(engine)["repeat buyers"] == 2
    assert job.run(engine, now=T0 + timedelta(minutes=20)) == 0
    assert SizeSnapshots().run(engine, now=T0 + timedelta(minutes=40)) == 0  # another worker
    with engine.begin() as conn:
        assert take_snapshots(conn, now=T0 + timedelta(minutes=59)) == 0

    # A new audience within the hour gets its row when the job looks again.
    with engine.begin() as conn:
        late = service.create_audience(
            conn, name="big", description="", actor=None,
            document={"computed": "spend", "op": "gte", "value": 10},
        )  # fmt: skip
    settle(engine, pipe)
    assert SizeSnapshots(look_again_seconds=0).run(engine, now=T0 + timedelta(minutes=50)) == 1

    assert job.run(engine, now=T0 + timedelta(hours=1, minutes=2)) == 4  # the next hour
    with engine.connect() as conn:
        trend = size_trend(conn, audience_id=ids["repeat"], since=T0 - timedelta(days=7))
        assert trend == [
            {"at": T0, "size": 1},
            {"at": T0 + timedelta(hours=1), "size": 2},
        ]
        assert [p["size"] for p in size_trend(conn, audience_id=late["id"], since=T0)] == [2, 2]
        assert size_trend(conn, audience_id=ids["repeat"], since=T0 + timedelta(minutes=30)) == [
            {"at": T0, "size": 1},  # `since` falls in the hour of this one
            {"at": T0 + timedelta(hours=1), "size": 2},
        ]
        overview = {item["name"]: item for item in audience_overview(conn, now=T0)}
    assert overview["repeat buyers"]["size_week_ago"] == 1
    assert [p["size"] for p in overview["repeat buyers"]["trend"]] == [2]  # a point a day

    # Deleting an audience takes its size and snapshots with it.
    with engine.begin() as conn:
        service.delete_audience(conn, audience_id=late["id"])
        left = conn.execute(sa.text("SELECT DISTINCT audience_id FROM audience_size_snapshots"))
        assert late["id"] not in {row[0] for row in left}


def test_snapshots_older_than_the_trend_reads_are_deleted(engine: Engine) -> None:
    ids = define(engine)
    settle(engine, make_pipeline(Clock(T0)))
    with engine.begin() as conn:
        for at in (T0, T0 + timedelta(days=KEEP_DAYS), T0 + timedelta(days=KEEP_DAYS, hours=1)):
            take_snapshots(conn, now=at)
    with engine.connect() as conn:
        kept = size_trend(conn, audience_id=ids["repeat"], since=T0 - timedelta(days=1))
    assert [point["at"] for point in kept] == [
        T0 + timedelta(days=KEEP_DAYS),
        T0 + timedelta(days=KEEP_DAYS, hours=1),
    ]


def test_entries_and_exits_per_day_fill_every_day(engine: Engine) -> None:
    clock = Clock(T0)
    pipe = make_pipeline(clock)
    ids = define(engine)  # repeat buyers: 2+ orders in the last 30 days
    day0 = T0.date()
    ingest(engine, [order("u1", 10, T0 - timedelta(days=1)), order("u1", 20, T0 - timedelta(2))])
    settle(engine, pipe)  # the build: u1 enters on day 0
    clock.now = T0 + timedelta(days=1)
    ingest(engine, [order("u2", 5, clock.now), order("u2", 6, clock.now), order("u3", 1, T0)])
    settle(engine, pipe)  # u2 enters on day 1
    # u1's older order leaves the window 28 days after T0; u2's on day 31.
    clock.now = T0 + timedelta(days=28, hours=1)
    settle(engine, pipe)
    clock.now = T0 + timedelta(days=31, hours=1)
    settle(engine, pipe)

    with engine.connect() as conn:
        month = daily_changes(conn, audience_id=ids["repeat"], days=32, now=clock.now)
        recent = daily_changes(conn, audience_id=ids["repeat"], days=3, now=clock.now)
        empty = daily_changes(conn, audience_id=ids["vip"], days=2, now=clock.now)
    assert len(month) == 32 and month[0]["day"] == day0
    assert [item["day"] for item in month] == [day0 + timedelta(days=n) for n in range(32)]
    happened = {item["day"]: (item["entered"], item["exited"]) for item in month if any(
        (item["entered"], item["exited"]))}  # fmt: skip
    assert happened == {
        day0: (1, 0),
        day0 + timedelta(days=1): (1, 0),
        day0 + timedelta(days=28): (0, 1),
        day0 + timedelta(days=31): (0, 1),
    }
    assert recent == [
        {"day": day0 + timedelta(days=29), "entered": 0, "exited": 0},
        {"day": day0 + timedelta(days=30), "entered": 0, "exited": 0},
        {"day": day0 + timedelta(days=31), "entered": 0, "exited": 1},
    ]
    assert [(item["entered"], item["exited"]) for item in empty] == [(0, 0), (0, 0)]


def test_progress_while_backfilling_then_building(engine: Engine) -> None:
    clock = Clock(T0)
    pipe = make_pipeline(clock)
    ingest(engine, [order(f"u{n % 10}", 10 + n, T0 - timedelta(hours=n)) for n in range(30)])
    settle(engine, pipe)  # 30 events, 10 profiles, nothing defined yet
    with engine.begin() as conn:
        service.create_computed_trait(conn, document={**SPEND})
        big = service.create_audience(
            conn, name="big", description="", actor=None,
            document={"computed": "spend", "op": "gte", "value": 50},
        )  # fmt: skip

    def look() -> tuple[dict[str, Any], dict[str, Any]]:
        with engine.connect() as conn:
            (audience,) = audience_overview(conn, now=clock.now)
            (trait,) = computed_trait_overview(conn)
        return audience, trait

    audience, trait = look()
    assert (audience["phase"], audience["progress"]) == ("backfilling", 0.0)
    assert (trait["status"], trait["progress"]) == ("backfilling", 0.0)
    assert trait["used_by"] == [{"id": big["id"], "name": "big"}]

    with engine.begin() as conn:  # a third of the log replayed
        backfill_step(conn, load_catalog(conn), ["spend"], position=30, now=T0, chunk=10)
    audience, trait = look()
    assert trait["progress"] == audience["progress"] == round(10 / 30, 4)
    assert audience["phase"] == "backfilling" and trait["backfill"]["through_seq"] == 10

    with engine.begin() as conn:
        backfill_step(conn, load_catalog(conn), ["spend"], position=30, now=T0)
        build_step(conn, load_catalog(conn), big["id"], now=T0, chunk=4)  # 4 of 10 profiles
    audience, trait = look()
    assert (trait["status"], trait["progress"]) == ("ready", 1.0)
    assert (audience["status"], audience["phase"], audience["progress"]) == (
        "building",
        "building",
        0.4,
    )
    with engine.connect() as conn:
        listed = service.get_audience(conn, audience_id=big["id"])["build"]
    assert listed == {"evaluated_profiles": 4, "profiles": 10, "progress": 0.4}

    settle(engine, pipe)
    audience, _ = look()
    assert (audience["phase"], audience["progress"]) == ("ready", 1.0)
    assert audience["size"] == 10  # every user spent 50 or more


def test_the_list_pages_take_the_same_queries_for_any_number_of_definitions(
    engine: Engine,
) -> None:
    def statements(function: Any) -> int:
        seen: list[str] = []

        def note(*args: Any) -> None:
            seen.append(args[2])

        sa.event.listen(engine, "before_cursor_execute", note)
        try:
            with engine.connect() as conn:
                function(conn)
        finally:
            sa.event.remove(engine, "before_cursor_execute", note)
        return len(seen)

    def pages() -> tuple[int, int]:
        return (
            statements(lambda conn: audience_overview(conn, now=T0)),
            statements(lambda conn: computed_trait_overview(conn, include_implicit=True)),
        )

    define(engine)
    few = pages()
    with engine.begin() as conn:
        for n in range(5):
            service.create_audience(
                conn, name=f"more {n}", description="", actor=None,
                document={"event": f"Event {n}", "performed": True, "window": {"days": n + 1}},
            )  # fmt: skip
    assert pages() == few


def test_an_upgraded_store_knows_its_sizes(engine: Engine) -> None:
    pipe = make_pipeline(Clock(T0))
    ids = define(engine)
    ingest(engine, [order(user, 10, T0 - timedelta(days=n)) for user in "ab" for n in (1, 2)])
    settle(engine, pipe)

    def days() -> list[dict[str, Any]]:
        with engine.connect() as conn:
            return daily_changes(conn, audience_id=ids["repeat"], days=3, now=T0)

    before = days()
    assert before[-1] == {"day": T0.date(), "entered": 2, "exited": 0}
    config = alembic_config()
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0009")  # the store as it was before sizes were kept
        conn.commit()
    upgrade(engine)
    with engine.connect() as conn:
        audiences = {item["id"]: item for item in service.list_audiences(conn)}
    assert audiences[ids["repeat"]]["size"] == 2
    assert audiences[ids["repeat"]]["build"]["profiles"] == 2
    assert days() == before  # counted from the change stream


# ---------------------------------------------------------------------------------------------
# through the API


def wait_for(api: Api, path: str, ready: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        body = api.ok("GET", path)
        if ready(body):
            return body
        assert time.monotonic() < deadline, f"{path}: {body}"
        time.sleep(0.1)


def test_the_pages_data_through_the_api(live: LiveTessera) -> None:
    admin, analyst = Api(live, "admin"), Api(live, "analyst")
    batch = [
        {"type": "track", "userId": user, "event": "Order Completed", "properties": {"total": 40}}
        for user in ("u1", "u1", "u2", "u3", "u3")
    ]
    assert post(live, "/v1/batch", {"batch": batch}).status_code == 200
    wait_until_caught_up(live.engine)
    admin.ok("POST", "/api/v1/computed-traits", SPEND, status=201)
    created = admin.ok(
        "POST",
        AUDIENCES,
        {"name": "Spent 50", "definition": {"computed": "spend", "op": "gte", "value": 50}},
        status=201,
    )
    path = f"{AUDIENCES}/{created['id']}"

    overview = wait_for(analyst, f"{AUDIENCES}/overview", lambda b: b[0]["phase"] == "ready")
    assert [(a["name"], a["size"], a["progress"]) for a in overview] == [("Spent 50", 2, 1.0)]
    # The worker's job snapshots the new audience (it looks again within seconds).
    trend = wait_for(analyst, f"{path}/trend", lambda b: b["points"])
    assert trend["size"] == 2 and trend["points"][-1]["size"] == 2

    changes = analyst.ok("GET", f"{path}/changes", params={"days": 3})
    today = date.fromisoformat(changes["days"][-1]["day"])
    assert [item["day"] for item in changes["days"]] == [
        (today - timedelta(days=n)).isoformat() for n in (2, 1, 0)
    ]
    assert changes["days"][-1] == {"day": today.isoformat(), "entered": 2, "exited": 0}
    assert len(admin.ok("GET", f"{path}/changes")["days"]) == 30  # the default range

    missing = admin.request("GET", f"{AUDIENCES}/aud_0000/trend")
    assert missing.status_code == 404 and "aud_0000" in missing.text
    assert admin.request("GET", f"{AUDIENCES}/aud_0000/changes").status_code == 404
    refused = admin.request("GET", f"{path}/changes", params={"days": 0})
    assert refused.status_code in (400, 422) and "days" in refused.text
    assert admin.request("GET", f"{path}/trend", params={"days": "x"}).status_code in (400, 422)
