"""Audience exports on both backends: the member list with identities and traits read a page
at a time, jobs that write it with visible progress, failures recorded, one run per job
however many workers; and the HTTP API end to end through a live server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from sqlalchemy.engine import Engine

from tessera.activation import exports, exports_worker
from tessera.activation.exports import audience_snapshot, create_export, get_export, list_exports
from tessera.activation.exports_worker import claim_export, run_next_export
from tessera.activation.files import write_table as real_write_table
from tessera.activation.models import export_jobs
from tessera.audiences.models import audience_members, audiences
from tessera.auth.tokens import create_token
from tessera.config import Settings
from tessera.errors import BadRequest, NotFound
from tessera.identity.models import identities
from tessera.processor import wait_until_caught_up
from tessera.profiles.models import profile_traits, profiles
from tests.conftest import LiveTessera, start_live
from tests.ingest.helpers import post

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def add_audience(engine: Engine, audience_id: str, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            audiences.insert().values(
                id=audience_id,
                name=name,
                description="",
                definition='{"consent":"email"}',
                status="ready",
                build_cursor="",
                built_profiles=0,
                created_at=T0,
                updated_at=T0,
            )
        )


def entered(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


def identity(kind: str, value: str, profile_id: str, seq: int) -> dict[str, Any]:
    return {"type": kind, "value": value, "profile_id": profile_id, "first_seq": seq}


def add_people(engine: Engine, audience_id: str, count: int, *, start: int = 0) -> set[str]:
    """`count` profiles with traits and identities, all members of the audience."""
    ids = [f"prf_{n:06d}" for n in range(start, start + count)]
    with engine.begin() as conn:
        conn.execute(
            profiles.insert(),
            [
                {"id": i, "created_seq": n, "created_at": T0, "updated_at": T0, "event_count": 1}
                for n, i in enumerate(ids, start)
            ],
        )
        traits = []
        for n, i in enumerate(ids, start):
            values = {"name": f'Zoë {n}, "the"\nsecond', "orders": n, "vip": n % 2 == 0}
            if n % 3 == 0:
                values["address"] = {"city": "Lyon", "lines": ["1 rue", None]}
            traits += [
                {
                    "profile_id": i,
                    "name": key,
                    "value": orjson.dumps(value).decode(),
                    "source_id": 1,
                    "seq": n,
                    "message_id": f"m{n}",
                    "timestamp": T0,
                }
                for key, value in values.items()
            ]
        conn.execute(profile_traits.insert(), traits)
        conn.execute(
            identities.insert(),
            [
                row
                for n, i in enumerate(ids, start)
                for row in (
                    {"type": "user_id", "value": f"u{n}", "profile_id": i, "first_seq": n},
                    {
                        "type": "email",
                        "value": f"p{n}@example.com",
                        "profile_id": i,
                        "first_seq": n,
                    },
                    {
                        "type": "email",
                        "value": f"p{n}@work.example",
                        "profile_id": i,
                        "first_seq": n + 1,
                    },
                )
            ],
        )
        conn.execute(
            audience_members.insert(),
            [
                {
                    "audience_id": audience_id,
                    "profile_id": i,
                    "entered_at": entered(n),
                }
                for n, i in enumerate(ids, start)
            ],
        )
    return set(ids)


def expected_row(profile_id: str) -> dict[str, Any]:
    n = int(profile_id.removeprefix("prf_"))
    traits: dict[str, Any] = {"name": f'Zoë {n}, "the"\nsecond', "orders": n, "vip": n % 2 == 0}
    if n % 3 == 0:
        traits["address"] = {"city": "Lyon", "lines": ["1 rue", None]}
    return {
        "profile_id": profile_id,
        "entered_at": entered(n),
        "identities": {"user_id": [f"u{n}"], "email": [f"p{n}@example.com", f"p{n}@work.example"]},
        "traits": dict(sorted(traits.items())),
    }


def read_export(path: str, fmt: str) -> list[dict[str, Any]]:
    """The file's rows with JSON columns parsed, via DuckDB (and pyarrow for Parquet)."""
    reader = {"csv": "read_csv", "jsonl": "read_json", "parquet": "read_parquet"}[fmt]
    options = {
        "csv": ", header=true",
        # Nested objects as JSON, not as structs unified across rows (which adds null keys).
        "jsonl": ", columns={profile_id: 'VARCHAR', entered_at: 'TIMESTAMPTZ', "
        "identities: 'JSON', traits: 'JSON'}",
        "parquet": "",
    }[fmt]
    # Every nested column as JSON text: the same comparison for every format.
    relation = duckdb.sql(
        "select profile_id, entered_at::timestamptz as entered_at, "
        "identities::varchar as identities, traits::varchar as traits "
        f"from {reader}('{path}'{options}) order by profile_id"
    )
    assert relation is not None
    rows: list[dict[str, Any]] = relation.arrow().read_all().to_pylist()
    if fmt == "parquet":
        direct = pq.read_table(path).to_pylist()
        assert [r["profile_id"] for r in direct] == [r["profile_id"] for r in rows]
    return [
        {
            **row,
            "identities": orjson.loads(row["identities"]),
            "traits": orjson.loads(row["traits"]),
        }
        for row in rows
    ]


# ---------------------------------------------------------------------------------------------
# the member list


def test_snapshot_reads_members_a_page_at_a_time_with_identities_and_traits(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_audience(engine, "aud_vip", "VIP")
    members = add_people(engine, "aud_vip", 23)
    add_audience(engine, "aud_other", "Other")
    add_people(engine, "aud_other", 4, start=100)
    monkeypatch.setattr(exports, "PAGE_SIZE", 5)
    with engine.connect() as conn:
        snapshot = audience_snapshot(conn, audience_id="aud_vip", now=NOW)
        assert (snapshot.audience_id, snapshot.audience_name, snapshot.taken_at) == (
            "aud_vip",
            "VIP",
            NOW,
        )
        assert snapshot.columns == ["profile_id", "entered_at", "identities", "traits"]
        rows = list(snapshot.rows)
    assert [row["profile_id"] for row in rows] == sorted(members)
    assert rows == [expected_row(profile_id) for profile_id in sorted(members)]


def test_snapshot_of_an_unknown_or_empty_audience(engine: Engine) -> None:
    with engine.connect() as conn, pytest.raises(NotFound, match="'aud_nope'"):
        audience_snapshot(conn, audience_id="aud_nope", now=NOW)
    add_audience(engine, "aud_empty", "Nobody")
    with engine.connect() as conn:
        assert list(audience_snapshot(conn, audience_id="aud_empty", now=NOW).rows) == []


# ---------------------------------------------------------------------------------------------
# export jobs


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_an_export_job_writes_every_member(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    export_dir = tmp_path / "exports"
    add_audience(engine, "aud_vip", "VIP")
    members = add_people(engine, "aud_vip", 17)
    monkeypatch.setattr(exports, "PAGE_SIZE", 4)
    with engine.begin() as conn:
        job = create_export(conn, audience_id="aud_vip", fmt=fmt, actor="token:tests")
    assert job["id"].startswith("exp_")
    assert (job["status"], job["total"], job["done"], job["progress"]) == ("queued", None, 0, None)
    assert job["download_url"] is None

    assert run_next_export(engine, export_dir=export_dir, clock=lambda: NOW) is True
    assert (
        run_next_export(engine, export_dir=export_dir, clock=lambda: NOW) is False
    )  # nothing queued

    with engine.connect() as conn:
        done = get_export(conn, export_id=job["id"])
    assert (done["status"], done["total"], done["done"], done["progress"]) == ("done", 17, 17, 1.0)
    assert done["finished_at"] == NOW
    assert done["error"] is None
    assert done["download_url"] == f"/api/v1/exports/{job['id']}/download"
    assert done["path"] == str(export_dir / f"audience-aud_vip-{job['id']}.{fmt}")
    assert read_export(done["path"], fmt) == [expected_row(p) for p in sorted(members)]
    assert sorted(p.name for p in export_dir.iterdir()) == [f"audience-aud_vip-{job['id']}.{fmt}"]


def test_progress_is_committed_after_every_page(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_audience(engine, "aud_vip", "VIP")
    add_people(engine, "aud_vip", 10)
    monkeypatch.setattr(exports, "PAGE_SIZE", 3)
    with engine.begin() as conn:
        job = create_export(conn, audience_id="aud_vip", fmt="jsonl", actor=None)
    seen: list[tuple[str, int | None, int]] = []

    def watching(url: str, name: str, fmt: Any, columns: list[str], rows: Any) -> str:
        def observed() -> Iterator[dict[str, Any]]:
            for row in rows:
                # What another connection (the API) sees while the file is being written.
                with engine.connect() as conn:
                    now = get_export(conn, export_id=job["id"])
                seen.append((now["status"], now["total"], now["done"]))
                yield row

        return real_write_table(url, name, fmt, columns, observed())

    monkeypatch.setattr(exports_worker, "write_table", watching)
    assert run_next_export(engine, export_dir=tmp_path)
    assert {status for status, _, _ in seen} == {"running"}
    assert {total for _, total, _ in seen} == {10}
    assert [done for _, _, done in seen] == [0, 0, 0, 3, 3, 3, 6, 6, 6, 9]


def test_create_export_refuses_an_unknown_audience_and_format(engine: Engine) -> None:
    add_audience(engine, "aud_vip", "VIP")
    with engine.begin() as conn:
        with pytest.raises(NotFound, match="'aud_nope'"):
            create_export(conn, audience_id="aud_nope", fmt="csv", actor=None)
        with pytest.raises(BadRequest, match=r"'xlsx'.*csv, jsonl, parquet"):
            create_export(conn, audience_id="aud_vip", fmt="xlsx", actor=None)
        with pytest.raises(NotFound, match="'exp_nope'"):
            get_export(conn, export_id="exp_nope")


def test_a_failed_job_records_its_error(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_audience(engine, "aud_vip", "VIP")
    add_people(engine, "aud_vip", 3)
    with engine.begin() as conn:
        first = create_export(conn, audience_id="aud_vip", fmt="csv", actor=None)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    assert run_next_export(engine, export_dir=blocker / "exports", clock=lambda: NOW) is True
    with engine.connect() as conn:
        failed = get_export(conn, export_id=first["id"])
    assert failed["status"] == "failed"
    assert failed["finished_at"] == NOW
    assert "not-a-directory" in failed["error"]
    assert failed["download_url"] is None

    # The audience was deleted after the job was queued.
    with engine.begin() as conn:
        second = create_export(conn, audience_id="aud_vip", fmt="csv", actor=None)
        conn.execute(audiences.delete().where(audiences.c.id == "aud_vip"))
    assert run_next_export(engine, export_dir=tmp_path / "exports") is True
    with engine.connect() as conn:
        gone = get_export(conn, export_id=second["id"])
    assert gone["status"] == "failed"
    assert "NotFound" in gone["error"] and "'aud_vip'" in gone["error"]
    assert not (tmp_path / "exports").exists()


def test_jobs_run_oldest_first_and_list_newest_first(engine: Engine, tmp_path: Path) -> None:
    add_audience(engine, "aud_a", "A")
    add_audience(engine, "aud_b", "B")
    add_people(engine, "aud_a", 2)
    ids = []
    for audience_id in ("aud_a", "aud_b", "aud_a"):
        with engine.begin() as conn:
            ids.append(create_export(conn, audience_id=audience_id, fmt="csv", actor=None)["id"])
    assert run_next_export(engine, export_dir=tmp_path)
    with engine.connect() as conn:
        assert [job["status"] for job in list_exports(conn)] == ["queued", "queued", "done"]
        assert [job["id"] for job in list_exports(conn)] == ids[::-1]
        assert [job["id"] for job in list_exports(conn, audience_id="aud_a")] == [ids[2], ids[0]]
        assert len(list_exports(conn, limit=1)) == 1
    while run_next_export(engine, export_dir=tmp_path):
        pass
    with engine.connect() as conn:
        assert [(job["total"], job["status"]) for job in list_exports(conn)] == [
            (2, "done"),
            (0, "done"),
            (2, "done"),
        ]


def test_a_job_is_claimed_once(engine: Engine, tmp_path: Path) -> None:
    add_audience(engine, "aud_vip", "VIP")
    add_people(engine, "aud_vip", 5)
    with engine.begin() as conn:
        job = create_export(conn, audience_id="aud_vip", fmt="parquet", actor=None)
    # Two workers that both read the job as queued: only the first update matches.
    now = datetime.now(UTC)
    with engine.begin() as conn:
        assert claim_export(conn, export_id=job["id"], owner="first", now=now) is True
    with engine.begin() as conn:
        assert claim_export(conn, export_id=job["id"], owner="second", now=now) is False
        conn.execute(
            export_jobs.update()
            .where(export_jobs.c.id == job["id"])
            .values(status="queued", attempts=0)
        )

    # And for real: several workers at once run it exactly once.
    results: list[bool] = []
    start = threading.Barrier(4)

    def worker() -> None:
        start.wait()
        results.append(run_next_export(engine, export_dir=tmp_path))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [False, False, False, True]
    with engine.connect() as conn:
        assert get_export(conn, export_id=job["id"])["status"] == "done"


# ---------------------------------------------------------------------------------------------
# the HTTP API


@pytest.fixture
def live_exports(store_url: str, engine: Engine, tmp_path: Path) -> Iterator[LiveTessera]:
    settings = Settings(
        database_url=store_url, processor_mode="thread", export_dir=tmp_path / "exports"
    )
    yield from start_live(settings, engine)


def client(live: LiveTessera, role: str) -> httpx.Client:
    with live.engine.begin() as conn:
        token, _ = create_token(conn, name=f"exports-{role}", role=role)
    return httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def wait_for_ready(api: httpx.Client, audience_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        audience: dict[str, Any] = api.get(f"/api/v1/audiences/{audience_id}").json()
        if audience["status"] == "ready":
            return audience
        assert time.monotonic() < deadline, audience
        time.sleep(0.05)


def test_export_through_the_api(live_exports: LiveTessera) -> None:
    live = live_exports
    people = [
        {
            "type": "identify",
            "userId": f"u{n}",
            "traits": {"email": f"p{n}@example.com", "plan": "pro" if n % 2 else "free"},
            "timestamp": "2026-03-01T12:00:00Z",
        }
        for n in range(9)
    ]
    assert post(live, "/v1/batch", {"batch": people}).status_code == 200
    wait_until_caught_up(live.engine)
    admin, marketer, analyst = (client(live, role) for role in ("admin", "marketer", "analyst"))
    created = admin.post(
        "/api/v1/audiences",
        json={"name": "pro", "definition": {"trait": "plan", "op": "eq", "value": "pro"}},
    )
    assert created.status_code == 201, created.text
    audience_id = created.json()["id"]
    assert wait_for_ready(admin, audience_id)["size"] == 4

    # An analyst may follow exports but neither start one nor take the personal data away.
    refused = analyst.post(f"/api/v1/audiences/{audience_id}/exports", json={"format": "csv"})
    assert refused.status_code == 403, refused.text

    response = marketer.post(f"/api/v1/audiences/{audience_id}/exports", json={"format": "csv"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["progress"] is None
    assert "path" not in job  # where the server keeps files is its own business
    assert job["created_by"] == "token:exports-marketer"
    url = f"/api/v1/exports/{job['id']}"

    early = marketer.get(f"{url}/download")
    assert early.status_code == 409
    assert "queued" in early.json()["message"]

    assert run_next_export(live.engine, export_dir=live.settings.export_dir)
    status = analyst.get(url)
    assert status.status_code == 200
    assert status.json()["status"] == "done"
    assert (status.json()["total"], status.json()["done"], status.json()["progress"]) == (4, 4, 1.0)
    assert status.json()["download_url"] == f"{url}/download"
    assert [j["id"] for j in analyst.get("/api/v1/exports").json()] == [job["id"]]
    listed = analyst.get("/api/v1/exports", params={"audience_id": audience_id}).json()
    assert [j["id"] for j in listed] == [job["id"]]
    assert analyst.get("/api/v1/exports", params={"audience_id": "aud_other"}).json() == []

    assert analyst.get(f"{url}/download").status_code == 403
    download = marketer.get(f"{url}/download")
    assert download.status_code == 200, download.text
    assert download.headers["content-type"].startswith("text/csv")
    assert (
        f'filename="audience-{audience_id}-{job["id"]}.csv"'
        in (download.headers["content-disposition"])
    )
    lines = download.text.splitlines()
    assert lines[0] == "profile_id,entered_at,identities,traits"
    assert len(lines) == 5
    assert sorted(line.split(",")[0] for line in lines[1:]) == sorted(
        m["profile_id"]
        for m in admin.get(f"/api/v1/audiences/{audience_id}/members").json()["items"]
    )
    assert "p1@example.com" in download.text

    assert admin.get("/api/v1/exports/exp_nope").status_code == 404
    assert admin.get("/api/v1/exports/exp_nope/download").status_code == 404
    assert (
        admin.post("/api/v1/audiences/aud_nope/exports", json={"format": "csv"}).status_code == 404
    )
    bad = admin.post(f"/api/v1/audiences/{audience_id}/exports", json={"format": "xlsx"})
    assert bad.status_code == 422

    audit = admin.get("/api/v1/audit", params={"limit": 100}).json()["items"]
    actions = [(e["action"], e["target"]) for e in audit if e["action"].startswith("export.")]
    assert actions == [
        ("export.download", f"export:{job['id']}"),
        ("export.create", f"export:{job['id']}"),
    ]
    for api in (admin, marketer, analyst):
        api.close()


def test_a_failed_export_answers_409_with_its_error(live_exports: LiveTessera) -> None:
    live = live_exports
    add_audience(live.engine, "aud_gone", "Gone soon")
    admin = client(live, "admin")
    job = admin.post("/api/v1/audiences/aud_gone/exports", json={"format": "parquet"}).json()
    with live.engine.begin() as conn:
        conn.execute(audiences.delete().where(audiences.c.id == "aud_gone"))
    assert run_next_export(live.engine, export_dir=live.settings.export_dir)
    status = admin.get(f"/api/v1/exports/{job['id']}").json()
    assert status["status"] == "failed" and "aud_gone" in status["error"]
    refused = admin.get(f"/api/v1/exports/{job['id']}/download")
    assert refused.status_code == 409
    assert "failed" in refused.json()["message"] and "aud_gone" in refused.json()["message"]
    admin.close()


def test_a_download_whose_file_is_gone_is_404(live_exports: LiveTessera) -> None:
    live = live_exports
    add_audience(live.engine, "aud_vip", "VIP")
    add_people(live.engine, "aud_vip", 2)
    admin = client(live, "admin")
    job = admin.post("/api/v1/audiences/aud_vip/exports", json={"format": "jsonl"}).json()
    assert run_next_export(live.engine, export_dir=live.settings.export_dir)
    download = admin.get(f"/api/v1/exports/{job['id']}/download")
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/x-ndjson"
    assert [orjson.loads(line)["profile_id"] for line in download.text.splitlines()] == [
        "prf_000000",
        "prf_000001",
    ]
    with live.engine.connect() as conn:
        Path(get_export(conn, export_id=job["id"])["path"]).unlink()
    gone = admin.get(f"/api/v1/exports/{job['id']}/download")
    assert gone.status_code == 404 and "export again" in gone.json()["message"]
    admin.close()
