"""Secrets stay secret: no password, token or reset token in any log record or error."""

from __future__ import annotations

import logging
from datetime import timedelta

import httpx
import pytest

from tessera.auth.tokens import create_token
from tessera.auth.users import create_password_reset, create_user
from tests.conftest import LiveTessera


def test_no_secret_reaches_the_logs_or_error_bodies(
    live: LiveTessera, caplog: pytest.LogCaptureFixture
) -> None:
    password, wrong = "the real passphrase", "a wrong passphrase"
    with live.engine.begin() as conn:
        create_user(conn, email="jo@example.com", password=password, role="admin")
        token, _ = create_token(conn, name="t", role="admin")
        reset = create_password_reset(conn, email="jo@example.com", ttl=timedelta(minutes=5))
    secrets = [password, wrong, token, reset, live.write_key]
    with caplog.at_level(logging.DEBUG):
        bodies = [
            httpx.post(
                f"{live.url}/api/v1/auth/login", json={"email": "jo@example.com", "password": wrong}
            ).text,
            httpx.post(
                f"{live.url}/api/v1/auth/login",
                json={"email": "jo@example.com", "password": password},
            ).text,
            httpx.get(
                f"{live.url}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}x"}
            ).text,
            httpx.get(
                f"{live.url}/api/v1/auth/me", headers={"Authorization": f"Bearer {live.write_key}"}
            ).text,
            httpx.post(
                f"{live.url}/api/v1/auth/reset-password",
                json={"token": reset + "x", "password": wrong},
            ).text,
            httpx.post(
                f"{live.url}/v1/track",
                auth=(live.write_key + "x", ""),
                json={"userId": "u", "event": "E"},
            ).text,
            httpx.post(
                f"{live.url}/v1/track", auth=(live.write_key, ""), json={"userId": "u"}
            ).text,
        ]
        tokens_listed = httpx.get(
            f"{live.url}/api/v1/tokens", headers={"Authorization": f"Bearer {token}"}
        ).text
    logged = "\n".join(record.getMessage() + repr(record.__dict__) for record in caplog.records)
    for secret in secrets:
        assert secret not in logged
        for body in [*bodies, tokens_listed]:
            assert secret not in body
