"""`tessera token`, `tessera rebuild` and `tessera demo`, run as a user runs them."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from tessera.auth.tokens import authenticate
from tessera.store import create_store_engine
from tests.cli.test_cli import TESSERA, _free_port, run


def test_token_create_prints_a_working_token_and_revoke_kills_it(store_url: str) -> None:
    result = run(store_url, "token", "create", "crm-sync", "--role", "marketer")
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("tsk_")
    engine = create_store_engine(store_url)
    with engine.begin() as conn:
        principal = authenticate(conn, token)
        assert principal is not None and principal.role == "marketer"
        stored = conn.execute(sa.text("SELECT token_hash FROM api_tokens")).scalar_one()
    assert token not in stored  # only a hash is kept
    run(store_url, "token", "revoke", str(principal.token_id))
    with engine.begin() as conn:
        assert authenticate(conn, token) is None
    engine.dispose()


def test_token_with_an_unknown_role_is_refused(store_url: str) -> None:
    result = run(store_url, "token", "create", "x", "--role", "superuser", check=False)
    assert result.returncode == 1
    assert "'superuser' is not one of" in result.stderr


def test_demo_then_rebuild_reaches_the_same_state(store_url: str) -> None:
    demo = run(store_url, "demo", "--people", "40", "--seed", "7")
    assert "generated" in demo.stdout and "try: GET /api/v1/profiles/email:" in demo.stdout
    engine = create_store_engine(store_url)
    query = "SELECT type, value, profile_id FROM identities ORDER BY type, value"
    with engine.connect() as conn:
        before = list(conn.execute(sa.text(query)))
        events = conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
        attributed = conn.execute(sa.text("SELECT count(*) FROM event_profiles")).scalar_one()
    assert before and attributed == events > 0
    # With the stages run apart day to day, a rebuild still replays both.
    rebuilt = run(store_url, "rebuild", TESSERA_PROCESSOR_DERIVED="separate")
    assert f"rebuilt derived state from {events} events" in rebuilt.stdout
    with engine.connect() as conn:
        positions = dict(conn.execute(sa.text("SELECT name, position FROM processor_state")).all())
    assert positions["main"] == positions["derived"] > 0
    with engine.connect() as conn:
        assert list(conn.execute(sa.text(query))) == before
    engine.dispose()


def test_user_create_and_reset_password(store_url: str) -> None:
    created = run(store_url, "user", "create", "Sam@Example.com", "--role", "support")
    password = created.stdout.strip().splitlines()[-1]
    assert "created user sam@example.com" in created.stdout and len(password) >= 12
    reset = run(store_url, "user", "reset-password", "sam@example.com")
    assert reset.stdout.strip().splitlines()[-1].startswith("rst_")
    missing = run(store_url, "user", "reset-password", "nobody@example.com", check=False)
    assert missing.returncode == 1 and "no user has email" in missing.stderr
    bad_role = run(store_url, "user", "create", "x@example.com", "--role", "root", check=False)
    assert bad_role.returncode == 1 and "'root' is not one of" in bad_role.stderr
    engine = create_store_engine(store_url)
    with engine.connect() as conn:
        actions = [
            row[0] for row in conn.execute(sa.text("SELECT action FROM audit_log ORDER BY id"))
        ]
        stored = conn.execute(sa.text("SELECT password_hash FROM users")).scalar_one()
    engine.dispose()
    assert actions == ["user.create", "auth.reset_requested"]
    assert stored.startswith("$argon2id$") and password not in stored


def test_serve_creates_the_first_admin_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    weak = run(url, "serve", check=False, TESSERA_ADMIN_PASSWORD="short")
    assert weak.returncode == 1 and "12 characters" in weak.stderr
    port = _free_port()
    env = {
        **os.environ,
        "TESSERA_DATABASE_URL": url,
        "TESSERA_PORT": str(port),
        "TESSERA_ADMIN_EMAIL": "boss@example.com",
        "TESSERA_ADMIN_PASSWORD": "a strong admin passphrase",
    }
    process = subprocess.Popen([*TESSERA, "serve"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        assert "created the first admin: boss@example.com" in "".join(lines)
        assert "a strong admin passphrase" not in "".join(lines)
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/api/v1/auth/login",
                    json={"email": "boss@example.com", "password": "a strong admin passphrase"},
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert response.status_code == 200 and response.json()["user"]["role"] == "admin"
    finally:
        process.terminate()
        process.wait(20)
