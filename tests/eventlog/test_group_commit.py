"""Group commit and back-pressure, made deterministic by holding the store's write lock."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tessera.config import Settings
from tests.conftest import LiveTessera, start_live
from tests.ingest.helpers import stored


@contextmanager
def write_lock(engine: Engine) -> Iterator[None]:
    """Block every writer of the events table until the block exits."""
    if engine.dialect.name == "sqlite":
        blocker = sqlite3.connect(engine.url.database or "", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    else:
        with engine.connect() as conn:
            conn.execute(sa.text("LOCK TABLE events IN EXCLUSIVE MODE"))
            try:
                yield
            finally:
                conn.rollback()


def ingest_status(live: LiveTessera) -> dict[str, int]:
    body = httpx.get(f"{live.url}/readyz", timeout=10).json()
    return body["ingest"]


def wait_for_queue(live: LiveTessera, expected: int) -> None:
    deadline = time.monotonic() + 20
    while ingest_status(live)["queued_events"] != expected:
        assert time.monotonic() < deadline, f"queue never reached {expected}: {ingest_status(live)}"
        time.sleep(0.05)


@pytest.fixture
def small_queue(settings: Settings, engine: Engine) -> Iterator[LiveTessera]:
    tuned = settings.model_copy(
        update={"ingest_queue_max_events": 5, "ingest_commit_timeout_seconds": 60}
    )
    yield from start_live(tuned, engine)


def test_full_queue_answers_429_with_retry_after_and_recovers(small_queue: LiveTessera) -> None:
    live = small_queue
    batch = {"batch": [{"type": "track", "userId": "u", "event": f"E{i}"} for i in range(5)]}

    async def scenario() -> tuple[int, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(
            base_url=live.url, auth=(live.write_key, ""), timeout=60
        ) as client:
            with write_lock(live.engine):
                waiting = asyncio.create_task(client.post("/v1/batch", json=batch))
                await asyncio.to_thread(wait_for_queue, live, 5)
                refused = await client.post("/v1/track", json={"userId": "u", "event": "Late"})
                await asyncio.sleep(0.2)
                # Not acknowledged while the commit cannot happen.
                assert not waiting.done()
            first = await waiting
            retried = await client.post("/v1/track", json={"userId": "u", "event": "Late"})
            return first.status_code, refused, retried

    first, refused, retried = asyncio.run(scenario())
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert "waiting to be written" in refused.json()["message"]
    assert first == 200
    assert retried.status_code == 200
    assert [r["name"] for r in stored(live)] == [*(f"E{i}" for i in range(5)), "Late"]
    assert ingest_status(live)["rejected_overload_events"] == 1


def test_concurrent_single_calls_share_transactions(live: LiveTessera) -> None:
    async def scenario() -> list[int]:
        async with httpx.AsyncClient(
            base_url=live.url, auth=(live.write_key, ""), timeout=60
        ) as client:
            with write_lock(live.engine):
                tasks = [
                    asyncio.create_task(
                        client.post("/v1/track", json={"userId": f"u{i}", "event": "E"})
                    )
                    for i in range(40)
                ]
                await asyncio.to_thread(wait_for_queue, live, 40)
            return [(await task).status_code for task in tasks]

    assert asyncio.run(scenario()) == [200] * 40
    assert len(stored(live)) == 40
    status = ingest_status(live)
    # The first request may be taken alone before the rest arrive; the others share one commit.
    assert status["commits"] <= 3, status
    assert status["committed_events"] == 40


@pytest.fixture
def small_inflight(settings: Settings, engine: Engine) -> Iterator[LiveTessera]:
    tuned = settings.model_copy(update={"ingest_max_inflight_bytes": 40_000})
    yield from start_live(tuned, engine)


def test_bodies_being_read_are_bounded_by_the_inflight_budget(small_inflight: LiveTessera) -> None:
    """A slow upload holds its reservation; others beyond the budget get 429, not memory."""
    live = small_inflight

    async def scenario() -> tuple[int, httpx.Response, int]:
        release = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            yield b'{"batch": ['
            await release.wait()
            yield b'{"type": "track", "userId": "u", "event": "Slow"}]}'

        async with httpx.AsyncClient(
            base_url=live.url, auth=(live.write_key, ""), timeout=60
        ) as client:
            slow = asyncio.create_task(client.post("/v1/batch", content=slow_body()))
            await asyncio.sleep(0.5)  # the slow upload now holds a 500 KB reservation
            refused = await client.post("/v1/track", json={"userId": "u", "event": "Refused"})
            release.set()
            first = await slow
            after = await client.post("/v1/track", json={"userId": "u", "event": "After"})
            return first.status_code, refused, after.status_code

    first, refused, after = asyncio.run(scenario())
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert "being read" in refused.json()["message"]
    assert (first, after) == (200, 200)
    assert [r["name"] for r in stored(live)] == ["Slow", "After"]
