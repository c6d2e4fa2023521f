"""Delivery end to end: events tracked through the real API reach a real HTTP receiver on
loopback through the outbox, the processor and the delivery worker, on both backends.

The flaky receiver fails at random (500s, 429 with Retry-After, answers too late, reset
connections) and is down for a while; afterwards every message has arrived, each person's
in order, and a duplicate is only ever a repeat of the same idempotency key.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from tessera.activation.models import outbox
from tessera.auth.tokens import create_token
from tessera.config import Settings
from tessera.processor import Pipeline, reset_derived_state, run_maintenance, run_once
from tessera.worker_process import settings_environment
from tests.activation.receiver import Faults, Receiver, receiver
from tests.conftest import LiveTessera, start_live
from tests.ingest.helpers import post

pytestmark = pytest.mark.slow

FAST = {
    "delivery_retry_base_seconds": 0.05,
    "delivery_retry_max_seconds": 0.4,
    "delivery_poll_seconds": 0.05,
    "delivery_probe_seconds": 0.3,
    "delivery_pause_after_failures": 8,
    "delivery_lease_seconds": 2.0,
}


@pytest.fixture
def fast(settings: Settings, engine: Engine) -> Iterator[LiveTessera]:
    yield from start_live(settings.model_copy(update=FAST), engine)


class Admin:
    def __init__(self, live: LiveTessera, role: str = "admin") -> None:
        with live.engine.begin() as conn:
            token, _ = create_token(conn, name=f"delivery-{role}", role=role)
        self.client = httpx.Client(
            base_url=live.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = self.client.request(method, path, json=body)
        assert response.status_code == status, f"{method} {path}: {response.text}"
        return response.json() if response.content else None


def wait_for(check: Callable[[], bool], *, timeout: float = 60, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def webhook(name: str, url: str, **config: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "webhook",
        "config": {"url": url, **config},
        "subscriptions": [{"type": "events", "event_names": ["Order Completed"]}],
    }


def orders(people: int, each: int) -> list[dict[str, Any]]:
    """`each` orders per person, interleaved across people, numbered per person."""
    return [
        {
            "type": "track",
            "userId": f"person-{p}",
            "event": "Order Completed",
            "messageId": f"order-{p}-{n}",
            "properties": {"n": n, "total": 10 + n},
        }
        for n in range(each)
        for p in range(people)
    ]


def send(live: LiveTessera, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 100):
        response = post(live, "/v1/batch", {"batch": events[start : start + 100]})
        assert response.status_code == 200, response.text


def first_arrivals(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    first = []
    for message in messages:
        if message["messageId"] not in seen:
            seen.add(message["messageId"])
            first.append(message)
    return first


def assert_complete_and_ordered(hook: Receiver, sent: list[dict[str, Any]]) -> None:
    received = hook.messages()
    ids = [message["messageId"] for message in received]
    assert set(ids) == {event["messageId"] for event in sent}
    by_person: dict[str, list[int]] = {}
    for message in first_arrivals(received):
        event = message["event"]
        by_person.setdefault(event["userId"], []).append(event["properties"]["n"])
    for person, numbers in by_person.items():
        assert numbers == sorted(numbers), f"{person}'s messages arrived out of order: {numbers}"


def test_events_reach_a_signed_webhook_with_their_idempotency_key(fast: LiveTessera) -> None:
    admin = Admin(fast)
    with receiver(secret="s3cret") as hook:
        destination = admin.ok(
            "POST",
            "/api/v1/destinations",
            webhook("orders", hook.url, secret="s3cret", headers={"X-Team": "growth"}),
            status=201,
        )
        assert destination["config"]["secret"] == "********"
        events = orders(3, 2)
        send(fast, [*events, {"type": "track", "userId": "person-0", "event": "Other"}])
        wait_for(lambda: len(hook.messages()) >= 6, what="six orders")
        assert hook.bad_signatures == 0
        first = hook.accepted[0]
        body = first.json()
        assert first.headers["idempotency-key"] == body["messageId"]
        assert first.headers["x-team"] == "growth"
        assert body["kind"] == "event"
        assert body["event"]["event"] == "Order Completed"
        assert body["profile"]["identities"]["user_id"] == [body["event"]["userId"]]
        assert_complete_and_ordered(hook, events)
        # A tampered body does not verify.
        from tessera.activation.webhook import verify

        header = first.headers["x-tessera-signature"]
        assert verify("s3cret", header, first.body)
        assert not verify("s3cret", header, first.body + b" ")
        assert not verify("other", header, first.body)
        wait_for(
            lambda: (
                admin.ok("GET", f"/api/v1/destinations/{destination['id']}")["stats"]["sent"] == 6
            ),
            what="the counters",
        )
        stats = admin.ok("GET", f"/api/v1/destinations/{destination['id']}")["stats"]
        assert stats["pending"] == 0 and stats["latency_ms_p95"] is not None
        metrics = httpx.get(f"{fast.url}/metrics", timeout=10).text
        assert f'tessera_delivery_sent_total{{destination="{destination["id"]}"' in metrics


@pytest.mark.parametrize("batch_size", [1, 7])
def test_a_flaky_receiver_that_goes_down_gets_everything_in_order(
    fast: LiveTessera, batch_size: int
) -> None:
    admin = Admin(fast)
    faults = Faults(
        error_500=0.15, throttle_429=0.05, too_slow=0.04, reset=0.06, slow_seconds=0.8, seed=3
    )
    with receiver(faults=faults) as hook:
        destination = admin.ok(
            "POST",
            "/api/v1/destinations",
            webhook("flaky", hook.url, timeout_seconds=0.4, batch_size=batch_size, concurrency=4),
            status=201,
        )
        events = orders(12, 10)
        send(fast, events[:60])
        wait_for(lambda: len(hook.messages()) >= 20, what="the first deliveries")
        hook.down()
        send(fast, events[60:])
        # Down: calls fail in a row until the destination pauses (no hot retries).
        wait_for(
            lambda: (
                admin.ok("GET", f"/api/v1/destinations/{destination['id']}")["status"] == "paused"
            ),
            what="the pause",
        )
        paused = admin.ok("GET", f"/api/v1/destinations/{destination['id']}")
        assert "in a row" in paused["paused_reason"]
        requests_while_paused = hook.requests
        time.sleep(1.0)
        hook.up()
        # The next probe finds it back, and the backlog drains.
        wait_for(
            lambda: {m["messageId"] for m in hook.messages()} >= {e["messageId"] for e in events},
            timeout=90,
            what="every message after the receiver came back",
        )
        assert hook.requests > requests_while_paused
        assert_complete_and_ordered(hook, events)
        path = f"/api/v1/destinations/{destination['id']}"
        # Outcomes are recorded just after the receiver answers.
        wait_for(lambda: admin.ok("GET", path)["stats"]["pending"] == 0, what="the records")
        after = admin.ok("GET", path)
        assert after["status"] == "active"
        assert after["stats"]["failed"] > 0 and after["stats"]["dead"] == 0
        assert hook.refused > 0


def test_permanent_refusals_become_dead_letters_that_replay_once(fast: LiveTessera) -> None:
    admin = Admin(fast)
    with receiver(secret="right") as hook:
        # The wrong secret: the receiver answers 401, which retrying cannot fix.
        destination = admin.ok(
            "POST",
            "/api/v1/destinations",
            webhook("misconfigured", hook.url, secret="wrong"),
            status=201,
        )
        path = f"/api/v1/destinations/{destination['id']}"
        events = orders(2, 2)
        send(fast, events)
        wait_for(
            lambda: len(admin.ok("GET", f"{path}/dead-letters")["items"]) == 4,
            what="four dead letters",
        )
        dead = admin.ok("GET", f"{path}/dead-letters")["items"]
        assert all(
            item["last_status"] == 401 and "bad signature" in item["last_error"] for item in dead
        )
        assert hook.messages() == []
        # Fix the secret; replay one, then all, then all again.
        admin.ok("PATCH", path, {"config": {"secret": "right"}})
        one = admin.ok("POST", f"{path}/dead-letters/{dead[0]['id']}/replay")
        assert one == {"replayed": 1, "skipped": 0}
        wait_for(lambda: len(hook.messages()) == 1, what="the replayed one")
        every = admin.ok("POST", f"{path}/dead-letters/replay", {})
        assert every["replayed"] == 3
        again = admin.ok("POST", f"{path}/dead-letters/replay", {"ids": [d["id"] for d in dead]})
        assert again == {"replayed": 0, "skipped": 4}
        wait_for(lambda: len(hook.messages()) == 4, what="all four")
        assert sorted(m["messageId"] for m in hook.messages()) == sorted(
            e["messageId"] for e in events
        )
        # The worker records a call's outcome just after the receiver answered it.
        wait_for(lambda: admin.ok("GET", path)["stats"]["sent"] == 4, what="the sent count")
        stats = admin.ok("GET", path)["stats"]
        assert stats["replayed"] == 4 and stats["dead_letters"] == 0 and stats["sent"] == 4


def test_messages_past_their_maximum_age_become_dead_letters(
    settings: Settings, engine: Engine
) -> None:
    aged = settings.model_copy(update={**FAST, "delivery_max_age_seconds": 1.0})
    for live in start_live(aged, engine):
        admin = Admin(live)
        with receiver() as hook:
            hook.down()
            destination = admin.ok(
                "POST", "/api/v1/destinations", webhook("gone", hook.url), status=201
            )
            send(live, orders(1, 2))
            path = f"/api/v1/destinations/{destination['id']}/dead-letters"

            def dead(admin: Admin = admin, path: str = path) -> list[dict[str, Any]]:
                return list(admin.ok("GET", path)["items"])

            wait_for(lambda: len(dead()) == 2, what="expiry")
            reasons = [item["last_error"] for item in dead()]
            assert all("maximum age" in reason for reason in reasons), reasons


def test_consent_blocks_people_without_it_and_counts_them(fast: LiveTessera) -> None:
    admin = Admin(fast)
    with receiver() as hook:
        body = webhook("marketing", hook.url)
        body["consent_categories"] = ["marketing"]
        destination = admin.ok("POST", "/api/v1/destinations", body, status=201)
        consent = {"consent": {"categoryPreferences": {"marketing": True}}}
        refused = {"consent": {"categoryPreferences": {"marketing": False}}}
        send(
            fast,
            [
                {"type": "identify", "userId": "yes", "context": consent},
                {"type": "identify", "userId": "no", "context": refused},
                {"type": "track", "userId": "yes", "event": "Order Completed"},
                {"type": "track", "userId": "no", "event": "Order Completed"},
                {"type": "track", "userId": "silent", "event": "Order Completed"},
            ],
        )
        path = f"/api/v1/destinations/{destination['id']}"
        wait_for(lambda: admin.ok("GET", path)["stats"]["blocked"] == 2, what="two blocked")
        wait_for(lambda: len(hook.messages()) == 1, what="one delivery")
        assert hook.messages()[0]["event"]["userId"] == "yes"
        wait_for(lambda: admin.ok("GET", path)["stats"]["sent"] == 1, what="the sent count")
        stats = admin.ok("GET", path)["stats"]
        assert stats["failed"] == 0 and stats["sent"] == 1
        blocked = admin.ok("GET", f"{path}/messages?state=blocked")["items"]
        assert {item["last_error"] for item in blocked} == {"no consent"}


def test_audience_changes_and_trait_changes_with_hashed_email(fast: LiveTessera) -> None:
    admin = Admin(fast)
    audience = admin.ok(
        "POST",
        "/api/v1/audiences",
        {"name": "Big spenders", "definition": {"trait": "plan", "op": "eq", "value": "pro"}},
        status=201,
    )
    with receiver() as hook:
        admin.ok(
            "POST",
            "/api/v1/destinations",
            {
                "name": "ads",
                "type": "webhook",
                "config": {"url": hook.url},
                "subscriptions": [
                    {"type": "audience", "audiences": [audience["id"]]},
                    {"type": "traits", "traits": ["plan"]},
                ],
                "mapping": {
                    "fields": [
                        {
                            "source": "profile.traits.email",
                            "target": "email_sha256",
                            "hash": "email",
                        }
                    ]
                },
            },
            status=201,
        )
        email = {"email": "  Jo@Example.COM "}
        send(fast, [{"type": "identify", "userId": "jo", "traits": {**email, "plan": "pro"}}])
        wait_for(lambda: len(hook.messages()) >= 2, what="entered and plan")
        send(fast, [{"type": "identify", "userId": "jo", "traits": {"plan": "free"}}])
        wait_for(lambda: len(hook.messages()) >= 4, what="exited and plan")
        kinds = [m["kind"] for m in hook.messages()]
        assert sorted(kinds) == sorted(
            ["audience.entered", "traits.changed", "audience.exited", "traits.changed"]
        )
        entered = next(m for m in hook.messages() if m["kind"] == "audience.entered")
        assert entered["audience"] == {"id": audience["id"], "name": "Big spenders"}
        assert entered["email_sha256"] == hashlib.sha256(b"jo@example.com").hexdigest()
        assert "email" not in entered["profile"]["traits"]
        changed = [m["traits"] for m in hook.messages() if m["kind"] == "traits.changed"]
        assert changed == [{"plan": "pro"}, {"plan": "free"}]


def test_the_segment_forwarder_feeds_another_tessera(
    fast: LiveTessera, settings: Settings, tmp_path: Any
) -> None:
    from tessera.eventlog import list_events
    from tessera.store import create_store_engine
    from tessera.store.migrate import upgrade

    other_engine = create_store_engine(f"sqlite:///{tmp_path / 'other.db'}")
    upgrade(other_engine)
    other_settings = settings.model_copy(
        update={"database_url": f"sqlite:///{tmp_path / 'other.db'}"}
    )
    for other in start_live(other_settings, other_engine):
        admin = Admin(fast)
        admin.ok(
            "POST",
            "/api/v1/destinations",
            {
                "name": "other tessera",
                "type": "segment",
                "config": {"endpoint": other.url, "write_key": other.write_key, "batch_size": 10},
                "subscriptions": [{"type": "events", "event_types": ["track"]}],
            },
            status=201,
        )
        events = orders(2, 3)
        send(fast, events)

        def forwarded() -> list[dict[str, Any]]:
            with other_engine.connect() as conn:
                return list_events(conn, limit=100)

        wait_for(lambda: len(forwarded()) == 6, what="the forwarded events")
        assert {e["message_id"] for e in forwarded()} == {e["messageId"] for e in events}
        assert {e["payload"]["event"] for e in forwarded()} == {"Order Completed"}
    other_engine.dispose()


def test_bad_destinations_are_refused_with_the_reason(fast: LiveTessera) -> None:
    admin = Admin(fast)

    def refused(body: dict[str, Any], status: int, *words: str) -> None:
        response = admin.client.post("/api/v1/destinations", json=body)
        assert response.status_code == status, response.text
        for word in words:
            assert word in response.text, response.text

    refused(
        {**webhook("x", "http://127.0.0.1:9/"), "type": "carrier-pigeon"}, 400, "carrier-pigeon"
    )
    refused(webhook("x", "ftp://example.com/"), 400, "url", "ftp://")
    refused(
        {**webhook("x", "http://127.0.0.1:9/"), "subscriptions": [{"type": "all"}]},
        400,
        "$.subscriptions[0].type",
    )
    refused(
        {
            **webhook("x", "http://127.0.0.1:9/"),
            "subscriptions": [{"type": "audience", "audiences": ["aud_nope"]}],
        },
        400,
        "aud_nope",
    )
    refused(
        {
            **webhook("x", "http://127.0.0.1:9/"),
            "mapping": {"fields": [{"source": "profile.traits.email", "hash": "md5"}]},
        },
        400,
        "$.mapping.fields[0].hash",
    )
    admin.ok("POST", "/api/v1/destinations", webhook("x", "http://127.0.0.1:9/"), status=201)
    refused(webhook("x", "http://127.0.0.1:9/"), 409, "exists")
    analyst = Admin(fast, "analyst")
    response = analyst.client.post("/api/v1/destinations", json=webhook("y", "http://127.0.0.1:9/"))
    assert response.status_code == 403
    assert analyst.client.get("/api/v1/destinations").status_code == 200
    types = admin.ok("GET", "/api/v1/destination-types")
    assert {t["name"] for t in types} >= {"webhook", "segment", "file"}
    webhook_type = next(t for t in types if t["name"] == "webhook")
    assert "url" in webhook_type["config_schema"]["properties"]


def test_test_connection_and_manual_resume(fast: LiveTessera) -> None:
    admin = Admin(fast)
    with receiver() as hook:
        destination = admin.ok(
            "POST", "/api/v1/destinations", webhook("probe", hook.url), status=201
        )
        path = f"/api/v1/destinations/{destination['id']}"
        assert admin.ok("POST", f"{path}/test")["ok"] is True
        hook.down()
        check = admin.ok("POST", f"{path}/test")
        assert check["ok"] is False and "127.0.0.1" in check["detail"]
        resumed = admin.ok("POST", f"{path}/resume")
        assert resumed["status"] == "active"


def test_rebuild_queues_nothing_again(live: LiveTessera) -> None:
    admin = Admin(live)
    admin.ok("POST", "/api/v1/destinations", webhook("once", "http://127.0.0.1:9/"), status=201)
    send(live, orders(2, 2))
    wait_for(lambda: count_outbox(live.engine) == 4, what="four queued")
    pipeline = Pipeline.from_settings(live.settings, activate=False)
    live.app.state.processor.stop()
    with live.engine.begin() as conn:
        reset_derived_state(conn)
    while run_once(live.engine, pipeline):
        pass
    while run_maintenance(live.engine, pipeline):
        pass
    assert count_outbox(live.engine) == 4


def count_outbox(engine: Engine) -> int:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one())


def start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    environment = {**os.environ, **settings_environment(settings)}
    return subprocess.Popen(
        [sys.executable, "-m", "tessera", "worker"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_a_killed_delivery_worker_loses_nothing(settings: Settings, engine: Engine) -> None:
    """SIGKILL the worker while calls are in flight; another worker takes the destination
    over when the lease runs out and sends what was not confirmed: all arrives, in order."""
    ingest_only = settings.model_copy(update={**FAST, "processor_mode": "off"})
    worker_settings = ingest_only.model_copy(update={"delivery_lease_seconds": 1.0})
    for live in start_live(ingest_only, engine):
        admin = Admin(live)
        with receiver(faults=Faults(latency=0.05)) as hook:
            admin.ok(
                "POST",
                "/api/v1/destinations",
                webhook("killed", hook.url, concurrency=2),
                status=201,
            )
            events = orders(6, 15)
            send(live, events)
            first = start_worker(worker_settings)
            try:
                wait_for(lambda: len(hook.messages()) >= 20, what="deliveries under way")
                first.send_signal(signal.SIGKILL)
                first.wait(10)
                at_kill = len(hook.messages())
                assert at_kill < len(events), "the worker finished before it was killed"
                second = start_worker(worker_settings)
                try:
                    wanted = {e["messageId"] for e in events}

                    def arrived(hook: Receiver = hook, wanted: set[str] = wanted) -> bool:
                        return {m["messageId"] for m in hook.messages()} >= wanted

                    wait_for(arrived, timeout=90, what="the second worker to deliver the rest")
                finally:
                    second.terminate()
                    assert second.wait(20) == 0
            finally:
                if first.poll() is None:
                    first.kill()
            assert_complete_and_ordered(hook, events)
            # Duplicates only ever repeat an idempotency key; each header matches its body.
            for item in hook.accepted:
                assert item.headers["idempotency-key"] == item.json()["messageId"]


def test_file_destinations_write_messages_and_member_lists_read_back_by_duckdb(
    fast: LiveTessera, tmp_path: Any
) -> None:
    import duckdb

    admin = Admin(fast)
    audience = admin.ok(
        "POST",
        "/api/v1/audiences",
        {"name": "Buyers", "definition": {"event": "Order Completed", "performed": True}},
        status=201,
    )
    stream_dir, members_dir = tmp_path / "stream", tmp_path / "members"
    admin.ok(
        "POST",
        "/api/v1/destinations",
        {
            "name": "order files",
            "type": "file",
            "config": {"url": str(stream_dir), "format": "parquet", "interval_seconds": 1},
            "subscriptions": [{"type": "events", "event_names": ["Order Completed"]}],
        },
        status=201,
    )
    events = orders(4, 3)
    send(fast, events)

    def stream_ids() -> set[str]:
        if not stream_dir.exists() or not list(stream_dir.glob("*.parquet")):
            return set()
        query = f"select message_id from read_parquet('{stream_dir}/*.parquet')"
        return {row[0] for row in duckdb.sql(query).fetchall()}

    wait_for(lambda: stream_ids() == {e["messageId"] for e in events}, what="the message files")
    assert not list(stream_dir.glob(".*")), "a temporary file was left behind"
    wait_for(
        lambda: admin.ok("GET", f"/api/v1/audiences/{audience['id']}")["status"] == "ready",
        what="the audience",
    )
    admin.ok(
        "POST",
        "/api/v1/destinations",
        {
            "name": "buyer lists",
            "type": "file",
            "config": {
                "url": str(members_dir),
                "format": "csv",
                "content": "audience_members",
                "audience_id": audience["id"],
                "interval_seconds": 60,
            },
        },
        status=201,
    )
    wait_for(lambda: bool(list(members_dir.glob("*.csv"))), what="the member list")
    [listing] = list(members_dir.glob("*.csv"))
    rows = duckdb.sql(f"select profile_id, identities from read_csv('{listing}')").fetchall()
    assert len(rows) == 4
    assert {orjson_loads(identities)["user_id"][0] for _, identities in rows} == {
        f"person-{p}" for p in range(4)
    }


def orjson_loads(text: str) -> Any:
    import orjson

    return orjson.loads(text)


def test_a_new_audience_subscription_first_gets_the_current_members(fast: LiveTessera) -> None:
    admin = Admin(fast)
    audience = admin.ok(
        "POST",
        "/api/v1/audiences",
        {"name": "Pro", "definition": {"trait": "plan", "op": "eq", "value": "pro"}},
        status=201,
    )
    send(
        fast, [{"type": "identify", "userId": f"p{i}", "traits": {"plan": "pro"}} for i in range(3)]
    )
    wait_for(
        lambda: admin.ok("GET", f"/api/v1/audiences/{audience['id']}")["size"] == 3,
        what="three members",
    )
    with receiver() as hook:
        destination = admin.ok(
            "POST",
            "/api/v1/destinations",
            {
                "name": "sync",
                "type": "webhook",
                "config": {"url": hook.url},
                "subscriptions": [{"type": "audience", "audiences": [audience["id"]]}],
            },
            status=201,
        )
        wait_for(lambda: len(hook.messages()) == 3, what="the current members")
        assert {m["cause"] for m in hook.messages()} == {"subscribed"}
        assert {m["profile"]["identities"]["user_id"][0] for m in hook.messages()} == {
            "p0",
            "p1",
            "p2",
        }
        # Saving the same subscription again sends nobody twice; a new member follows.
        path = f"/api/v1/destinations/{destination['id']}"
        admin.ok("PATCH", path, {"name": "sync again"})
        send(fast, [{"type": "identify", "userId": "p3", "traits": {"plan": "pro"}}])
        wait_for(lambda: len(hook.messages()) == 4, what="the new member")
        time.sleep(0.5)
        assert len(hook.messages()) == 4
