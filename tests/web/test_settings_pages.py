"""Settings through the pages: users, tokens, reset links and the audit log, each change
made by the same audited services as the API."""

from __future__ import annotations

import html
import re
from contextlib import closing

import sqlalchemy as sa

from tessera.audit.models import audit_log
from tests.conftest import LiveTessera
from tests.web.helpers import PASSWORD, browser, csrf_of, signed_in


def _actions(live: LiveTessera) -> list[str]:
    with live.engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.action).order_by(audit_log.c.id)).scalars())


def test_an_admin_adds_a_person_who_then_signs_in(live: LiveTessera) -> None:
    with closing(signed_in(live.url, live.engine, "admin")) as admin:
        page = admin.get("/settings/users")
        bad = admin.post(
            "/settings/users",
            data={
                "email": "not an email",
                "password": PASSWORD,
                "role": "sales",
                "csrf_token": csrf_of(page.text),
            },
        )
        assert bad.status_code == 422
        assert 'id="error-email"' in bad.text and "not a valid email" in bad.text
        short = admin.post(
            "/settings/users",
            data={
                "email": "kim@example.com",
                "password": "short",
                "role": "sales",
                "csrf_token": csrf_of(page.text),
            },
        )
        assert 'id="error-password"' in short.text and "at least 12" in short.text
        made = admin.post(
            "/settings/users",
            data={
                "email": "kim@example.com",
                "password": PASSWORD,
                "role": "sales",
                "csrf_token": csrf_of(page.text),
            },
        )
        assert made.status_code == 303
        assert "kim@example.com" in admin.get("/settings/users").text
        again = admin.post(
            "/settings/users",
            data={
                "email": "kim@example.com",
                "password": PASSWORD,
                "role": "sales",
                "csrf_token": csrf_of(page.text),
            },
        )
        assert again.status_code == 422 and "already exists" in again.text
    assert "user.create" in _actions(live)
    with browser(live.url) as kim:
        form = kim.get("/")
        signed = kim.post(
            "/login",
            data={
                "email": "kim@example.com",
                "password": PASSWORD,
                "csrf_token": csrf_of(form.text),
            },
        )
        assert signed.status_code == 303


def test_a_reset_link_lets_a_person_choose_a_new_password(live: LiveTessera) -> None:
    with closing(signed_in(live.url, live.engine, "admin")) as admin:
        page = admin.get("/settings/users")
        token = csrf_of(page.text)
        admin.post(
            "/settings/users",
            data={
                "email": "lee@example.com",
                "password": PASSWORD,
                "role": "marketer",
                "csrf_token": token,
            },
        )
        page = admin.get("/settings/users").text
        user_id = re.search(r"/settings/users/(\d+)/reset-link", page)
        assert user_id
        shown = admin.post(
            f"/settings/users/{user_id.group(1)}/reset-link", data={"csrf_token": token}
        )
        link = re.search(r"(/reset-password\?token=[^<\s\"]+)", html.unescape(shown.text))
        assert link, "the reset link is shown"
    with browser(live.url) as lee:
        form = lee.get(link.group(1))
        token_field = re.search(r'name="token" value="([^"]+)"', form.text)
        assert token_field
        differ = lee.post(
            "/reset-password",
            data={
                "token": token_field.group(1),
                "password": "a brand new password",
                "confirm": "another new password",
                "csrf_token": csrf_of(form.text),
            },
        )
        assert differ.status_code == 422 and "differ" in differ.text
        done = lee.post(
            "/reset-password",
            data={
                "token": token_field.group(1),
                "password": "a brand new password",
                "confirm": "a brand new password",
                "csrf_token": csrf_of(form.text),
            },
        )
        assert done.status_code == 303
        reused = lee.post(
            "/reset-password",
            data={
                "token": token_field.group(1),
                "password": "a third new password",
                "confirm": "a third new password",
                "csrf_token": csrf_of(form.text),
            },
        )
        assert reused.status_code == 422 and "ask for a new one" in reused.text
        form = lee.get("/")
        signed = lee.post(
            "/login",
            data={
                "email": "lee@example.com",
                "password": "a brand new password",
                "csrf_token": csrf_of(form.text),
            },
        )
        assert signed.status_code == 303
    assert {"auth.reset_requested", "auth.reset_password"} <= set(_actions(live))


def test_a_token_is_shown_once_then_revoked(live: LiveTessera) -> None:
    with closing(signed_in(live.url, live.engine, "admin")) as admin:
        page = admin.get("/settings/tokens")
        empty = admin.post(
            "/settings/tokens",
            data={"name": "  ", "role": "analyst", "csrf_token": csrf_of(page.text)},
        )
        assert empty.status_code == 422 and 'id="error-name"' in empty.text
        made = admin.post(
            "/settings/tokens",
            data={"name": "warehouse sync", "role": "analyst", "csrf_token": csrf_of(page.text)},
        )
        secret = re.search(r"(tsk_[A-Za-z0-9_\-]+)", made.text)
        assert secret, "the new token is shown"
        listed = admin.get("/settings/tokens").text
        assert "warehouse sync" in listed and secret.group(1) not in listed
        api = admin.get("/api/v1/auth/me", headers={"authorization": f"Bearer {secret.group(1)}"})
        assert api.status_code == 200 and api.json()["role"] == "analyst"
        token_id = re.search(r"/settings/tokens/(\d+)/revoke", listed)
        assert token_id
        admin.post(
            f"/settings/tokens/{token_id.group(1)}/revoke", data={"csrf_token": csrf_of(listed)}
        )
        api = admin.get("/api/v1/auth/me", headers={"authorization": f"Bearer {secret.group(1)}"})
        assert api.status_code == 401
    assert {"token.create", "token.revoke"} <= set(_actions(live))


def test_the_audit_log_filters_and_pages(live: LiveTessera) -> None:
    with closing(signed_in(live.url, live.engine, "admin")) as admin:
        everything = admin.get("/settings/audit")
        assert everything.status_code == 200 and "auth.login" in everything.text
        none = admin.get("/settings/audit", params={"action": "no.such.action"})
        assert "Nothing matches" in none.text
        bad_date = admin.get("/settings/audit", params={"since": "yesterday-ish"})
        assert bad_date.status_code == 200 and "Pick a date" in bad_date.text


def test_an_admin_cannot_lock_themself_out(live: LiveTessera) -> None:
    with closing(signed_in(live.url, live.engine, "admin")) as admin:
        page = admin.get("/settings/users").text
        me = re.search(r'id="role-(\d+)" name="role" disabled', page)
        assert me, "one's own role cannot be changed from the page"
        refused = admin.post(
            f"/settings/users/{me.group(1)}", data={"active": "false", "csrf_token": csrf_of(page)}
        )
        assert refused.status_code == 303
        assert admin.get("/settings/users").status_code == 200  # still signed in, still admin
