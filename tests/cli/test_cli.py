"""The `tessera` command, run as a user runs it: a subprocess with TESSERA_* settings."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tessera.eventlog import list_events
from tessera.store import create_store_engine

TESSERA = [sys.executable, "-m", "tessera"]


def run(
    store_url: str, *args: str, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "TESSERA_DATABASE_URL": store_url, "COLUMNS": "200", **env}
    result = subprocess.run(
        [*TESSERA, *args], check=False, capture_output=True, text=True, env=environment, timeout=60
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_source_lifecycle(store_url: str) -> None:
    created = run(store_url, "source", "create", "web")
    key = created.stdout.strip().splitlines()[-1]
    assert len(key) == 32
    listed = run(store_url, "source", "list").stdout
    # The key is shown once: the list has its first characters only.
    assert "web" in listed and key[:6] in listed and "enabled" in listed
    assert key not in listed
    assert "disabled source 'web'" in run(store_url, "source", "disable", "web").stdout
    assert "disabled" in run(store_url, "source", "list").stdout
    assert "enabled source 'web'" in run(store_url, "source", "enable", "web").stdout
    rotated = run(store_url, "source", "rotate-key", "web").stdout.strip().splitlines()[-1]
    assert len(rotated) == 32 and rotated != key
    assert rotated[:6] in run(store_url, "source", "list").stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("source", "disable", "nope"), "no source is named 'nope'"),
        (("source", "create", " "), "1 to 200 characters"),
    ],
)
def test_cli_errors_exit_non_zero_with_the_reason(
    store_url: str, args: tuple[str, ...], fragment: str
) -> None:
    result = run(store_url, *args, check=False)
    assert result.returncode == 1
    assert fragment in result.stderr


def test_duplicate_source_name_is_refused(store_url: str) -> None:
    run(store_url, "source", "create", "web")
    result = run(store_url, "source", "create", "web", check=False)
    assert result.returncode == 1
    assert "already exists" in result.stderr


def test_migrate_reports_what_it_did(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert "migrated the schema from revision empty" in run(url, "migrate").stdout
    assert "the schema is current" in run(url, "migrate").stdout


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"TESSERA_PORT": "eighty"}, "TESSERA_PORT"),
        ({"TESSERA_DATABASE_URL": "mysql://x/y"}, "TESSERA_DATABASE_URL"),
        ({"TESSERA_DATABASE_URL": "sqlite:////no/such/dir/t.db"}, "does not exist"),
    ],
)
def test_bad_settings_stop_serve_with_the_reason(
    tmp_path: Path, env: dict[str, str], fragment: str
) -> None:
    result = run(f"sqlite:///{tmp_path / 't.db'}", "serve", check=False, **env)
    assert result.returncode == 1
    assert fragment in result.stderr


def test_serve_refuses_a_database_from_a_newer_tessera(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    run(url, "migrate")
    engine = create_store_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dcafe'"))
    engine.dispose()
    result = run(url, "serve", check=False)
    assert result.returncode == 1
    assert "newer Tessera" in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(store_url: str) -> Iterator[tuple[subprocess.Popen[str], list[str], str]]:
    port = _free_port()
    env = {
        **os.environ,
        "TESSERA_DATABASE_URL": store_url,
        "TESSERA_PORT": str(port),
        "COLUMNS": "300",
    }
    process = subprocess.Popen(
        [*TESSERA, "serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        lines: list[str] = []
        assert process.stdout is not None
        while not any(line.lstrip().startswith("curl ") for line in lines):
            line = process.stdout.readline()
            assert line, f"serve exited early: {process.stderr.read() if process.stderr else ''}"
            lines.append(line.rstrip("\n"))
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz").raise_for_status()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        yield process, lines, f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(20)


def test_serve_prints_url_key_and_a_curl_that_works(
    served: tuple[subprocess.Popen[str], list[str], str], store_url: str
) -> None:
    _process, lines, url = served
    text = "\n".join(lines)
    assert f"running at {url}" in text
    key = next(line.split(":", 1)[1].strip() for line in lines if "write key:" in line)
    curl = next(line.strip() for line in lines if line.lstrip().startswith("curl "))
    assert key in curl
    if shutil.which("curl"):
        result = subprocess.run(
            shlex.split(curl), check=False, capture_output=True, text=True, timeout=30
        )
        assert result.stdout == '{"success":true}', result.stderr
    else:  # pragma: no cover - curl is nearly everywhere; fall back to the same request
        words = shlex.split(curl)
        body = words[words.index("-d") + 1]
        response = httpx.post(
            f"{url}/v1/track",
            auth=(key, ""),
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert response.json() == {"success": True}
    engine = create_store_engine(store_url)
    with engine.connect() as conn:
        [event] = list_events(conn)
    engine.dispose()
    assert event["name"] == "Signed Up"
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["status"] == "ready" and ready["database"] == "ok"
    assert ready["event_log"]["head_seq"] >= 1


def test_serve_stops_cleanly_and_keeps_acknowledged_events(
    served: tuple[subprocess.Popen[str], list[str], str], store_url: str
) -> None:
    process, lines, url = served
    key = next(line.split(":", 1)[1].strip() for line in lines if "write key:" in line)
    batch = {
        "batch": [
            {"type": "track", "userId": "u", "event": "E", "messageId": str(i)} for i in range(500)
        ]
    }
    assert httpx.post(f"{url}/v1/batch", json=batch, auth=(key, "")).status_code == 200
    process.terminate()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why.
    assert process.wait(20) in (0, -15)
    assert process.stderr is not None
    assert "Application shutdown complete" in process.stderr.read()
    engine = create_store_engine(store_url)
    with engine.connect() as conn:
        assert len(list_events(conn, limit=1000)) == 500
    engine.dispose()


def test_serve_with_only_disabled_sources_says_how_to_fix_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    run(url, "source", "create", "default")
    run(url, "source", "disable", "default")
    port = _free_port()
    env = {**os.environ, "TESSERA_DATABASE_URL": url, "TESSERA_PORT": str(port)}
    process = subprocess.Popen([*TESSERA, "serve"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(5)]
        assert any("no source is enabled" in line for line in lines), lines
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(20)
