"""`tessera serve`'s default: the processor in a child process, woken on every commit,
restarted when it dies, stopped with the server."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import Engine

from tessera.config import Settings
from tessera.processor import health, record_failure, wait_until_caught_up
from tessera.worker_process import WorkerProcess, settings_environment
from tests.conftest import LiveTessera, start_live


@pytest.fixture
def live_child(settings: Settings, engine: Engine) -> Iterator[LiveTessera]:
    # poll_seconds is long: if events are processed promptly, the wake pipe did it.
    child_settings = settings.model_copy(
        update={"processor_mode": "process", "processor_poll_seconds": 30.0}
    )
    yield from start_live(child_settings, engine)


def track(live: LiveTessera, user: str, n: int = 1) -> None:
    batch = [{"type": "track", "userId": user, "event": "Viewed"} for _ in range(n)]
    response = httpx.post(
        f"{live.url}/v1/batch", json={"batch": batch}, auth=(live.write_key, ""), timeout=10
    )
    assert response.status_code == 200, response.text


def child_of(live: LiveTessera) -> WorkerProcess:
    assert httpx.get(f"{live.url}/readyz", timeout=10).json()["processor"]["running"] is True
    worker = live.app.state.processor
    assert isinstance(worker, WorkerProcess)
    return worker


def test_events_are_processed_in_a_child_process_woken_by_commits(live_child: LiveTessera) -> None:
    worker = child_of(live_child)
    assert worker.pid is not None and worker.pid != os.getpid()
    started = time.monotonic()
    track(live_child, "child-1", 5)
    wait_until_caught_up(live_child.engine, timeout=20)
    # Woken by the commit, not by its 30 s poll.
    assert time.monotonic() - started < 15
    # The server reports the child's progress from the store.
    ready = httpx.get(f"{live_child.url}/readyz", timeout=10).json()
    assert ready["processor"]["lag_events"] == 0


def test_a_killed_child_is_restarted_and_nothing_is_lost(live_child: LiveTessera) -> None:
    worker = child_of(live_child)
    first_pid = worker.pid
    assert first_pid is not None
    track(live_child, "before-kill", 3)
    wait_until_caught_up(live_child.engine, timeout=20)
    os.kill(first_pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while worker.pid == first_pid or not worker.running:
        assert time.monotonic() < deadline, "the supervisor did not restart the child"
        time.sleep(0.05)
    assert worker.restarts == 1
    track(live_child, "after-kill", 3)
    wait_until_caught_up(live_child.engine, timeout=20)


def test_the_child_stops_with_the_server(settings: Settings, engine: Engine) -> None:
    child_settings = settings.model_copy(update={"processor_mode": "process"})
    lives = start_live(child_settings, engine)
    live = next(lives)
    pid = child_of(live).pid
    assert pid is not None
    with pytest.raises(StopIteration):
        next(lives)  # leaves the server's context: lifespan shutdown
    deadline = time.monotonic() + 20
    while _alive(pid):
        assert time.monotonic() < deadline, "the child outlived the server"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return waited == 0


def test_failed_batches_are_reported_by_any_process(live: LiveTessera) -> None:
    record_failure(live.engine, RuntimeError("the disk is on fire"))
    with live.engine.connect() as conn:
        assert health(conn).failed_batches == 1
    body = httpx.get(f"{live.url}/readyz", timeout=10).json()["processor"]
    assert body["failed_batches"] == 1
    assert "the disk is on fire" in body["last_error"]
    metrics = httpx.get(f"{live.url}/metrics", timeout=10).text
    assert "tessera_processor_failed_batches_total 1" in metrics


def test_settings_reach_the_child_unchanged(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    custom = settings.model_copy(
        update={"trait_policies": {"plan": "first"}, "processor_batch_events": 77}
    )
    # monkeypatch puts back what was set before (the session's TESSERA_SECRET_KEY).
    for key, value in settings_environment(custom).items():
        monkeypatch.setenv(key, value)
    again = Settings()
    assert again.model_dump() == custom.model_dump()
    assert again.secret_key is not None and custom.secret_key is not None
    assert again.secret_key.get_secret_value() == custom.secret_key.get_secret_value()


@pytest.fixture
def live_stages(settings: Settings, engine: Engine) -> Iterator[LiveTessera]:
    child_settings = settings.model_copy(
        update={"processor_mode": "process", "processor_derived": "separate"}
    )
    yield from start_live(child_settings, engine)


def test_separate_stages_run_in_two_children(live_stages: LiveTessera, engine: Engine) -> None:
    """With processor_derived=separate, serve starts a child per stage: the main one
    resolves and profiles, the derived one maintains computed traits and audiences; the
    audience shows on the profile and /readyz reports both stages."""
    from tessera.audiences import service

    worker = child_of(live_stages)
    assert worker.derived is not None and worker.derived.pid not in (None, worker.pid)
    with engine.begin() as conn:
        service.create_computed_trait(
            conn, document={"name": "views", "kind": "count", "event": {"name": "Viewed"}}
        )
        audience = service.create_audience(
            conn,
            name="viewers",
            description="",
            document={"computed": "views", "op": "gte", "value": 3},
            actor=None,
        )
    track(live_stages, "stages-1", 2)
    track(live_stages, "stages-2", 4)
    wait_until_caught_up(live_stages.engine, timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready = httpx.get(f"{live_stages.url}/readyz", timeout=10).json()["processor"]
        with engine.connect() as conn:
            page, _ = service.list_members(conn, audience_id=audience["id"], cursor=None, limit=10)
        if page and ready["derived"]["lag_events"] == 0:
            break
        time.sleep(0.1)
    assert ready["derived"]["position"] == ready["position"]
    with engine.connect() as conn:
        from tessera.identity.config import IdentityRules
        from tessera.profiles.views import resolve_reference

        member = resolve_reference(conn, "user_id:stages-2", IdentityRules())
    assert [item["profile_id"] for item in page] == [member]
    metrics = httpx.get(f"{live_stages.url}/metrics", timeout=10).text
    assert "tessera_processor_derived_lag_events 0" in metrics
