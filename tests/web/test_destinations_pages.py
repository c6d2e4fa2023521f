"""The Destinations pages through a real server on loopback, on SQLite and PostgreSQL: a
webhook created through the form generated from its plugin's schema, errors next to the
field they concern, secrets kept when left blank, pause and resume, the delivery log and
dead letters replayed, the editors round-tripping the API's documents, and what each role
may see and do."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from html import unescape
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tessera.activation.models import destination_state, destinations
from tessera.activation.plugins import destination_type, open_config
from tessera.audit.models import audit_log
from tessera.auth import signin
from tessera.auth.sessions import COOKIE_NAME
from tessera.auth.tokens import create_token
from tessera.auth.users import create_user
from tessera.config import Settings
from tests.activation.receiver import receiver
from tests.activation.test_delivery import FAST, orders, send, wait_for
from tests.conftest import LiveTessera, start_live

pytestmark = pytest.mark.slow
PASSWORD = "a long enough password"


@pytest.fixture
def fast(settings: Settings, engine: Engine) -> Iterator[LiveTessera]:
    yield from start_live(settings.model_copy(update=FAST), engine)


class Person:
    """A signed-in person of a role, browsing with httpx (redirects not followed)."""

    def __init__(self, live: LiveTessera, role: str) -> None:
        email = f"{role}-{uuid.uuid4().hex[:6]}@example.com"
        with live.engine.begin() as conn:
            create_user(conn, email=email, password=PASSWORD, role=role)
            cookie, session, _ = signin.sign_in(
                conn,
                engine=live.engine,
                settings=live.settings,
                email=email,
                password=PASSWORD,
                ip="127.0.0.1",
            )
        self.email = email
        self.csrf = session.csrf_token
        self.client = httpx.Client(
            base_url=live.url,
            cookies={COOKIE_NAME: cookie},
            headers={"Accept": "text/html"},
            timeout=30,
        )

    def get(self, path: str, status: int = 200) -> str:
        response = self.client.get(path)
        assert response.status_code == status, f"GET {path}: {response.status_code}"
        return response.text

    def post(self, path: str, data: Any, status: int = 303, **kwargs: Any) -> httpx.Response:
        pairs = list(data.items()) if isinstance(data, dict) else list(data)
        headers = {"Content-Type": "application/x-www-form-urlencoded", **kwargs.pop("headers", {})}
        body = urlencode([("csrf_token", self.csrf), *pairs])
        response = self.client.post(path, content=body, headers=headers, **kwargs)
        assert response.status_code == status, (
            f"POST {path}: {response.status_code} {response.text[-600:]}"
        )
        return response


class Admin:
    def __init__(self, live: LiveTessera) -> None:
        with live.engine.begin() as conn:
            token, _ = create_token(conn, name="pages", role="admin")
        self.client = httpx.Client(
            base_url=live.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = self.client.request(method, path, json=body)
        assert response.status_code == status, f"{method} {path}: {response.text}"
        return response.json() if response.content else None


class FormFields(HTMLParser):
    """What a browser would post for the form with `action`: inputs, ticked boxes, chosen
    options and text areas (buttons left out)."""

    def __init__(self, action: str) -> None:
        super().__init__()
        self.action = action
        self.inside = False
        self.fields: list[tuple[str, str]] = []
        self.select: str | None = None
        self.area: str | None = None
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {key: value or "" for key, value in attrs}
        if tag == "form":
            self.inside = found.get("action") == self.action
        if not self.inside:
            return
        name = found.get("name")
        if tag == "input" and name and found.get("type") not in ("submit", "button"):
            if found.get("type") in ("checkbox", "radio") and "checked" not in found:
                return
            self.fields.append((name, found.get("value", "")))
        elif tag == "select" and name:
            self.select = name
        elif tag == "option" and self.select and "selected" in found:
            self.fields.append((self.select, found.get("value", "")))
        elif tag == "textarea" and name:
            self.area, self.text = name, ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select":
            self.select = None
        elif tag == "textarea" and self.area:
            self.fields.append((self.area, unescape(self.text)))
            self.area = None

    def handle_data(self, data: str) -> None:
        if self.area:
            self.text += data


def form_of(html: str, action: str) -> list[tuple[str, str]]:
    parser = FormFields(action)
    parser.feed(html)
    return [(name, value) for name, value in parser.fields if name != "csrf_token"]


def error_of(html: str, field_id: str) -> str:
    """The error shown under the field with this id."""
    match = re.search(
        rf'<p class="field-error" id="error-{re.escape(field_id)}"[^>]*>(.*?)</p>', html
    )
    assert match, f"no error under {field_id}"
    return unescape(match.group(1))


def destination_id(response: httpx.Response) -> str:
    location = response.headers["location"]
    assert re.fullmatch(r"/destinations/dst_[0-9a-f]+", location), location
    return location.rsplit("/", 1)[1]


def audited(live: LiveTessera, action: str) -> list[Any]:
    with live.engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log).where(audit_log.c.action == action)))


def stored_config(live: LiveTessera, found: str) -> dict[str, Any]:
    with live.engine.connect() as conn:
        row = conn.execute(sa.select(destinations).where(destinations.c.id == found)).one()
    return open_config(
        destination_type(row.type),
        orjson.loads(row.config),
        live.app.state.keyring,
        destination=found,
    )


def webhook_form(name: str, url: str, **extra: str) -> dict[str, str]:
    return {"name": name, "config.url": url, **extra}


def test_a_webhook_is_created_through_the_generated_form(live: LiveTessera) -> None:
    marketer = Person(live, "marketer")
    listing = marketer.get("/destinations")
    assert "No destinations yet" in listing and 'href="/destinations/new"' in listing
    catalogue = marketer.get("/destinations/new")
    for title in ("Webhook", "Segment-compatible API", "Files (CSV, JSON Lines, Parquet)"):
        assert title in catalogue
    assert "signed with HMAC-SHA256" in catalogue  # each type with its description
    form = marketer.get("/destinations/new/webhook")
    assert 'name="config.url"' in form
    assert re.search(r'name="config.secret" type="password"', form)
    assert 'name="config.headers"' in form and "Advanced settings" in form
    assert re.search(r'name="config.timeout_seconds" type="number"[^>]*value="10"', form)

    response = marketer.post(
        "/destinations/new/webhook",
        webhook_form(
            "Orders webhook",
            "https://hooks.example.com/orders",
            **{
                "config.secret": "s3cret",
                "config.headers": "X-Team: growth\nAuthorization: Bearer abc",
                "config.timeout_seconds": "5",
                "config.batch_size": "1",
                "config.concurrency": "4",
                "sub-0-type": "events",
                "sub-0-event_names": "Order Completed\nOrder Refunded",
                "consent": "marketing, ads",
            },
        ),
    )
    found = destination_id(response)
    overview = marketer.get(f"/destinations/{found}")
    assert "Orders webhook" in overview and "is set up" in overview
    api = Admin(live).ok("GET", f"/api/v1/destinations/{found}")
    assert api["config"] == {
        "url": "https://hooks.example.com/orders",
        "headers": {"X-Team": "growth", "Authorization": "Bearer abc"},
        "secret": "********",
        "timeout_seconds": 5.0,
        "batch_size": 1,
        "concurrency": 4,
    }
    assert api["subscriptions"] == [
        {"type": "events", "event_names": ["Order Completed", "Order Refunded"]}
    ]
    assert api["consent_categories"] == ["ads", "marketing"]
    assert stored_config(live, found)["secret"] == "s3cret"
    (entry,) = audited(live, "destination.create")
    assert entry.actor == f"user:{marketer.email}" and entry.target == f"destination:{found}"
    listing = marketer.get("/destinations")
    assert "Orders webhook" in listing and "Active" in listing


def test_errors_are_shown_next_to_the_fields_they_concern(live: LiveTessera) -> None:
    marketer = Person(live, "marketer")
    response = marketer.post(
        "/destinations/new/webhook",
        webhook_form(
            "",
            "ftp://files.example.com/drop",
            **{"config.timeout_seconds": "soon", "config.concurrency": "0"},
        ),
        status=422,
    )
    html = response.text
    assert "is not an http:// or https:// URL" in error_of(html, "field-config-url")
    assert error_of(html, "name").startswith("Give it a name")
    assert error_of(html, "field-config-timeout_seconds") == "Enter a number, like 2.5."
    assert error_of(html, "field-config-concurrency") == "Use 1 or more."
    assert 'value="ftp://files.example.com/drop"' in html  # what was typed stays
    assert '<details class="advanced-settings" open>' in html  # errors inside are shown
    # A URL httpx cannot even parse, and a header line without a colon.
    html = marketer.post(
        "/destinations/new/webhook",
        webhook_form("x", "http://[::1", **{"config.headers": "no colon here"}),
        status=422,
    ).text
    assert "is not an http:// or https:// URL" in error_of(html, "field-config-url")
    assert error_of(html, "field-config-headers") == "Write one a line, as Name: value."
    # A subscription naming an unknown audience: the message sits on that rule.
    html = marketer.post(
        "/destinations/new/webhook",
        [
            *webhook_form("y", "https://example.com/hook").items(),
            ("sub-0-type", "audience"),
            ("sub-0-audiences", "aud_nope"),
            ("sub-0-changes", "entered"),
        ],
        status=422,
    ).text
    assert "Unknown audience 'aud_nope'" in error_of(html, "sub-0-audiences")
    assert Admin(live).ok("GET", "/api/v1/destinations") == []
    # A type nobody installed is the 404 page, never a 500.
    assert "webhook" in marketer.get("/destinations/new/carrier-pigeon", status=404)


def test_editing_keeps_a_secret_left_blank(live: LiveTessera) -> None:
    admin = Admin(live)
    created = admin.ok(
        "POST",
        "/api/v1/destinations",
        {
            "name": "signed",
            "type": "webhook",
            "config": {"url": "https://example.com/a", "secret": "first"},
        },
        status=201,
    )
    path = f"/destinations/{created['id']}/settings"
    marketer = Person(live, "marketer")
    html = marketer.get(path)
    assert "first" not in html
    assert 'placeholder="Stored, leave blank to keep"' in html
    posted = dict(form_of(html, path))
    assert posted["config.secret"] == ""
    posted["config.url"] = "https://example.com/b"
    marketer.post(path, posted)
    config = stored_config(live, created["id"])
    assert config["url"] == "https://example.com/b" and config["secret"] == "first"
    # A new secret replaces it; ticking "remove" forgets it.
    marketer.post(path, {**posted, "config.secret": "second"})
    assert stored_config(live, created["id"])["secret"] == "second"
    marketer.post(path, {**posted, "config.secret__remove": "true"})
    assert stored_config(live, created["id"])["secret"] is None
    assert admin.ok("GET", f"/api/v1/destinations/{created['id']}")["config"]["secret"] is None
    assert len(audited(live, "destination.update")) == 3


def test_a_paused_destination_is_resumed_and_audited(live: LiveTessera) -> None:
    admin = Admin(live)
    created = admin.ok(
        "POST",
        "/api/v1/destinations",
        {"name": "flaky", "type": "webhook", "config": {"url": "http://127.0.0.1:9/x"}},
        status=201,
    )
    with live.engine.begin() as conn:
        conn.execute(
            destination_state.update()
            .where(destination_state.c.destination_id == created["id"])
            .values(
                paused_at=datetime.now(UTC),
                paused_reason="10 calls failed in a row; last: connection refused",
                consecutive_failures=10,
            )
        )
    marketer = Person(live, "marketer")
    html = marketer.get(f"/destinations/{created['id']}")
    assert "paused-banner" in html and "connection refused" in html and "Resume now" in html
    assert "Paused" in marketer.get("/destinations")
    response = marketer.post(f"/destinations/{created['id']}/resume", {})
    assert response.headers["location"] == f"/destinations/{created['id']}"
    html = marketer.get(f"/destinations/{created['id']}")
    assert "paused-banner" not in html and "is sending again" in html
    assert admin.ok("GET", f"/api/v1/destinations/{created['id']}")["status"] == "active"
    (entry,) = audited(live, "destination.resume")
    assert entry.actor == f"user:{marketer.email}"
    # Turning it off and on again goes through the same audited update.
    marketer.post(f"/destinations/{created['id']}/enabled", {"enabled": "false"})
    assert "Turned off." in marketer.get(f"/destinations/{created['id']}")
    marketer.post(f"/destinations/{created['id']}/enabled", {"enabled": "true"})
    assert admin.ok("GET", f"/api/v1/destinations/{created['id']}")["status"] == "active"


def test_dead_letters_are_listed_with_reasons_and_replayed(fast: LiveTessera) -> None:
    admin = Admin(fast)
    marketer = Person(fast, "marketer")
    with receiver(secret="right") as hook:
        created = admin.ok(
            "POST",
            "/api/v1/destinations",
            {
                "name": "orders",
                "type": "webhook",
                "config": {"url": hook.url, "secret": "wrong"},
                "subscriptions": [{"type": "events", "event_names": ["Order Completed"]}],
            },
            status=201,
        )
        path = f"/destinations/{created['id']}"
        send(fast, orders(2, 2))
        wait_for(
            lambda: admin.ok("GET", f"/api/v1{path}")["stats"]["dead_letters"] == 4,
            what="four dead letters",
        )
        html = marketer.get(f"{path}/dead-letters")
        assert "Why they failed" in html and "bad signature" in html
        assert re.search(r'<span class="reason-count">4</span>', html)
        assert "4 dead letters" in html and "Replay all" in html
        ids = re.findall(r'name="ids" value="(\d+)" form="replay-selected"', html)
        assert len(ids) == 4
        log = marketer.get(f"{path}/log?state=dead")
        assert log.count("Dead letter</span>") == 4

        settings = dict(form_of(marketer.get(f"{path}/settings"), f"{path}/settings"))
        marketer.post(f"{path}/settings", {**settings, "config.secret": "right"})
        response = marketer.post(f"{path}/dead-letters/replay", {"ids": ids[0]})
        assert response.headers["location"] == f"{path}/dead-letters"
        wait_for(lambda: len(hook.messages()) == 1, what="the replayed one")
        html = marketer.get(f"{path}/dead-letters")
        assert "1 dead letter queued again" in html
        marketer.post(f"{path}/dead-letters/replay", {"all": "true"})
        wait_for(lambda: len(hook.messages()) == 4, what="all four")
        again = marketer.post(f"{path}/dead-letters/replay", {"all": "true"})
        assert "Nothing to replay" in marketer.get(again.headers["location"])
        wait_for(lambda: admin.ok("GET", f"/api/v1{path}")["stats"]["sent"] == 4, what="four sent")
        assert "No dead letters" in marketer.get(f"{path}/dead-letters")
        log = marketer.get(f"{path}/log?state=delivered")
        assert log.count("Delivered</span>") == 4
    replays = audited(fast, "destination.replay")
    assert [orjson.loads(entry.details)["replayed"] for entry in replays] == [1, 3, 0]
    overview = marketer.get(path)
    assert 'id="deliveries-chart"' in overview  # this hour's sends and failures, charted


def test_test_connection_answers_inline(live: LiveTessera) -> None:
    admin = Admin(live)
    marketer = Person(live, "marketer")
    with receiver() as hook:
        created = admin.ok(
            "POST",
            "/api/v1/destinations",
            {"name": "probe", "type": "webhook", "config": {"url": hook.url}},
            status=201,
        )
        path = f"/destinations/{created['id']}/test"
        htmx = {"HX-Request": "true", "X-CSRF-Token": marketer.csrf}
        answer = marketer.client.post(path, headers=htmx)
        assert answer.status_code == 200 and "<html" not in answer.text
        assert "The connection works." in answer.text
        hook.down()
        answer = marketer.client.post(path, headers=htmx)
        assert "The connection failed." in answer.text and "127.0.0.1" in answer.text
        # Without htmx, the overview comes back with the result on it.
        page = marketer.post(path, {}, status=200).text
        assert "The connection failed." in page and "<html" in page


def test_subscriptions_and_mapping_round_trip_the_api(live: LiveTessera) -> None:
    admin = Admin(live)
    audience = admin.ok(
        "POST",
        "/api/v1/audiences",
        {"name": "VIP", "definition": {"trait": "plan", "op": "eq", "value": "pro"}},
        status=201,
    )
    subscriptions = [
        {
            "type": "events",
            "event_types": ["track", "page"],
            "event_names": ["Order Completed"],
            "where": {
                "and": [
                    {"property": "total", "op": "gt", "value": 50},
                    {"property": "zip", "op": "eq", "value": "75001"},
                    {"property": "coupon", "op": "exists"},
                    {"property": "tier", "op": "in", "value": ["gold", 2, True]},
                ]
            },
        },
        {"type": "events", "where": {"or": [{"property": "a", "op": "eq", "value": 1}]}},
        {"type": "audience", "audiences": [audience["id"]], "changes": ["exited"]},
        {"type": "traits", "traits": ["plan", "email"]},
        {"type": "traits"},
    ]
    mapping = {
        "fields": [
            {"source": "profile.traits.email", "target": "email_sha256", "hash": "email"},
            {"source": "event.properties.total", "target": "value"},
        ],
        "only_mapped": True,
    }
    created = admin.ok(
        "POST",
        "/api/v1/destinations",
        {
            "name": "rich",
            "type": "webhook",
            "config": {"url": "https://example.com/x"},
            "subscriptions": subscriptions,
            "mapping": mapping,
        },
        status=201,
    )
    base = f"/destinations/{created['id']}"
    marketer = Person(live, "marketer")
    for tab, key, document in (
        ("subscriptions", "subscriptions", subscriptions),
        ("mapping", "mapping", mapping),
    ):
        path = f"{base}/{tab}"
        marketer.post(path, form_of(marketer.get(path), path))
        assert admin.ok("GET", f"/api/v1{base}")[key] == document, tab
    overview = marketer.get(base)
    assert "People leaving “VIP”" in overview and "Changes of plan, email" in overview

    # The editors' buttons change the form and save nothing.
    path = f"{base}/subscriptions"
    fields = form_of(marketer.get(path), path)
    html = marketer.post(path, [*fields, ("editor", "add-traits")], status=200).text
    assert html.count('value="traits"') == 3
    html = marketer.post(path, [*fields, ("editor", "remove-0")], status=200).text
    assert html.count('value="events"') == 1
    htmx = marketer.post(
        path, [*fields, ("editor", "add-condition-0")], status=200, headers={"HX-Request": "true"}
    ).text
    assert htmx.lstrip().startswith('<div id="subscriptions-editor"')
    assert htmx.count('name="sub-0-where_property"') == 5
    assert admin.ok("GET", f"/api/v1{base}")["subscriptions"] == subscriptions
    path = f"{base}/mapping"
    fields = form_of(marketer.get(path), path)
    html = marketer.post(path, [*fields, ("editor", "add-hashed-ids")], status=200).text
    assert 'value="phone_sha256"' in html and html.count('value="email_sha256"') == 1
    # A bad path in the mapping is shown on its row.
    bad = [(k, "profile..email" if k == "map-1-source" else v) for k, v in fields]
    html = marketer.post(path, bad, status=422).text
    assert "empty part" in error_of(html, "map-1-source")
    # Clearing every rule saves an empty list: it receives nothing.
    marketer.post(f"{base}/subscriptions", [])
    assert admin.ok("GET", f"/api/v1{base}")["subscriptions"] == []


def test_roles_see_what_they_may(live: LiveTessera) -> None:
    admin = Admin(live)
    created = admin.ok(
        "POST",
        "/api/v1/destinations",
        {
            "name": "people feed",
            "type": "webhook",
            "config": {"url": "http://127.0.0.1:9/", "secret": "hidden-value"},
            "subscriptions": [{"type": "events", "event_types": ["identify"]}],
        },
        status=201,
    )
    send(
        live,
        [{"type": "identify", "userId": "jo", "traits": {"email": "jo@example.com", "plan": "x"}}],
    )
    base = f"/destinations/{created['id']}"
    wait_for(lambda: bool(admin.ok("GET", f"/api/v1{base}/messages")["items"]), what="a message")
    analyst = Person(live, "analyst")
    assert "people feed" in analyst.get("/destinations")
    assert 'href="/destinations/new"' not in analyst.get("/destinations")
    for tab in ("", "/log", "/dead-letters", "/settings", "/subscriptions", "/mapping"):
        html = analyst.get(base + tab)
        assert "Test connection" not in html, tab
        assert not re.search(r'<form method="post" action="/destinations', html), tab
        assert "hidden-value" not in html
    log = analyst.get(f"{base}/log")
    assert "jo@example.com" not in log and "j***@***" in log
    assert "jo@example.com" in Person(live, "marketer").get(f"{base}/log")
    analyst.post(f"{base}/resume", {}, status=403)
    analyst.post("/destinations/new/webhook", webhook_form("x", "https://e.com/x"), status=403)
    analyst.get("/destinations/new", status=403)
    api_messages = analyst_api(live, f"/api/v1{base}/messages")
    assert "jo@example.com" not in api_messages  # the API masks as the page does
    for role in ("sales", "support"):
        person = Person(live, role)
        person.get("/destinations", status=403)
        assert 'href="/destinations"' not in person.get("/settings/identity")


def analyst_api(live: LiveTessera, path: str) -> str:
    with live.engine.begin() as conn:
        token, _ = create_token(conn, name="analyst", role="analyst")
    response = httpx.get(live.url + path, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    return response.text


def test_the_delivery_log_pages_and_filters(fast: LiveTessera) -> None:
    admin = Admin(fast)
    with receiver() as hook:
        created = admin.ok(
            "POST",
            "/api/v1/destinations",
            {
                "name": "many",
                "type": "webhook",
                "config": {"url": hook.url, "batch_size": 20},
                "subscriptions": [{"type": "events", "event_names": ["Order Completed"]}],
            },
            status=201,
        )
        send(fast, orders(11, 5))
        wait_for(lambda: len(hook.messages()) == 55, what="55 deliveries")
    base = f"/destinations/{created['id']}"
    marketer = Person(fast, "marketer")
    first = marketer.get(f"{base}/log?state=delivered")
    assert first.count("<tr>") == 51  # the header row and a page of 50
    match = re.search(r'href="([^"]+)" rel="next"', first)
    assert match
    second = marketer.get(unescape(match.group(1)))
    assert second.count("<tr>") == 6 and 'rel="next"' not in second
    assert "No message here has this status" in marketer.get(f"{base}/log?state=blocked")
    every = marketer.get(f"{base}/log")
    assert every.count("<tr>") == 51 and 'rel="next"' in every
    listing = marketer.get("/destinations")
    assert re.search(r'<td class="num">55</td>', listing)
    assert 'id="spark-' in listing
