"""The demo loader against a fake API: retries, errors, batch limits and per-person order."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

import httpx
import orjson
import pytest

from tessera.demo import Dataset, LoadError, generate, send
from tessera.demo.loader import MAX_BODY_BYTES, encode_batches, retry_after, split_lanes


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return generate(seed=11, people=60)


class FakeApi:
    """Records every batch it accepts; `answers` are served first, then 200s."""

    def __init__(self, answers: list[httpx.Response] | None = None):
        self.answers = list(answers or [])
        self.received: list[dict[str, Any]] = []
        self.requests = 0
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/batch"
        assert request.headers["authorization"].startswith("Basic ")
        with self.lock:
            self.requests += 1
            if self.answers:
                return self.answers.pop(0)
            self.received.extend(orjson.loads(request.content)["batch"])
        return httpx.Response(200, json={"success": True})


def test_everything_arrives_once_with_each_household_in_order(dataset: Dataset) -> None:
    api = FakeApi()
    sent = send(dataset, base_url="http://tessera.test/", write_key="k", batch_size=7,
                concurrency=4, transport=httpx.MockTransport(api))  # fmt: skip
    assert sent == len(dataset.messages) == len(api.received)
    assert sorted(m["messageId"] for m in api.received) == sorted(
        m["messageId"] for m in dataset.messages
    )
    owner = {m["messageId"]: o for m, o in zip(dataset.messages, dataset.owners, strict=True)}
    arrivals: dict[int, list[str]] = defaultdict(list)
    for message in api.received:
        arrivals[dataset.people[owner[message["messageId"]]].household].append(message["timestamp"])
    assert all(stamps == sorted(stamps) for stamps in arrivals.values())


def test_429_and_503_are_retried_after_retry_after(dataset: Dataset) -> None:
    api = FakeApi([
        httpx.Response(429, headers={"Retry-After": "0.2"}, json={"code": "too_many_requests"}),
        httpx.Response(503, headers={"Retry-After": "0"}, json={"code": "service_unavailable"}),
    ])  # fmt: skip
    progress: list[int] = []
    began = time.monotonic()
    sent = send(dataset, base_url="http://tessera.test", write_key="k", concurrency=1,
                progress=progress.append, transport=httpx.MockTransport(api))  # fmt: skip
    assert time.monotonic() - began >= 0.2
    assert sent == sum(progress) == len(dataset.messages) == len(api.received)
    assert api.requests == len(progress) + 2


def test_another_error_stops_the_load_with_the_response_body(dataset: Dataset) -> None:
    body = {"success": False, "code": "bad_request", "message": "1 of 100 messages were rejected"}
    api = FakeApi([httpx.Response(400, json=body)])
    with pytest.raises(LoadError, match=r"answered 400.*1 of 100 messages were rejected") as info:
        send(dataset, base_url="http://tessera.test", write_key="k", concurrency=3,
             transport=httpx.MockTransport(api))  # fmt: skip
    assert info.value.status == 400 and "bad_request" in info.value.body


def test_a_server_that_stays_overloaded_fails_after_max_attempts(dataset: Dataset) -> None:
    api = FakeApi([httpx.Response(429, headers={"Retry-After": "0"})] * 3)
    with pytest.raises(LoadError, match="after 3 attempts"):
        send(dataset, base_url="http://tessera.test", write_key="k", concurrency=1,
             max_attempts=3, transport=httpx.MockTransport(api))  # fmt: skip


def test_an_unreachable_server_fails_quickly() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    data = generate(seed=1, people=2)
    with pytest.raises(LoadError, match="could not reach"):
        send(data, base_url="http://tessera.test", write_key="k",
             transport=httpx.MockTransport(refuse))  # fmt: skip


def test_batches_respect_the_count_and_the_body_limit() -> None:
    messages = [{"type": "track", "event": "x" * 10_000, "userId": str(n)} for n in range(120)]
    batches = list(encode_batches(messages, 100))
    assert all(len(body) <= MAX_BODY_BYTES for body, _count in batches)
    assert sum(count for _body, count in batches) == 120
    assert [len(orjson.loads(body)["batch"]) for body, _ in batches] == [
        count for _, count in batches
    ]
    small = list(encode_batches(messages[:5], 2))
    assert [count for _, count in small] == [2, 2, 1]


def test_lanes_keep_households_together(dataset: Dataset) -> None:
    lanes = split_lanes(dataset, 4)
    assert sum(len(lane) for lane in lanes) == len(dataset.messages)
    lane_of: dict[int, int] = {}
    owner = {m["messageId"]: o for m, o in zip(dataset.messages, dataset.owners, strict=True)}
    for number, lane in enumerate(lanes):
        for message in lane:
            household = dataset.people[owner[message["messageId"]]].household
            assert lane_of.setdefault(household, number) == number


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, 1.0), ("2", 2.0), ("0.5", 0.5), ("-3", 0.0), ("9999", 60.0), ("soon", 1.0),
     ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)  # fmt: skip
def test_retry_after(header: str | None, seconds: float) -> None:
    assert retry_after(header) == seconds
