"""The schema and dashboard API on a live server, whose processor runs the schema stage
and the recount job as a default `tessera serve` does (from their entry points)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tessera.auth.tokens import create_token
from tessera.config import Settings
from tessera.eventlog.service import head_position
from tessera.processor import wait_until_caught_up
from tessera.schema.recount import RecountJob
from tests.conftest import LiveTessera
from tests.ingest.helpers import post
from tests.schema.test_stage import MIXED


class Api:
    def __init__(self, live: LiveTessera, role: str) -> None:
        with live.engine.begin() as conn:
            token, _ = create_token(conn, name=f"schema-{role}", role=role)
        self.client = httpx.Client(
            base_url=live.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def get(self, path: str, status: int = 200, **params: Any) -> Any:
        response = self.client.get(path, params=params)
        assert response.status_code == status, f"GET {path}: {response.text}"
        return response.json()

    def post(self, path: str, body: Any, status: int = 201) -> Any:
        response = self.client.post(path, json=body)
        assert response.status_code == status, f"POST {path}: {response.text}"
        return response.json()


@pytest.fixture
def settings(store_url: str) -> Settings:
    """The live server's: every event's context read, so a few events show it."""
    return Settings(database_url=store_url, processor_mode="thread", schema_context_sample=1)


@pytest.fixture
def admin(live: LiveTessera) -> Iterator[Api]:
    api = Api(live, "admin")
    yield api
    api.client.close()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def recount_now(live: LiveTessera) -> None:
    """What the background job does on its next pass, without waiting for it."""
    with live.engine.begin() as conn:
        conn.execute(sa.text("UPDATE schema_recounts SET next_pass_at = NULL"))
    job = RecountJob(max_interval=timedelta(minutes=5), minutes_retention=timedelta(days=7))
    while job.run(live.engine, now=datetime.now(UTC)):
        pass


PEOPLE = [
    {"type": "identify", "userId": "u2", "traits": {"plan": "pro", "email": "al@example.com"}},
    {"type": "track", "anonymousId": "a9", "event": "Viewed", "properties": {"sku": "s1"}},
    {"type": "identify", "userId": "u2", "anonymousId": "a9"},  # a merge
]


def test_the_dashboard_gathers_the_home_pages_figures(live: LiveTessera, admin: Api) -> None:
    hook = admin.post(
        "/api/v1/destinations",
        {
            "name": "nowhere",
            "type": "webhook",
            "config": {"url": "http://127.0.0.1:9/"},
            "subscriptions": [{"type": "events", "event_names": ["Order Completed"]}],
        },
    )
    pro = admin.post(
        "/api/v1/audiences",
        {"name": "Pro plan", "definition": {"trait": "plan", "op": "eq", "value": "pro"}},
    )
    response = post(live, "/v1/batch", {"batch": MIXED + PEOPLE})
    assert response.status_code == 200, response.text
    wait_until_caught_up(live.engine)
    wait_for(
        lambda: admin.get(f"/api/v1/audiences/{pro['id']}")["status"] == "ready",
        "the audience to be built",
    )
    recount_now(live)
    wait_for(
        lambda: admin.get("/api/v1/dashboard")["destinations"][0]["failed"] >= 1,
        "a failed delivery to a closed port",
    )

    board = admin.get("/api/v1/dashboard")
    sources = {item["source_id"]: item for item in board["events_per_minute"]["sources"]}
    series = sources[live.source.id]
    assert series["total"] == len(MIXED) + len(PEOPLE)
    assert len(series["counts"]) == 24 * 60 + 1
    assert sum(series["counts"][-5:]) == series["total"]  # all of them in the last minutes
    # u1 (with a1, by the alias), a2, u2 (with a9); u1 and u2 have an email.
    assert board["profiles"]["profiles"] == 3
    assert board["profiles"]["identified"] == 2
    assert board["profiles"]["share_identified"] == 0.6667
    assert board["merges_today"]["count"] == 2  # alias a1 -> u1, identify a9 -> u2
    assert [(a["name"], a["size"], a["trend"]) for a in board["audiences"]] == [
        ("Pro plan", 2, [])  # u1 and u2; the trend comes with the hourly snapshots
    ]
    (destination,) = board["destinations"]
    assert destination["id"] == hook["id"]
    assert destination["status"] in ("active", "paused")
    assert destination["sent"] == 0
    assert destination["pending"] + destination["dead_letters"] == 2  # two orders queued
    main = board["processor"]["main"]
    with live.engine.connect() as conn:
        assert main["position"] == head_position(conn)
    assert (main["lag_events"], main["oldest_waiting_seconds"]) == (0, None)

    sales = Api(live, "sales")
    board = sales.get("/api/v1/dashboard")
    assert board["destinations"] is None  # sales may not read destinations
    assert board["profiles"]["profiles"] == 3


def test_the_schema_routes_answer_what_was_seen(live: LiveTessera, admin: Api) -> None:
    response = post(live, "/v1/batch", {"batch": MIXED})
    assert response.status_code == 200, response.text
    wait_until_caught_up(live.engine)
    support = Api(live, "support")

    page = support.get("/api/v1/schema/events", limit=2)
    assert [(i["type"], i["name"]) for i in page["items"]] == [("alias", None), ("group", None)]
    rest = support.get("/api/v1/schema/events", cursor=page["next_cursor"], limit=10)
    assert [(i["type"], i["name"]) for i in rest["items"]][-1] == ("track", "Order Completed")
    assert rest["next_cursor"] is None
    found = support.get("/api/v1/schema/events", search="order")["items"]
    assert [(i["name"], i["count"]) for i in found] == [("Order Completed", 2)]

    order = support.get("/api/v1/schema/events/properties", name="Order Completed")
    assert {p["path"]: [t["type"] for t in p["types"]] for p in order["properties"]} == {
        "coupon": ["null"],
        "order_id": ["string"],
        "products": ["array"],
        "total": ["integer", "number"],
    }
    group = support.get("/api/v1/schema/events/properties", type="group")
    assert [p["path"] for p in group["properties"]] == ["name", "seats"]
    traits = support.get("/api/v1/schema/traits")["traits"]
    assert {t["path"]: t["types"][0]["type"] for t in traits}["signed_up"] == "datetime"
    context = support.get("/api/v1/schema/context")
    assert [f["path"] for f in context["fields"]] == ["campaign.medium", "campaign.source"]
    assert context["sample"] == 1
    minutes = support.get("/api/v1/schema/events-per-minute", source_id=live.source.id)
    assert [s["total"] for s in minutes["sources"]] == [len(MIXED)]

    assert (
        "not one this API gave out"
        in support.get("/api/v1/schema/events", 400, cursor="bm9wZQ")["message"]
    )
    assert (
        "GET /api/v1/schema/events"
        in support.get("/api/v1/schema/events/properties", 404, name="Never Sent")["message"]
    )
    assert "need its name" in support.get("/api/v1/schema/events/properties", 400)["message"]
    support.get("/api/v1/schema/events/properties", 422, type="bogus")
    until = datetime.now(UTC)
    assert (
        "is after until"
        in support.get(
            "/api/v1/schema/events-per-minute",
            400,
            since=(until + timedelta(hours=1)).isoformat(),
            until=until.isoformat(),
        )["message"]
    )
    assert (
        "at most"
        in support.get(
            "/api/v1/schema/events-per-minute", 400, since=(until - timedelta(days=9)).isoformat()
        )["message"]
    )
    support.get("/api/v1/schema/events-per-minute", 404, source_id=99999)
