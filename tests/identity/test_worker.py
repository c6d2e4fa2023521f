"""`tessera worker`: killed mid-batch, it loses nothing; another worker carries on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tessera.processor import lag, reset_derived_state
from tessera.processor.claims import lock_position
from tests.identity.helpers import ingest, process, snapshot


def start_worker(store_url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TESSERA_DATABASE_URL": store_url, "TESSERA_PROCESSOR_BATCH_EVENTS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "tessera", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def position(engine: Engine) -> int:
    with engine.connect() as conn:
        return lag(conn).position


@pytest.mark.slow
def test_killed_worker_loses_nothing_and_applies_nothing_twice(
    store_url: str, engine: Engine
) -> None:
    people = 600
    messages = []
    for person in range(people):
        messages += [
            {"type": "track", "anonymousId": f"a{person}", "event": "Viewed"} for _ in range(10)
        ]
        messages.append({"type": "identify", "anonymousId": f"a{person}", "userId": f"u{person}"})
    ingest(engine, messages)
    total = len(messages)

    first = start_worker(store_url)
    deadline = time.monotonic() + 60
    while position(engine) == 0:
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)  # mid-run: possibly inside a batch's transaction
    first.wait(10)
    killed_at = position(engine)
    assert 0 < killed_at < total, "the worker should die part-way through the log"

    second = start_worker(store_url)
    try:
        deadline = time.monotonic() + 120
        while position(engine) < total:
            assert second.poll() is None, second.stderr.read() if second.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(20)

    with engine.connect() as conn:
        attributed = conn.execute(
            sa.text("SELECT count(*), count(DISTINCT seq) FROM event_profiles")
        ).one()
        profiles = conn.execute(
            sa.text("SELECT count(*) FROM profiles WHERE merged_into IS NULL")
        ).scalar()
    assert tuple(attributed) == (total, total)  # each event applied exactly once
    assert profiles == people
    after_kill = snapshot(engine)
    with engine.begin() as conn:
        reset_derived_state(conn)
    process(engine)
    assert snapshot(engine) == after_kill  # the same as one clean, uninterrupted run


def test_two_processes_creating_a_position_row_at_once_both_get_it(engine: Engine) -> None:
    """A new store has no row for a processor's position: the first to hold it creates it.
    One process holds a row it just created; another asks for the same row meanwhile. It
    waits, then holds it in turn (it once failed on the duplicate key, and a failure
    reported by `record_failure` beside a starting worker went uncounted)."""
    errors: list[BaseException] = []
    with engine.begin() as first:
        lock_position(first, "race")

        def second() -> None:
            try:
                with engine.begin() as conn:
                    lock_position(conn, "race")
            except BaseException as exc:  # reported below
                errors.append(exc)

        other = threading.Thread(target=second)
        other.start()
        time.sleep(0.5)  # the second one is waiting for the first one's row by now
    other.join(timeout=30)
    assert not other.is_alive()
    assert errors == []
    with engine.connect() as conn:
        version = conn.execute(
            sa.text("SELECT version FROM processor_state WHERE name = 'race'")
        ).scalar_one()
    assert version == 2  # created by the first, held once by each
