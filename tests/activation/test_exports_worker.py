"""Export jobs under a lease, on both backends: a job whose worker stopped is taken over and
finished by another (for real: a worker process killed mid-file), at most three times; a
worker that was only slow leaves its job to the one that took it over; and old files
expire after the retention, which the API reports as 410."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tessera.activation import exports_worker
from tessera.activation.delivery import Deliverer
from tessera.activation.exports import create_export, get_export
from tessera.activation.exports_worker import claim_export, expire_exports, run_next_export
from tessera.activation.files import write_table as real_write_table
from tessera.activation.models import export_jobs
from tessera.config import Settings
from tests.activation.test_exports import (
    add_audience,
    add_people,
    client,
    expected_row,
    read_export,
)
from tests.conftest import LiveTessera, start_live

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)


def job_row(engine: Engine, export_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(export_jobs).where(export_jobs.c.id == export_id)).one()


def abandoned(engine: Engine, audience_id: str, export_dir: Path, *, fmt: str = "csv") -> str:
    """A job a worker claimed, wrote part of, and then stopped: its lease ran out a minute
    ago, and its temporary file is still there."""
    with engine.begin() as conn:
        job = create_export(conn, audience_id=audience_id, fmt=fmt, actor=None)
        assert claim_export(
            conn, export_id=job["id"], owner="dead-worker", now=NOW - 2 * LEASE, lease=LEASE
        )
        conn.execute(
            export_jobs.update().where(export_jobs.c.id == job["id"]).values(total=9, done=5)
        )
    export_dir.mkdir(parents=True, exist_ok=True)
    (export_dir / f".audience-{audience_id}-{job['id']}.{fmt}.tmp-0badc0ffee00").write_text("half")
    return str(job["id"])


def temporary_files(export_dir: Path) -> list[str]:
    return sorted(path.name for path in export_dir.glob(".*.tmp-*"))


# ---------------------------------------------------------------------------------------------
# leases


def test_a_job_whose_worker_stopped_is_taken_over_and_finished(
    engine: Engine, tmp_path: Path
) -> None:
    export_dir = tmp_path / "exports"
    add_audience(engine, "aud_vip", "VIP")
    members = add_people(engine, "aud_vip", 9)
    export_id = abandoned(engine, "aud_vip", export_dir)

    # While its lease holds, the job is its worker's: nobody else starts it.
    early = NOW - LEASE - timedelta(seconds=1)
    assert run_next_export(engine, export_dir=export_dir, clock=lambda: early) is False
    assert job_row(engine, export_id).lease_owner == "dead-worker"

    assert run_next_export(engine, export_dir=export_dir, clock=lambda: NOW, owner="w2") is True
    row = job_row(engine, export_id)
    assert (row.status, row.attempts, row.lease_owner, row.error) == ("done", 2, "w2", None)
    assert (row.total, row.done, row.finished_at) == (9, 9, NOW)
    assert read_export(row.path, "csv") == [expected_row(p) for p in sorted(members)]
    # The stopped worker's temporary file went with its attempt.
    assert temporary_files(export_dir) == []
    with engine.connect() as conn:
        assert get_export(conn, export_id=export_id)["attempts"] == 2


def test_a_job_that_stopped_its_workers_three_times_fails(engine: Engine, tmp_path: Path) -> None:
    export_dir = tmp_path / "exports"
    add_audience(engine, "aud_vip", "VIP")
    add_people(engine, "aud_vip", 3)
    export_id = abandoned(engine, "aud_vip", export_dir)
    with engine.begin() as conn:
        conn.execute(export_jobs.update().where(export_jobs.c.id == export_id).values(attempts=3))

    assert run_next_export(engine, export_dir=export_dir, clock=lambda: NOW) is False
    row = job_row(engine, export_id)
    assert (row.status, row.attempts, row.finished_at) == ("failed", 3, NOW)
    assert "stopped 3 times" in row.error and "'dead-worker'" in row.error
    assert "export again" in row.error
    assert temporary_files(export_dir) == []
    assert not list(export_dir.glob("audience-*"))


def test_a_slow_worker_leaves_its_job_to_the_one_that_took_it_over(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first worker stalls past its lease after one page, and a second takes the job
    over; when the first wakes up, it neither writes progress nor fails or finishes the
    job, and removes its own temporary file."""
    export_dir = tmp_path / "exports"
    add_audience(engine, "aud_vip", "VIP")
    members = add_people(engine, "aud_vip", 10)
    monkeypatch.setattr("tessera.activation.exports.PAGE_SIZE", 4)
    with engine.begin() as conn:
        export_id = create_export(conn, audience_id="aud_vip", fmt="jsonl", actor=None)["id"]
    later = NOW + 2 * LEASE
    rows_seen = 0

    def stalling(url: str, name: str, fmt: Any, columns: list[str], rows: Any) -> str:
        def stalled() -> Iterator[dict[str, Any]]:
            nonlocal rows_seen
            for row in rows:
                rows_seen += 1
                if rows_seen == 5:  # the first page is written and its progress committed
                    assert job_row(engine, export_id).done == 4
                    with engine.begin() as conn:
                        assert claim_export(conn, export_id=export_id, owner="second", now=later)
                yield row

        return real_write_table(url, name, fmt, columns, stalled())

    monkeypatch.setattr(exports_worker, "write_table", stalling)
    assert run_next_export(engine, export_dir=export_dir, clock=lambda: NOW, owner="first")
    assert rows_seen == 8  # it stopped at the end of the page after the takeover
    row = job_row(engine, export_id)
    assert (row.status, row.lease_owner, row.attempts) == ("running", "second", 2)
    assert (row.total, row.done, row.error, row.finished_at) == (None, 0, None, None)
    assert list(export_dir.iterdir()) == []

    # The second worker stops too; a third finishes the job.
    monkeypatch.setattr(exports_worker, "write_table", real_write_table)
    third = later + 2 * LEASE
    assert run_next_export(engine, export_dir=export_dir, clock=lambda: third, owner="third")
    row = job_row(engine, export_id)
    assert (row.status, row.lease_owner, row.attempts, row.done) == ("done", "third", 3, 10)
    assert read_export(row.path, "jsonl") == [expected_row(p) for p in sorted(members)]


def _doomed_worker(store_url: str, export_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    """A process running one export with pages of 10 members and a pause after each, so it
    can be killed mid-file (the pause stands in for a large audience)."""
    script = """
import sys, time
from pathlib import Path
from tessera.activation import exports, exports_worker
from tessera.store import create_store_engine

def slow_pages(conn, *, audience_id, page_size=None):
    for page in exports.member_pages(conn, audience_id=audience_id, page_size=10):
        yield page
        time.sleep(0.2)

exports_worker.member_pages = slow_pages
engine = create_store_engine(sys.argv[1])
exports_worker.run_next_export(
    engine, export_dir=Path(sys.argv[2]), owner="doomed", lease_seconds=2.0
)
"""
    return subprocess.Popen(
        [sys.executable, "-c", script, store_url, str(export_dir)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _worker(store_url: str, export_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "TESSERA_DATABASE_URL": store_url,
        "TESSERA_EXPORT_DIR": str(export_dir),
        "TESSERA_EXPORT_LEASE_SECONDS": "2",
        "TESSERA_DELIVERY_POLL_SECONDS": "0.05",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tessera", "worker"],
        env=environment,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_for(engine: Engine, export_id: str, ready: Any, log: Path, seconds: float = 90) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        row = job_row(engine, export_id)
        if ready(row):
            return row
        assert time.monotonic() < deadline, f"{row}; log: {log.read_text()}"
        time.sleep(0.02)


def test_a_worker_killed_mid_export_is_replaced_by_another(
    engine: Engine, store_url: str, tmp_path: Path
) -> None:
    export_dir = tmp_path / "exports"
    log = tmp_path / "workers.log"
    add_audience(engine, "aud_vip", "VIP")
    members = add_people(engine, "aud_vip", 60)
    with engine.begin() as conn:
        export_id = create_export(conn, audience_id="aud_vip", fmt="jsonl", actor=None)["id"]

    doomed = _doomed_worker(store_url, export_dir, log)
    try:
        wait_for(engine, export_id, lambda row: row.done >= 20, log)
    finally:
        doomed.kill()
        doomed.wait(30)
    row = job_row(engine, export_id)
    assert (row.status, row.lease_owner, row.attempts) == ("running", "doomed", 1), log.read_text()
    assert 20 <= row.done < 60
    assert len(temporary_files(export_dir)) == 1  # the half-written file it left

    worker = _worker(store_url, export_dir, log)
    try:
        row = wait_for(engine, export_id, lambda row: row.status != "running", log)
    finally:
        worker.terminate()
        worker.wait(30)
    assert (row.status, row.attempts, row.done, row.total) == ("done", 2, 60, 60), row.error
    assert row.lease_owner != "doomed"
    assert read_export(row.path, "jsonl") == [expected_row(p) for p in sorted(members)]
    assert temporary_files(export_dir) == []


# ---------------------------------------------------------------------------------------------
# retention


def finished_export(engine: Engine, export_dir: Path, finished_at: datetime) -> str:
    with engine.begin() as conn:
        export_id = create_export(conn, audience_id="aud_vip", fmt="csv", actor=None)["id"]
    assert run_next_export(engine, export_dir=export_dir, clock=lambda: finished_at)
    return str(export_id)


def test_files_expire_after_the_retention(engine: Engine, tmp_path: Path) -> None:
    export_dir = tmp_path / "exports"
    add_audience(engine, "aud_vip", "VIP")
    add_people(engine, "aud_vip", 3)
    retention = timedelta(hours=168)
    old = finished_export(engine, export_dir, NOW - retention - timedelta(seconds=1))
    young = finished_export(engine, export_dir, NOW - retention + timedelta(seconds=1))
    # Temporary files that stopped workers left behind, one long ago and one just now.
    stale = export_dir / ".audience-aud_vip-exp_gone.csv.tmp-000000000000"
    fresh = export_dir / ".audience-aud_vip-exp_busy.csv.tmp-111111111111"
    for path, moment in ((stale, NOW - retention - timedelta(minutes=1)), (fresh, NOW)):
        path.write_text("half")
        os.utime(path, (moment.timestamp(), moment.timestamp()))

    assert expire_exports(engine, export_dir=export_dir, now=NOW, retention=retention) == [old]
    with engine.connect() as conn:
        gone, kept = (get_export(conn, export_id=i) for i in (old, young))
    assert (gone["status"], gone["download_url"]) == ("expired", None)
    assert (gone["total"], gone["done"]) == (3, 3)  # what the file held, for the record
    assert not Path(gone["path"]).exists()
    assert kept["status"] == "done" and Path(kept["path"]).is_file()
    assert temporary_files(export_dir) == [fresh.name]

    # Nothing more to do on the next pass; the young one goes once its time has come.
    assert expire_exports(engine, export_dir=export_dir, now=NOW, retention=retention) == []
    later = NOW + timedelta(seconds=2)
    assert expire_exports(engine, export_dir=export_dir, now=later, retention=retention) == [young]
    assert sorted(path.name for path in export_dir.iterdir()) == [fresh.name]


def test_the_delivery_worker_expires_old_files(
    store_url: str, engine: Engine, tmp_path: Path
) -> None:
    export_dir = tmp_path / "exports"
    add_audience(engine, "aud_vip", "VIP")
    add_people(engine, "aud_vip", 2)
    export_id = finished_export(engine, export_dir, NOW)
    settings = Settings(database_url=store_url, export_dir=export_dir, export_retention_hours=1.0)
    # An hour and a minute after the export finished, by the worker's (injected) clock.
    deliverer = Deliverer(engine, settings, clock=lambda: NOW + timedelta(minutes=61))
    deliverer.start()
    try:
        deadline = time.monotonic() + 30
        while job_row(engine, export_id).status != "expired":
            assert time.monotonic() < deadline, "the worker did not expire the export"
            time.sleep(0.05)
    finally:
        deliverer.stop()
    assert list(export_dir.iterdir()) == []


@pytest.fixture
def live_exports(store_url: str, engine: Engine, tmp_path: Path) -> Iterator[LiveTessera]:
    settings = Settings(
        database_url=store_url,
        processor_mode="thread",
        export_dir=tmp_path / "exports",
        export_retention_hours=24,
    )
    yield from start_live(settings, engine)


def test_downloading_an_expired_export_is_410(live_exports: LiveTessera) -> None:
    live = live_exports
    add_audience(live.engine, "aud_vip", "VIP")
    add_people(live.engine, "aud_vip", 2)
    admin: httpx.Client = client(live, "admin")
    export_id = admin.post("/api/v1/audiences/aud_vip/exports", json={"format": "csv"}).json()["id"]
    assert run_next_export(live.engine, export_dir=live.settings.export_dir, clock=lambda: NOW)
    assert admin.get(f"/api/v1/exports/{export_id}/download").status_code == 200
    expire_exports(
        live.engine,
        export_dir=live.settings.export_dir,
        now=NOW + timedelta(hours=25),
        retention=timedelta(hours=24),
    )
    job = admin.get(f"/api/v1/exports/{export_id}").json()
    assert (job["status"], job["download_url"]) == ("expired", None)
    gone = admin.get(f"/api/v1/exports/{export_id}/download")
    assert gone.status_code == 410, gone.text
    assert gone.json()["code"] == "gone"
    message = gone.json()["message"]
    assert export_id in message and "24 hours" in message and "export the audience again" in message
    admin.close()
