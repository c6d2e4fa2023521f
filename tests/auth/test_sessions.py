"""Sign-in, sessions, CSRF, throttling, expiry and password reset through a live server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tessera.auth.sessions import COOKIE_NAME
from tessera.auth.users import create_password_reset, create_user
from tessera.config import Settings
from tests.conftest import LiveTessera, start_live

PASSWORD = "correct horse battery"


@pytest.fixture
def site(settings: Settings, engine: Engine) -> Iterator[LiveTessera]:
    tuned = settings.model_copy(
        update={"login_max_failures_per_account": 3, "login_max_failures_per_ip": 6}
    )
    with engine.begin() as conn:
        create_user(conn, email="jo@example.com", password=PASSWORD, role="marketer")
        create_user(conn, email="ann@example.com", password=PASSWORD, role="analyst")
    yield from start_live(tuned, engine)


def login(
    site: LiveTessera, email: str = "jo@example.com", password: str = PASSWORD
) -> httpx.Response:
    return httpx.post(
        f"{site.url}/api/v1/auth/login", json={"email": email, "password": password}, timeout=30
    )


def client(site: LiveTessera, response: httpx.Response) -> httpx.Client:
    """A client carrying the session cookie (httpx would not send a Secure cookie over http)."""
    return httpx.Client(
        base_url=site.url, headers={"Cookie": f"{COOKIE_NAME}={response.cookies[COOKIE_NAME]}"}
    )


def audit(engine: Engine, action: str) -> list[tuple[str, str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT actor, outcome, target FROM audit_log WHERE action = :a ORDER BY id"),
            {"a": action},
        )
        return [tuple(row) for row in rows]


def test_login_sets_a_hardened_session_cookie(site: LiveTessera) -> None:
    response = login(site, email="  JO@example.com ")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"]["email"] == "jo@example.com" and body["user"]["role"] == "marketer"
    cookie = response.headers["set-cookie"]
    for attribute in ("HttpOnly", "Secure", "SameSite=lax", "Path=/"):
        assert attribute.lower() in cookie.lower()
    with client(site, response) as session:
        me = session.get("/api/v1/auth/me").json()
    assert me["kind"] == "user" and me["name"] == "jo@example.com"
    assert "profiles:write" in me["permissions"] and "users:manage" not in me["permissions"]
    assert audit(site.engine, "auth.login") == [
        ("user:jo@example.com", "success", "jo@example.com")
    ]
    # The cookie's value is not what the store keeps.
    with site.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT id_hash FROM sessions")).scalar_one()
    assert response.cookies[COOKIE_NAME] not in stored


def test_wrong_password_and_unknown_email_look_the_same(site: LiveTessera) -> None:
    wrong = login(site, password="wrong password!")
    unknown = login(site, email="nobody@example.com")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert "wrong password!" not in wrong.text
    assert [row[1] for row in audit(site.engine, "auth.login")] == ["failure", "failure"]


def test_state_changing_cookie_requests_need_the_csrf_token(site: LiveTessera) -> None:
    response = login(site)
    csrf = response.json()["csrf_token"]
    with client(site, response) as session:
        refused = session.post("/api/v1/auth/logout")
        assert refused.status_code == 403
        assert "CSRF" in refused.json()["message"]
        wrong = session.post("/api/v1/auth/logout", headers={"X-CSRF-Token": "guess"})
        assert wrong.status_code == 403
        assert session.get("/api/v1/auth/me").status_code == 200  # reads need no token
        assert (
            session.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        )
        assert session.get("/api/v1/auth/me").status_code == 401  # the session is gone
    assert audit(site.engine, "auth.logout") == [("user:jo@example.com", "success", None)]


def test_repeated_failures_lock_the_account_then_the_ip(site: LiveTessera) -> None:
    for _ in range(3):
        assert login(site, password="nope nope nope").status_code == 401
    locked = login(site)  # even the right password waits out the lockout
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) > 0
    assert "this account" in locked.json()["message"]
    assert login(site, email="ann@example.com").status_code == 200  # other accounts are fine
    for _ in range(3):
        login(site, email="ann@example.com", password="nope nope nope")
    # Six failures from this address: the IP is locked for every account.
    assert login(site, email="ann@example.com").status_code == 429
    with site.engine.begin() as conn:  # the lockout passes
        conn.execute(
            sa.text("UPDATE login_failures SET locked_until = :past"),
            {"past": datetime.now(UTC) - timedelta(seconds=1)},
        )
    assert login(site).status_code == 200


def test_sessions_expire(settings: Settings, engine: Engine) -> None:
    short = settings.model_copy(update={"session_ttl_hours": 1 / 3600})  # one second
    with engine.begin() as conn:
        create_user(conn, email="jo@example.com", password=PASSWORD, role="admin")
    for site in start_live(short, engine):
        response = login(site)
        with client(site, response) as session:
            assert session.get("/api/v1/auth/me").status_code == 200
            time.sleep(1.2)
            expired = session.get("/api/v1/auth/me")
        assert expired.status_code == 401
        assert "expired" in expired.json()["message"]


def test_password_reset_is_one_time_and_ends_sessions(site: LiveTessera) -> None:
    old_session = login(site)
    with site.engine.begin() as conn:
        token = create_password_reset(conn, email="jo@example.com", ttl=timedelta(minutes=5))
    new_password = "a brand new passphrase"
    reset = httpx.post(
        f"{site.url}/api/v1/auth/reset-password", json={"token": token, "password": new_password}
    )
    assert reset.status_code == 204, reset.text
    again = httpx.post(
        f"{site.url}/api/v1/auth/reset-password", json={"token": token, "password": new_password}
    )
    assert again.status_code == 400
    assert login(site).status_code == 401
    assert login(site, password=new_password).status_code == 200
    with client(site, old_session) as session:
        assert session.get("/api/v1/auth/me").status_code == 401
    short = httpx.post(
        f"{site.url}/api/v1/auth/reset-password", json={"token": token, "password": "short"}
    )
    assert short.status_code == 400
    assert [row[1] for row in audit(site.engine, "auth.reset_password")] == [
        "success",
        "failure",
        "failure",
    ]


def test_disabling_a_user_ends_their_sessions(site: LiveTessera) -> None:
    response = login(site)
    with site.engine.begin() as conn:
        user_id = conn.execute(
            sa.text("SELECT id FROM users WHERE email = 'jo@example.com'")
        ).scalar_one()
        from tessera.auth.users import update_user

        update_user(conn, user_id=user_id, active=False)
    with client(site, response) as session:
        assert session.get("/api/v1/auth/me").status_code == 401
    assert login(site).status_code == 401
