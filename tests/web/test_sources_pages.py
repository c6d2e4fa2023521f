"""The Sources pages through a real server: a new source's write key shown once (never on
the list or the source's page), errors beside the name field, disabling that refuses events
and shows each refusal, a new key, who may see the area, and the debugger's stream opened
with the session cookie as the browser's EventSource does."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable
from contextlib import closing
from typing import TypeVar

import httpx
import pytest
import sqlalchemy as sa

from tessera.audit.models import audit_log
from tessera.web.views import sources as sources_view
from tests.conftest import LiveTessera
from tests.ingest.helpers import post
from tests.ingest.test_live import frames
from tests.web.helpers import csrf_of, signed_in

T = TypeVar("T")
WRITE_KEY = re.compile(r'<pre id="write-key"[^>]*><code>([^<]+)</code>')


def eventually(check: Callable[[], T | None], what: str, timeout: float = 15) -> T:
    """`check()` once it returns something: counts and refusals reach the store twice a
    second, written by a thread."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        time.sleep(0.05)


def text_of(response: httpx.Response) -> str:
    return html.unescape(response.text)


def words_of(response: httpx.Response) -> str:
    """The page's text as a reader sees it: no tags, one space between words."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", response.text)))


def create(client: httpx.Client, name: str) -> httpx.Response:
    form = client.get("/sources")
    return client.post("/sources", data={"name": name, "csrf_token": csrf_of(form.text)})


def test_a_new_source_shows_its_key_once(live: LiveTessera) -> None:
    with closing(signed_in(live.url, live.engine, "admin")) as admin:
        listed = admin.get("/sources")
        assert listed.status_code == 200
        assert live.source.name in listed.text and "Create a source" in listed.text

        made = create(admin, "Web shop")
        assert made.status_code == 200, made.text
        assert made.headers["cache-control"] == "no-store"
        found = WRITE_KEY.search(made.text)
        assert found, "the page shows no write key"
        key = found.group(1)
        page = text_of(made)
        assert "it will not be shown again" in page
        # Four snippets, each with the key, in tabs.
        for name in ("curl", "python", "node", "analytics_js"):
            panel = re.search(rf'id="panel-{name}"[^>]*>(.*?)</div>\s*</div>', page, re.S)
            assert panel and key in panel.group(1), name
        assert page.count('role="tab"') == 4

        # The key works at once; no page shows it again.
        assert post(live, "/v1/track", {"userId": "u", "event": "E"}, auth=(key, "")).is_success
        source_id = int(re.search(r'data-canonical="/sources/(\d+)"', made.text).group(1))  # type: ignore[union-attr]
        again = admin.get(f"/sources/{source_id}")
        assert again.status_code == 200 and "Web shop" in again.text
        assert key not in again.text and 'id="write-key"' not in again.text
        assert key[:6] in again.text  # its prefix, to tell keys apart

        def counted() -> str | None:
            page = admin.get("/sources").text
            return page if key not in page and re.search(r">\s*1\s*</td>", page) else None

        listing = eventually(counted, "today's count on the list")
        assert "Web shop" in listing and key not in listing
    with live.engine.connect() as conn:
        entries = conn.execute(
            sa.select(audit_log.c.actor, audit_log.c.target, audit_log.c.details).where(
                audit_log.c.action == "source.create"
            )
        ).all()
    assert [(actor.startswith("user:admin-"), target) for actor, target, _ in entries] == [
        (True, "source:Web shop")
    ]
    assert key not in str(entries)


def test_name_errors_show_beside_the_field(live: LiveTessera) -> None:
    with closing(signed_in(live.url, live.engine, "marketer")) as marketer:
        blank = create(marketer, "   ")
        assert blank.status_code == 422
        assert 'id="error-name"' in blank.text and "Give the source a name" in blank.text
        assert 'aria-invalid="true"' in blank.text
        taken = create(marketer, live.source.name)
        assert taken.status_code == 422
        error = re.search(r'id="error-name"[^>]*>([^<]+)<', taken.text)
        assert error and "already named" in html.unescape(error.group(1))
        assert f'value="{live.source.name}"' in taken.text  # what was typed stays
        long = create(marketer, "x" * 201)
        assert long.status_code == 422 and "under 200 characters" in long.text
        refused = marketer.post("/sources", data={"name": "no token"})
        assert refused.status_code == 403


def test_a_disabled_source_refuses_events_and_shows_why(live: LiveTessera) -> None:
    source_id = live.source.id
    with closing(signed_in(live.url, live.engine, "marketer")) as marketer:
        page = marketer.get(f"/sources/{source_id}")
        assert "Disable" in page.text and "events will be refused" in text_of(page).lower()
        done = marketer.post(
            f"/sources/{source_id}/disable", data={"csrf_token": csrf_of(page.text)}
        )
        assert done.status_code == 303 and done.headers["location"] == f"/sources/{source_id}"

        refused = post(live, "/v1/track", {"userId": "u", "event": "Refused"})
        assert refused.status_code == 403
        reason = refused.json()["message"]

        def shown() -> str | None:
            text = words_of(marketer.get(f"/sources/{source_id}"))
            return text if reason in text else None

        text = eventually(shown, "the refusal on the source's page")
        assert "This source is disabled" in text and f"Refused 403 {reason}" in text

        def counted() -> str | None:
            listing = marketer.get("/sources").text
            return listing if "refused-count" in listing else None

        assert "Disabled" in eventually(counted, "the refusal counted on the list")

        enabled = marketer.post(
            f"/sources/{source_id}/enable", data={"csrf_token": csrf_of(page.text)}
        )
        assert enabled.status_code == 303
        assert post(live, "/v1/track", {"userId": "u", "event": "Back"}).status_code == 200
    with live.engine.connect() as conn:
        actions = conn.execute(
            sa.select(audit_log.c.action).where(audit_log.c.action.like("source.%"))
        ).scalars()
        assert list(actions) == ["source.disable", "source.enable"]


def test_a_lost_key_is_replaced_and_shown_once(live: LiveTessera) -> None:
    with closing(signed_in(live.url, live.engine, "admin")) as admin:
        page = admin.get(f"/sources/{live.source.id}")
        rotated = admin.post(
            f"/sources/{live.source.id}/write-key", data={"csrf_token": csrf_of(page.text)}
        )
        assert rotated.status_code == 200 and rotated.headers["cache-control"] == "no-store"
        found = WRITE_KEY.search(rotated.text)
        assert found and found.group(1) != live.write_key
        assert "The old key no longer works" in rotated.text
        assert post(live, "/v1/track", {"userId": "u", "event": "E"}).status_code == 401
        new = post(live, "/v1/track", {"userId": "u", "event": "E"}, auth=(found.group(1), ""))
        assert new.status_code == 200
        assert found.group(1) not in admin.get(f"/sources/{live.source.id}").text


def test_the_debugger_opens_on_recent_events_and_follows_the_stream(live: LiveTessera) -> None:
    assert post(live, "/v1/track", {"userId": "early-bird", "event": "Before"}).is_success
    with closing(signed_in(live.url, live.engine, "marketer")) as marketer:
        page = marketer.get(f"/sources/{live.source.id}")
        assert "Before" in page.text and "early-bird" in page.text
        assert "Send an event to see it here" in page.text  # there, hidden while rows are
        cursor = re.search(r'data-cursor="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        stream_url = re.search(r'data-stream="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        # The browser's EventSource: a GET with the session cookie, nothing else.
        with marketer.stream(
            "GET", stream_url, params={"after": cursor}, headers={"accept": "text/event-stream"}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = frames(response)
            next(stream)
            assert post(live, "/v1/track", {"anonymousId": "a-1", "event": "After"}).is_success
            first = next(frame for frame in stream if frame.event)
            assert first.event == "event" and first.data is not None
            assert (first.data["name"], first.data["anonymous_id"]) == ("After", "a-1")


def test_an_empty_debugger_says_how_to_send_an_event(live: LiveTessera) -> None:
    with closing(signed_in(live.url, live.engine, "admin")) as admin:
        text = text_of(admin.get(f"/sources/{live.source.id}"))
        assert "Send an event to see it here" in text
        assert re.search(r"data-live-empty\s*>", admin.get(f"/sources/{live.source.id}").text)
        assert 'curl -u "$WRITE_KEY:" ' in text and f"{live.url}/v1/track" in text


@pytest.mark.parametrize("role", ["sales", "support", "analyst"])
def test_roles_without_sources_manage_do_not_see_the_area(live: LiveTessera, role: str) -> None:
    with closing(signed_in(live.url, live.engine, role)) as other:
        assert 'href="/sources"' not in other.get("/").text
        assert other.get("/sources").status_code == 403
        assert other.get(f"/sources/{live.source.id}").status_code == 403
    with closing(signed_in(live.url, live.engine, "marketer")) as marketer:
        assert 'href="/sources"' in marketer.get("/").text
        assert marketer.get("/sources/999999").status_code == 404


def test_the_list_pages_by_id(live: LiveTessera, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources_view, "PAGE_SIZE", 2)
    with closing(signed_in(live.url, live.engine, "admin")) as admin:
        for name in ("Alpha", "Bravo"):
            assert create(admin, name).status_code == 200
        first = admin.get("/sources")
        names = re.findall(r'class="source-name" href="/sources/\d+">([^<]+)<', first.text)
        assert names == [live.source.name, "Alpha"]
        next_href = re.search(r'href="(/sources\?after=\d+)" rel="next"', first.text)
        assert next_href
        second = admin.get(next_href.group(1))
        assert re.findall(r'class="source-name" href="/sources/\d+">([^<]+)<', second.text) == [
            "Bravo"
        ]
        assert 'rel="next"' not in second.text
