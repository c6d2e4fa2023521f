"""`tessera secrets` and the key at start, run as a user runs them: PostgreSQL refuses to
start without TESSERA_SECRET_KEY, SQLite makes a key file, a malformed key is refused with
the expected format, and `rotate` changes nothing when a secret opens with no key."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tessera.activation.models import destinations
from tessera.activation.service import create_destination
from tessera.store import create_store_engine
from tessera.store.secrets import Keyring, generate_key, parse_keys

TESSERA = [sys.executable, "-m", "tessera"]


def run(store_url: str, *args: str, key: str | None) -> subprocess.CompletedProcess[str]:
    """The command with TESSERA_SECRET_KEY set to `key`, or not set at all."""
    environment = {k: v for k, v in os.environ.items() if k != "TESSERA_SECRET_KEY"}
    environment |= {"TESSERA_DATABASE_URL": store_url, "COLUMNS": "200"}
    if key is not None:
        environment["TESSERA_SECRET_KEY"] = key
    return subprocess.run(
        [*TESSERA, *args], check=False, capture_output=True, text=True, env=environment, timeout=60
    )


def test_generate_key_prints_a_key_the_setting_takes() -> None:
    result = run("sqlite:///unused.db", "secrets", "generate-key", key=None)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert len(key) == 44 and parse_keys(key) == [key.encode()]


def test_without_a_key_postgresql_refuses_to_start_and_sqlite_makes_one(store_url: str) -> None:
    if store_url.startswith("sqlite"):
        result = run(store_url, "migrate", key=None)
        assert result.returncode == 0, result.stderr
        path = Path(make_url(store_url).database or "").parent / "tessera.key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert parse_keys(path.read_text())
        return
    for command in (["migrate"], ["worker"], ["serve", "--port", "0"], ["secrets", "rotate"]):
        result = run(store_url, *command, key=None)
        assert result.returncode == 1, (command, result.stdout)
        assert "TESSERA_SECRET_KEY is not set" in result.stderr
        assert "tessera secrets generate-key" in result.stderr


@pytest.mark.parametrize("command", [["migrate"], ["serve", "--port", "0"], ["worker"]])
def test_a_malformed_key_is_refused_with_the_expected_format(
    tmp_path: Path, command: list[str]
) -> None:
    result = run(f"sqlite:///{tmp_path / 'tessera.db'}", *command, key="hunter2-not-a-key")
    assert result.returncode == 1
    assert "TESSERA_SECRET_KEY" in result.stderr
    assert "32 url-safe base64-encoded bytes" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert not (tmp_path / "tessera.db").exists()  # refused before anything changed


def test_a_malformed_key_file_stops_the_start_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "tessera.key").write_text("hunter2\n")
    result = run(f"sqlite:///{tmp_path / 'tessera.db'}", "migrate", key=None)
    assert result.returncode == 1
    assert f"the key file {tmp_path / 'tessera.key'}" in result.stderr.replace("\n", "")
    assert "hunter2" not in result.stderr


def test_rotate_changes_nothing_when_a_secret_opens_with_no_key(store_url: str) -> None:
    lost, current = generate_key(), generate_key()
    engine = create_store_engine(store_url)
    with engine.begin() as conn:
        made = create_destination(
            conn,
            name="orders",
            type="webhook",
            config={"url": "http://127.0.0.1:9/hook", "secret": "s3cret"},
            subscriptions=[],
            mapping={},
            consent_categories=[],
            enabled=False,
            actor=None,
            keyring=Keyring(parse_keys(lost)),
        )
    select = sa.select(destinations.c.config).where(destinations.c.id == made["id"])
    with engine.connect() as conn:
        before = conn.execute(select).scalar_one()
    result = run(store_url, "secrets", "rotate", key=current)
    assert result.returncode == 1
    message = result.stderr.replace("\n", "")
    assert "nothing was re-encrypted" in message
    assert f"config.secret of the destination 'orders' ({made['id']})" in message
    with engine.connect() as conn:
        assert conn.execute(select).scalar_one() == before
    # With the lost key found again and listed after the new one, rotation goes through.
    result = run(store_url, "secrets", "rotate", key=f"{current},{lost}")
    assert result.returncode == 0, result.stderr
    assert "the older keys in TESSERA_SECRET_KEY can now be dropped" in result.stdout
    with engine.connect() as conn:
        stored = orjson.loads(conn.execute(select).scalar_one())["secret"]
    engine.dispose()
    assert Keyring(parse_keys(current)).decrypt(stored) == "s3cret"
