"""Signing in to the web UI with httpx, as a browser would: the form, its CSRF cookie."""

from __future__ import annotations

import re
import uuid

import httpx
from sqlalchemy.engine import Engine

from tessera.auth.sessions import COOKIE_NAME
from tessera.auth.users import create_user

PASSWORD = "a long enough password"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
HTML = {"accept": "text/html"}


def add_user(engine: Engine, role: str) -> str:
    email = f"{role}-{uuid.uuid4().hex[:6]}@example.com"
    with engine.begin() as conn:
        create_user(conn, email=email, password=PASSWORD, role=role)
    return email


def csrf_of(html: str) -> str:
    found = CSRF_FIELD.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def browser(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers=HTML, follow_redirects=False, timeout=30)


def signed_in(url: str, engine: Engine, role: str) -> httpx.Client:
    """A client holding a session of a new user with `role`."""
    client = browser(url)
    email = add_user(engine, role)
    form = client.get("/")
    response = client.post(
        "/login",
        data={"email": email, "password": PASSWORD, "csrf_token": csrf_of(form.text), "next": "/"},
    )
    assert response.status_code == 303, response.text
    # The cookie is Secure: a browser sends it to http://127.0.0.1, httpx does not, so the
    # test hands it over as a browser would.
    client.cookies.set(COOKIE_NAME, response.cookies[COOKIE_NAME])
    return client
