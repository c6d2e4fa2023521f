"""Events per minute zero-filled per source and pruned past the retention; profiles,
identified profiles and audience sizes recounted in steps, right across merges and
unmerges; merges counted by time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tessera.audiences import service as audience_service
from tessera.errors import BadRequest, NotFound
from tessera.processor import run_maintenance, unmerge
from tessera.schema import dashboard, service
from tessera.schema.dashboard import largest_audiences
from tessera.schema.recount import RecountJob
from tests.identity.helpers import process, profile_id, source_id
from tests.schema.helpers import NOW, schema_pipeline, send


def recount(engine: Engine, *, now: datetime, profile_step: int = 2, member_step: int = 2) -> int:
    """Run a recount job until it is idle; the steps it took."""
    job = RecountJob(
        max_interval=timedelta(minutes=5),
        minutes_retention=timedelta(days=7),
        profile_step=profile_step,
        member_step=member_step,
    )
    steps = 0
    while job.run(engine, now=now):
        steps += 1
        assert steps < 1000
    return steps


def test_events_per_minute_are_zero_filled_per_source(engine: Engine) -> None:
    send(
        engine,
        [{"type": "track", "userId": "u1", "event": "A"}] * 3,
        at=NOW - timedelta(minutes=10, seconds=-5),
    )
    send(
        engine,
        [{"type": "track", "userId": "u2", "event": "B"}],
        at=NOW - timedelta(minutes=2),
        source="app",
    )
    send(engine, [{"type": "track", "userId": "u3", "event": "C"}], at=NOW - timedelta(days=8))
    quiet = source_id(engine, "quiet")
    process(engine, schema_pipeline())
    with engine.connect() as conn:
        series = service.events_per_minute(conn, since=NOW - timedelta(minutes=10), until=NOW)
        app_only = service.events_per_minute(
            conn, since=NOW - timedelta(minutes=3), until=NOW, source_id=source_id(engine, "app")
        )
        with pytest.raises(NotFound):
            service.events_per_minute(conn, since=NOW, until=NOW, source_id=9999)
        with pytest.raises(BadRequest, match="after until"):
            service.events_per_minute(conn, since=NOW, until=NOW - timedelta(minutes=1))
        with pytest.raises(BadRequest, match="at most"):
            service.events_per_minute(conn, since=NOW - timedelta(days=8), until=NOW)
    assert series["start"] == NOW - timedelta(minutes=10)
    assert series["end"] == NOW
    counts = {item["name"]: item["counts"] for item in series["sources"]}
    # Older than the retention (7 days), the 8-day-old event has no minute.
    assert counts == {
        "web": [3] + [0] * 10,
        "app": [0] * 8 + [1, 0, 0],
        "quiet": [0] * 11,
    }
    assert [item["source_id"] for item in series["sources"]] == sorted(
        [source_id(engine, "web"), source_id(engine, "app"), quiet]
    )
    assert [(item["name"], item["counts"]) for item in app_only["sources"]] == [
        ("app", [0, 1, 0, 0])
    ]


def test_old_minutes_are_pruned_an_hour_a_step(engine: Engine) -> None:
    for hours in (50, 49, 2):
        send(
            engine,
            [{"type": "track", "userId": "u1", "event": "A"}],
            at=NOW - timedelta(hours=hours),
        )
    process(engine, schema_pipeline())
    job = RecountJob(max_interval=timedelta(minutes=5), minutes_retention=timedelta(days=1))
    minutes = "SELECT count(*) FROM schema_event_minutes"
    with engine.connect() as conn:
        assert conn.execute(sa.text(minutes)).scalar_one() == 3
    job.run(engine, now=NOW)  # the 50-hour-old minute goes first, alone
    with engine.connect() as conn:
        assert conn.execute(sa.text(minutes)).scalar_one() == 2
    job.run(engine, now=NOW)
    with engine.connect() as conn:
        assert conn.execute(sa.text(minutes)).scalar_one() == 1
    assert job.run(engine, now=NOW) == 0  # nothing left to prune, the counts are not due
    with engine.connect() as conn:
        assert conn.execute(sa.text(minutes)).scalar_one() == 1


def test_profile_counts_follow_merges_and_unmerges(engine: Engine) -> None:
    pipe = schema_pipeline()
    send(
        engine,
        [
            {"type": "track", "anonymousId": "a1", "event": "Viewed"},
            {"type": "track", "anonymousId": "a2", "event": "Viewed"},
            {"type": "track", "anonymousId": "a3", "event": "Viewed"},
            {"type": "identify", "anonymousId": "a2", "traits": {"email": "jo@example.com"}},
            {"type": "identify", "anonymousId": "a4", "traits": {"phone": "+44 20 7946 0958"}},
            {"type": "identify", "userId": "u1", "anonymousId": "a1"},
            {"type": "identify", "userId": "u1", "anonymousId": "a2"},  # merges a1's and a2's
        ],
    )
    process(engine, pipe)
    with engine.connect() as conn:
        assert service.profile_counts(conn)["profiles"] is None  # not counted yet
    assert recount(engine, now=NOW) >= 3  # 5 profiles rows, 2 a step
    with engine.connect() as conn:
        counts = service.profile_counts(conn)
        merges = service.merges_since(conn, since=NOW - timedelta(minutes=1))
        none_later = service.merges_since(conn, since=NOW + timedelta(seconds=1))
    # a1+a2+u1 (identified), a3 (anonymous), a4 (phone)
    assert counts == {
        "profiles": 3,
        "identified": 2,
        "share_identified": round(2 / 3, 4),
        "counted_at": NOW,
    }
    assert (merges, none_later) == (1, 0)

    person = profile_id(engine, "user_id:u1")
    with engine.begin() as conn:
        merge_id = conn.execute(sa.text("SELECT id FROM profile_merges")).scalar_one()
        unmerge(conn, pipe, profile_id=person, merge_id=merge_id, actor="test")
    assert recount(engine, now=NOW + timedelta(seconds=5)) == 0  # not due yet
    later = NOW + timedelta(minutes=10)
    recount(engine, now=later)
    with engine.connect() as conn:
        counts = service.profile_counts(conn)
    assert (counts["profiles"], counts["counted_at"]) == (4, later)
    assert counts["identified"] in (2, 3)  # whichever side kept the email is identified
    assert counts["identified"] == _identified(engine)


def _identified(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(DISTINCT i.profile_id) FROM identities i "
                    "JOIN profiles p ON p.id = i.profile_id AND p.merged_into IS NULL "
                    "WHERE i.type IN ('email', 'user_id', 'phone')"
                )
            ).scalar_one()
        )


def test_audience_sizes_are_recounted_and_the_largest_listed(engine: Engine) -> None:
    pipe = schema_pipeline()
    plans = ["pro"] * 5 + ["free"] * 2
    send(
        engine,
        [
            {"type": "identify", "userId": f"u{i}", "traits": {"plan": plan}}
            for i, plan in enumerate(plans)
        ],
    )
    process(engine, pipe)
    ids = {}
    with engine.begin() as conn:
        for plan in ("pro", "free", "enterprise"):
            created = audience_service.create_audience(
                conn,
                name=f"On {plan}",
                description="",
                document={"trait": "plan", "op": "eq", "value": plan},
                actor="test",
            )
            ids[plan] = created["id"]
    while run_maintenance(engine, pipe):
        pass
    recount(engine, now=NOW)
    with engine.connect() as conn:
        top = largest_audiences(conn, now=NOW, limit=2)
    assert [(a["name"], a["size"], a["counted_at"]) for a in top] == [
        ("On pro", 5, NOW),
        ("On free", 2, NOW),
    ]
    assert top[0]["trend"] == []  # until the hourly snapshots exist

    with engine.begin() as conn:
        audience_service.delete_audience(conn, audience_id=ids["pro"])
    recount(engine, now=NOW + timedelta(hours=1))
    with engine.connect() as conn:
        top = largest_audiences(conn, now=NOW)
        sizes = conn.execute(sa.text("SELECT count(*) FROM schema_audience_sizes")).scalar_one()
    assert [(a["name"], a["size"]) for a in top] == [("On free", 2), ("On enterprise", 0)]
    assert sizes == 2


def test_the_processors_lag_is_counted_up_to_a_bound(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard, "LAG_AT_MOST", 2)
    received = datetime.now(UTC) - timedelta(minutes=1)
    send(engine, [{"type": "track", "userId": "u1", "event": "A"}] * 3, at=received)
    with engine.connect() as conn:
        waiting = dashboard.processor_lag(conn)
    assert waiting["main"]["lag_events"] == 2
    assert waiting["main"]["capped"] is True
    assert waiting["main"]["oldest_waiting_seconds"] >= 60  # received a minute ago
    process(engine, schema_pipeline())
    with engine.connect() as conn:
        caught_up = dashboard.processor_lag(conn)
    assert (caught_up["main"]["lag_events"], caught_up["main"]["capped"]) == (0, False)
    assert caught_up["main"]["oldest_waiting_seconds"] is None
