"""The messageId Tessera generates: a UUIDv7, unique, increasing, never deduplicated away."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.ingest.message_ids import MessageIdGenerator, new_message_id
from tessera.ingest.messages import normalise_message
from tests.conftest import LiveTessera
from tests.ingest.helpers import post, stored

NOW_MS = 1_796_000_000_000  # late 2026


def _clock(readings: list[int]) -> Callable[[], int]:
    """A clock that returns `readings` (milliseconds) in turn, as nanoseconds."""
    values: Iterator[int] = iter(readings)
    return lambda: next(values) * 1_000_000 + 999_999


def _entropy(seed: bytes) -> Callable[[int], bytes]:
    """Random bytes that are `seed` over and over, so a test can force a given start."""

    def read(size: int) -> bytes:
        return (seed * (size // len(seed) + 1))[:size]

    return read


def _parts(text: str) -> tuple[int, int]:
    """(milliseconds, 74-bit tail) of a UUIDv7 string, after checking its shape."""
    value = uuid.UUID(text)
    assert str(value) == text  # canonical: 36 characters, lower-case hex, 8-4-4-4-12
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    rand_a = (value.int >> 64) & 0xFFF
    rand_b = value.int & ((1 << 62) - 1)
    return value.int >> 80, rand_a << 62 | rand_b


@given(
    steps=st.lists(st.integers(-5, 5), min_size=1, max_size=300),
    seed=st.binary(min_size=1, max_size=12) | st.just(b"\xff") | st.just(b"\x00"),
)
def test_generated_ids_are_uuid7_strictly_increasing_and_carry_the_time(
    steps: list[int], seed: bytes
) -> None:
    # A clock that repeats milliseconds, moves on, and steps back.
    readings, now = [], NOW_MS
    for step in steps:
        now += step
        readings.append(now)
    generate = MessageIdGenerator(clock_ns=_clock(readings), entropy=_entropy(seed))
    ids = [generate() for _ in readings]

    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # as strings, so the dedupe index takes them at its end
    latest = 0
    for text, reading in zip(ids, readings, strict=True):
        millis, tail = _parts(text)
        latest = max(latest, reading)
        assert millis == latest  # the clock's time; a step back carries on the last one
        assert tail < 1 << 74


def test_a_millisecond_starts_at_random_below_half_the_tail_and_counts_up() -> None:
    generate = MessageIdGenerator(
        clock_ns=_clock([NOW_MS, NOW_MS, NOW_MS + 1]), entropy=_entropy(b"\xff")
    )
    first, second, third = (_parts(generate()) for _ in range(3))
    assert first == (NOW_MS, (1 << 73) - 1)  # all ones, kept below 2**73: room to count
    assert second == (NOW_MS, 1 << 73)
    assert third == (NOW_MS + 1, (1 << 73) - 1)  # a new millisecond draws again


def test_a_millisecond_whose_count_runs_out_borrows_the_next() -> None:
    generate = MessageIdGenerator(clock_ns=_clock([NOW_MS] * 3), entropy=_entropy(b"\x00"))
    first = generate()
    # 2**73 ids in one millisecond cannot be made in a test; put the count at its end.
    generate._tail = (1 << 74) - 1
    after = generate()
    assert first < after
    assert _parts(after) == (NOW_MS + 1, 0)
    assert _parts(generate()) == (NOW_MS + 1, 1)


def test_random_bytes_are_read_ahead_and_a_reset_drops_them() -> None:
    reads: list[int] = []

    def entropy(size: int) -> bytes:
        reads.append(size)
        return os.urandom(size)

    generate = MessageIdGenerator(
        clock_ns=_clock(list(range(NOW_MS, NOW_MS + 500))), entropy=entropy
    )
    for _ in range(400):
        generate()
    assert len(reads) == 1  # one read serves 409 milliseconds, not one read per id
    generate.reset()
    generate()
    assert len(reads) == 2


def generated_id() -> str:
    """The messageId the normaliser gives a message without one."""
    message = {"type": "track", "userId": "u", "event": "E"}
    return normalise_message(message, source_id=1, received_at=datetime.now(UTC))["message_id"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_process_does_not_repeat_its_parents_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same millisecond in parent and child: only fresh random bytes tell them apart.
    monkeypatch.setattr(new_message_id, "_clock_ns", lambda: NOW_MS * 1_000_000)
    new_message_id.reset()
    generated_id()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read)
        os.write(write, generated_id().encode())
        os._exit(0)
    os.close(write)
    ours = generated_id()
    with os.fdopen(read, "rb") as pipe:
        theirs = pipe.read().decode()
    os.waitpid(child, 0)
    monkeypatch.undo()
    new_message_id.reset()
    assert _parts(theirs)[0] == _parts(ours)[0] == NOW_MS
    assert theirs != ours


def test_messages_without_an_id_get_distinct_increasing_uuid7s(live: LiveTessera) -> None:
    anonymous = [{"type": "track", "userId": f"u{i}", "event": "E"} for i in range(60)]
    mixed = [*anonymous[:30], {**anonymous[0], "messageId": "client-1"}, *anonymous[30:]]
    assert post(live, "/v1/batch", {"batch": mixed}).status_code == 200
    assert post(live, "/v1/batch", {"batch": anonymous}).status_code == 200
    assert post(live, "/v1/track", {"userId": "u", "event": "E"}).status_code == 200

    rows = stored(live)  # in log order
    assert len(rows) == 60 + 1 + 60 + 1
    assert all(row["message_id"] == row["payload"]["messageId"] for row in rows)
    generated = [row["message_id"] for row in rows if row["message_id"] != "client-1"]
    assert len(set(generated)) == len(generated)  # none deduplicated away, none repeated
    for text in generated:
        _parts(text)
    # One server gives later messages greater ids, across requests too.
    assert generated == sorted(generated)
