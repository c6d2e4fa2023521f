"""Identity resolution scenarios through the real processor, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tessera.errors import NotFound
from tessera.identity.config import IdentityRules
from tessera.processor import Pipeline, lag, reset_derived_state
from tessera.profiles.batch import ProfileBatch
from tessera.profiles.views import list_merges
from tests.identity.helpers import ingest, pipeline, process, profile, profile_id, snapshot


def attributed(engine: Engine) -> dict[int, str | None]:
    with engine.connect() as conn:
        return {
            seq: pid
            for seq, pid in conn.execute(sa.text("SELECT seq, profile_id FROM event_profiles"))
        }


def test_cross_device_journey_ends_in_one_profile_with_pre_login_events(engine: Engine) -> None:
    ingest(
        engine,
        [
            {
                "type": "page",
                "anonymousId": "laptop-anon",
                "name": "Home",
                "context": {"device": {"id": "laptop"}},
            },
            {"type": "track", "anonymousId": "laptop-anon", "event": "Product Viewed"},
            {"type": "page", "anonymousId": "phone-anon", "name": "Shoes"},
            {"type": "track", "anonymousId": "phone-anon", "event": "Product Added"},
            {
                "type": "identify",
                "anonymousId": "laptop-anon",
                "userId": "u1",
                "traits": {"email": "jo@example.com"},
            },
            {"type": "identify", "anonymousId": "phone-anon", "userId": "u1"},
            {"type": "track", "userId": "u1", "event": "Order Completed"},
        ],
    )
    assert process(engine) == 7
    jo = profile(engine, "user_id:u1")
    assert jo["event_count"] == 7
    assert {(i["type"], i["value"]) for i in jo["identities"]} == {
        ("anonymous_id", "laptop-anon"),
        ("anonymous_id", "phone-anon"),
        ("device_id", "laptop"),
        ("user_id", "u1"),
        ("email", "jo@example.com"),
    }
    assert set(attributed(engine).values()) == {jo["id"]}
    assert jo["id"] == "prf_1"  # the oldest profile survives
    assert profile(engine, "anonymous_id:phone-anon")["id"] == jo["id"]


def test_merge_lineage_explains_each_merge(engine: Engine) -> None:
    ingest(engine, [{"type": "page", "anonymousId": "a"}, {"type": "page", "anonymousId": "b"}])
    ingest(
        engine, [{"type": "identify", "anonymousId": "b", "userId": "u", "messageId": "the-login"}]
    )
    ingest(engine, [{"type": "alias", "userId": "u", "previousId": "a", "messageId": "the-alias"}])
    process(engine)
    with engine.connect() as conn:
        merges = list_merges(conn, profile_id(engine, "user_id:u"))
    assert [
        (m["survivor_id"], m["absorbed_id"], m["rule"], m["identifiers"], m["message_id"])
        for m in merges
    ] == [
        ("prf_1", "prf_2", "alias", ["anonymous_id:a"], "the-alias"),
    ]
    # The absorbed id keeps resolving to the survivor.
    assert profile(engine, "prf_2")["id"] == "prf_1"
    assert profile(engine, "prf_1")["merged_ids"] == ["prf_2"]


def test_shared_device_never_merges_two_user_ids(engine: Engine) -> None:
    tablet = {"anonymousId": "family-tablet", "context": {"device": {"id": "tablet-1"}}}
    ingest(
        engine,
        [
            {"type": "identify", "userId": "mum", **tablet},
            {"type": "track", "userId": "mum", "event": "Order Completed", **tablet},
            {"type": "identify", "userId": "son", **tablet},
            {"type": "track", "userId": "son", "event": "Product Viewed", **tablet},
        ],
    )
    process(engine)
    mum, son = profile(engine, "user_id:mum"), profile(engine, "user_id:son")
    assert mum["id"] != son["id"]
    assert {i["value"] for i in son["identities"]} == {"son"}
    assert profile(engine, "anonymous_id:family-tablet")["id"] == mum["id"]
    assert mum["event_count"] == 2 and son["event_count"] == 2


def test_conflicting_email_does_not_merge_two_users(engine: Engine) -> None:
    ingest(
        engine,
        [
            {"type": "identify", "userId": "u1", "traits": {"email": "shared@corp.example"}},
            {
                "type": "identify",
                "userId": "u2",
                "traits": {"email": "shared@corp.example", "name": "Two"},
            },
        ],
    )
    process(engine)
    one, two = profile(engine, "user_id:u1"), profile(engine, "user_id:u2")
    assert one["id"] != two["id"]
    assert profile(engine, "email:shared@corp.example")["id"] == one["id"]
    assert two["traits"]["name"] == "Two"


def test_events_with_only_blocked_identifiers_are_counted_not_guessed(engine: Engine) -> None:
    ingest(
        engine,
        [
            {"type": "track", "anonymousId": "undefined", "event": "A"},
            {"type": "track", "anonymousId": "undefined", "event": "B"},
            {"type": "track", "userId": "null", "anonymousId": "0", "event": "C"},
            {"type": "identify", "userId": "real", "anonymousId": "undefined"},
        ],
    )
    process(engine)
    attribution = attributed(engine)
    assert [attribution[seq] for seq in sorted(attribution)] == [None, None, None, "prf_4"]
    with engine.connect() as conn:
        unattributed = conn.execute(
            sa.text("SELECT unattributed_events FROM processor_state WHERE name = 'main'")
        ).scalar()
        assert lag(conn).events == 0
    assert unattributed == 3
    with pytest.raises(NotFound):
        profile(engine, "anonymous_id:nobody")


def test_email_limit_drops_the_extra_email(engine: Engine) -> None:
    rules = IdentityRules(limits={"user_id": 1, "email": 2})
    ingest(
        engine,
        [
            {"type": "identify", "userId": "u", "traits": {"email": f"e{i}@x.example"}}
            for i in range(4)
        ],
    )
    process(engine, pipeline(rules))
    emails = [
        i["value"]
        for i in profile(engine, "user_id:u", rules)["identities"]
        if i["type"] == "email"
    ]
    assert emails == ["e0@x.example", "e1@x.example"]


def test_identifier_cap_and_merge_cap(engine: Engine) -> None:
    rules = IdentityRules(max_merges_per_profile=2)
    ingest(engine, [{"type": "page", "anonymousId": f"a{i}"} for i in range(4)])
    ingest(engine, [{"type": "identify", "userId": "u", "anonymousId": f"a{i}"} for i in range(4)])
    process(engine, pipeline(rules))
    merges = profile(engine, "user_id:u", rules)["merged_ids"]
    assert len(merges) == 2


def test_alias_joins_history_and_cycles_are_harmless(engine: Engine) -> None:
    ingest(
        engine,
        [
            {"type": "track", "anonymousId": "old-anon", "event": "Viewed"},
            {"type": "track", "userId": "new-user", "event": "Logged In"},
            {"type": "alias", "previousId": "old-anon", "userId": "new-user"},
            {"type": "alias", "previousId": "new-user", "userId": "new-user"},
            {"type": "alias", "previousId": "nobody-yet", "userId": "new-user"},
        ],
    )
    process(engine)
    user = profile(engine, "user_id:new-user")
    assert user["event_count"] == 5
    assert ("anonymous_id", "nobody-yet") in {(i["type"], i["value"]) for i in user["identities"]}
    assert profile(engine, "anonymous_id:old-anon")["id"] == user["id"]


def test_latest_timestamp_wins_regardless_of_arrival(engine: Engine) -> None:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    ingest(
        engine,
        [
            {
                "type": "identify",
                "userId": "u",
                "traits": {"plan": "pro"},
                "timestamp": now.isoformat(),
            }
        ],
    )
    late = (now - timedelta(days=3)).isoformat()  # arrives later, happened earlier
    ingest(
        engine,
        [
            {
                "type": "identify",
                "userId": "u",
                "traits": {"plan": "trial", "city": "Leeds"},
                "timestamp": late,
            }
        ],
    )
    process(engine)
    traits = profile(engine, "user_id:u")["traits"]
    assert traits == {"plan": "pro", "city": "Leeds"}


def test_first_and_source_priority_policies(engine: Engine) -> None:
    policies = {"signup_channel": "first", "tier": "sources:crm,web"}
    ingest(
        engine,
        [{"type": "identify", "userId": "u", "traits": {"signup_channel": "ads", "tier": "gold"}}],
        source="crm",
    )
    ingest(
        engine,
        [
            {
                "type": "identify",
                "userId": "u",
                "traits": {"signup_channel": "email", "tier": "bronze"},
            }
        ],
        source="web",
    )
    process(engine, pipeline(policies=policies))
    body = profile(engine, "user_id:u")
    assert body["traits"] == {"signup_channel": "ads", "tier": "gold"}
    assert body["provenance"]["tier"]["source"] == "crm"


def test_merged_traits_follow_policy_and_accounts_move(engine: Engine) -> None:
    base = datetime(2026, 11, 1, tzinfo=UTC)
    ingest(
        engine,
        [
            {
                "type": "identify",
                "anonymousId": "a",
                "traits": {"name": "Old"},
                "context": {"traits": {"city": "York"}},
                "timestamp": base.isoformat(),
            },
            {
                "type": "group",
                "anonymousId": "a",
                "groupId": "acme",
                "traits": {"plan": "b2b"},
                "timestamp": base.isoformat(),
            },
            {
                "type": "identify",
                "userId": "u",
                "traits": {"name": "New"},
                "timestamp": (base + timedelta(hours=1)).isoformat(),
            },
            {
                "type": "identify",
                "userId": "u",
                "anonymousId": "a",
                "timestamp": (base + timedelta(hours=2)).isoformat(),
            },
        ],
    )
    process(engine)
    body = profile(engine, "user_id:u")
    assert body["traits"] == {"name": "New", "city": "York"}
    assert [(a["group_id"], a["traits"]) for a in body["accounts"]] == [("acme", {"plan": "b2b"})]


def test_duplicates_are_processed_once(engine: Engine) -> None:
    ingest(engine, [{"type": "track", "userId": "u", "event": "E", "messageId": "same"}] * 3)
    process(engine)
    assert profile(engine, "user_id:u")["event_count"] == 1


@pytest.mark.parametrize(
    "where", ["third event", "between identity and profiles", "before position"]
)
def test_failure_between_stages_applies_nothing_and_loses_nothing(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    messages = [
        {"type": "page", "anonymousId": "a"},
        {"type": "identify", "anonymousId": "a", "userId": "u", "traits": {"plan": "pro"}},
        {"type": "track", "userId": "u", "event": "E"},
        {"type": "identify", "userId": "v", "anonymousId": "b"},
        {"type": "identify", "userId": "u", "anonymousId": "b"},
    ]
    ingest(engine, messages)
    process(engine)  # the reference: a clean run
    expected = snapshot(engine)
    with engine.begin() as conn:
        reset_derived_state(conn)

    armed = {"on": True}

    def fail() -> None:
        if armed["on"]:
            armed["on"] = False
            raise RuntimeError(f"injected failure: {where}")

    if where == "third event":
        original_apply = Pipeline._apply
        seen = {"n": 0}

        def apply(self, item, *state):  # type: ignore[no-untyped-def]
            seen["n"] += 1
            if seen["n"] == 3:
                fail()
            return original_apply(self, item, *state)

        monkeypatch.setattr(Pipeline, "_apply", apply)
    elif where == "between identity and profiles":
        original_flush = ProfileBatch.flush

        def flush(self, conn, resolve):  # type: ignore[no-untyped-def]
            fail()  # the identity stage has written; the profile stage has not
            return original_flush(self, conn, resolve)

        monkeypatch.setattr(ProfileBatch, "flush", flush)
    else:
        original_profile_flush = ProfileBatch.flush

        def flush_then_fail(self, conn, resolve):  # type: ignore[no-untyped-def]
            original_profile_flush(self, conn, resolve)
            fail()  # every stage has written; the position has not moved

        monkeypatch.setattr(ProfileBatch, "flush", flush_then_fail)

    with pytest.raises(RuntimeError, match="injected"):
        process(engine)
    with engine.connect() as conn:
        assert lag(conn).position == 0
        assert conn.execute(sa.text("SELECT count(*) FROM profiles")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM identities")).scalar() == 0
    process(engine)  # the retry applies every event exactly once
    assert snapshot(engine) == expected


@pytest.mark.slow
def test_ten_thousand_anonymous_events_join_a_known_user(engine: Engine) -> None:
    ingest(
        engine,
        [
            {
                "type": "track",
                "anonymousId": "lurker",
                "event": "Product Viewed",
                "properties": {"i": i},
            }
            for i in range(10_000)
        ],
    )
    process(engine)
    ingest(engine, [{"type": "identify", "userId": "u", "traits": {"email": "lurker@example.com"}}])
    ingest(engine, [{"type": "identify", "userId": "u", "anonymousId": "lurker"}])
    process(engine)
    user = profile(engine, "email:lurker@example.com")
    assert user["event_count"] == 10_002
    assert set(attributed(engine).values()) == {user["id"]}
