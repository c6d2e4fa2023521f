"""`tessera token`, `tessera rebuild` and `tessera demo`, run as a user runs them."""

from __future__ import annotations

import sqlalchemy as sa

from tessera.auth.tokens import authenticate
from tessera.store import create_store_engine
from tests.cli.test_cli import run


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
    rebuilt = run(store_url, "rebuild")
    assert f"rebuilt derived state from {events} events" in rebuilt.stdout
    with engine.connect() as conn:
        assert list(conn.execute(sa.text(query))) == before
    engine.dispose()
