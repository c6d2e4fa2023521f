"""The profile page through a live server, on both backends: what it shows (traits with
provenance, identities, merges, the timeline a page at a time and live), who sees what
(analysts masked, no Unmerge without profiles:write), and Unmerge from its form."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tessera.audit.service import list_entries
from tessera.processor import wait_until_caught_up
from tessera.profiles.timeline import latest_event_seq
from tests.conftest import LiveTessera
from tests.ingest.helpers import post
from tests.web.helpers import signed_in

# A kiosk's anonymous id, reused by two people, merged Ann and Bob (as in
# tests/profiles/test_unmerge.py): a merge worth undoing.
KIOSK = [
    {
        "type": "identify",
        "anonymousId": "kiosk",
        "traits": {"email": "ann@example.com", "name": "Ann Lee", "plan": "gold"},
        "timestamp": "2026-11-01T10:00:00Z",
    },
    {
        "type": "track",
        "anonymousId": "kiosk",
        "event": "Book Borrowed",
        "properties": {"title": "Dune"},
        "timestamp": "2026-11-01T10:05:00Z",
    },
    {
        "type": "identify",
        "anonymousId": "bob-phone",
        "traits": {"email": "bob@example.com", "name": "Bob Stone"},
        "timestamp": "2026-11-02T09:00:00Z",
    },
    {
        "type": "identify",
        "anonymousId": "kiosk",
        "context": {"traits": {"email": "bob@example.com"}},
        "timestamp": "2026-11-02T09:30:00Z",
        "messageId": "the-bad-link",
    },
    {
        "type": "track",
        "anonymousId": "bob-phone",
        "event": "Book Returned",
        "timestamp": "2026-11-02T10:00:00Z",
    },
]


def send(live: LiveTessera, messages: list[Any]) -> None:
    response = post(live, "/v1/batch", {"batch": messages})
    assert response.status_code == 200, response.text
    wait_until_caught_up(live.engine)


def browser(live: LiveTessera, role: str) -> httpx.Client:
    """A client signed in as a new user with `role`, asking for pages as a browser does."""
    return signed_in(live.url, live.engine, role)


def csrf(page: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def events_in(page: str) -> str:
    """The timeline's list (the filter's suggestions above it also name events)."""
    return page[page.index('class="event-list"') :]


def profile_id_of(client: httpx.Client, ref: str) -> str:
    response = client.get(f"/people/{ref}")
    assert response.status_code == 302, response.text
    return response.headers["location"].removeprefix("/people/")


@pytest.fixture
def admin(live: LiveTessera) -> httpx.Client:
    return browser(live, "admin")


def test_the_page_shows_who_traits_identities_merges_and_timeline(
    live: LiveTessera, admin: httpx.Client
) -> None:
    send(live, KIOSK)
    profile_id = profile_id_of(admin, "email:Ann@Example.com")
    page = admin.get(f"/people/{profile_id}")
    assert page.status_code == 200, page.text
    html = page.text
    assert "<h1>Ann Lee</h1>" in html or "<h1>Bob Stone</h1>" in html
    # Traits, each with where its value came from.
    [plan] = [
        trait
        for trait in html.split('<details class="trait">')[1:]
        if '<span class="trait-name">Plan</span>' in trait
    ]
    assert "gold" in plan and f"From {live.source.name}, Identify" in plan
    assert "the-bad-link" in html  # the event behind the email trait, and the merge's
    # Identities: the graph with its text alternative, and the list.
    assert 'role="img"' in html and "kiosk" in html and "bob-phone" in html
    assert "ann@example.com" in html and "bob@example.com" in html
    # The merge, with its reason and an Unmerge for an admin.
    assert "through a shared identifier" in html
    assert 'action="/people/' + profile_id + '/unmerge"' in html
    # The timeline, newest first, with each payload folded.
    listed = events_in(html)
    assert listed.index("Book Returned") < listed.index("Book Borrowed")
    assert '<details class="event-payload">' in html and "&#34;title&#34;: &#34;Dune&#34;" in html
    # A merged-away id and TYPE:VALUE lead to the one address of the person.
    absorbed = re.search(r'<a class="mono" href="/people/(prf_\d+)">', html)
    assert absorbed is not None
    moved = admin.get(f"/people/{absorbed.group(1)}?type=track")
    assert moved.status_code == 302
    assert moved.headers["location"] == f"/people/{profile_id}?type=track"


def test_unknown_and_malformed_references(live: LiveTessera, admin: httpx.Client) -> None:
    missing = admin.get("/people/prf_424242")
    assert missing.status_code == 404
    assert "We could not find that page" in missing.text
    assert "No profile has id &#39;prf_424242&#39;" in missing.text
    nobody = admin.get("/people/email:nobody@example.com")
    assert nobody.status_code == 404
    malformed = admin.get("/people/not-a-reference")
    assert malformed.status_code == 400
    assert "neither a profile id" in malformed.text


def test_the_timeline_pages_filters_and_shows_new_events(
    live: LiveTessera, admin: httpx.Client
) -> None:
    send(
        live,
        [
            {
                "type": "track",
                "userId": "reader",
                "event": f"Chapter {number:02d} Read",
                "timestamp": f"2026-11-01T10:{number:02d}:00Z",
            }
            for number in range(45)
        ]
        + [{"type": "identify", "userId": "reader", "traits": {"name": "Rea Der"}}],
    )
    profile_id = profile_id_of(admin, "user_id:reader")
    first = events_in(admin.get(f"/people/{profile_id}").text)
    assert first.count('class="event-item') == 30
    assert "Chapter 44 Read" in first and "Chapter 14 Read" not in first
    more = re.search(r'id="timeline-more" hx-get="([^"]+)"', first)
    assert more is not None
    # The sentinel's request, as htmx sends it when it scrolls into view: the next entries.
    partial = admin.get(
        more.group(1).replace("&amp;", "&"),
        headers={"hx-request": "true", "hx-target": "timeline-more"},
    )
    assert partial.status_code == 200
    assert "<html" not in partial.text
    assert partial.text.count('class="event-item') == 16
    assert "Chapter 00 Read" in partial.text and "That is the first event" in partial.text
    # Without script, the same address is a whole page.
    assert "<html" in admin.get(more.group(1).replace("&amp;", "&")).text

    only = events_in(admin.get(f"/people/{profile_id}", params={"type": "identify"}).text)
    assert only.count('class="event-item') == 1 and "Identified" in only
    named = events_in(admin.get(f"/people/{profile_id}", params={"name": "Chapter 07 Read"}).text)
    assert named.count('class="event-item') == 1
    none = admin.get(f"/people/{profile_id}", params={"name": "Nothing Like It"}).text
    assert "No events match these filters" in none
    unknown = admin.get(f"/people/{profile_id}", params={"type": "bogus"})
    assert unknown.status_code == 200 and "Pick a type from the list." in unknown.text

    # The live poll: nothing new is a 204 (htmx swaps nothing); a new event comes back.
    with live.engine.connect() as conn:
        latest = latest_event_seq(conn, profile_id)
    poll = f"/people/{profile_id}/timeline/new"
    headers = {"hx-request": "true", "hx-target": "timeline-live"}
    assert admin.get(poll, params={"after": latest}, headers=headers).status_code == 204
    send(live, [{"type": "track", "userId": "reader", "event": "Book Finished"}])
    fresh = admin.get(poll, params={"after": latest}, headers=headers)
    assert fresh.status_code == 200
    assert "Book Finished" in fresh.text and "is-new" in fresh.text
    after = re.search(r'hx-get="[^"]*after=(\d+)"', fresh.text)
    assert after is not None and int(after.group(1)) > latest
    # A filter that leaves it out still moves the poller past it.
    filtered = admin.get(poll, params={"after": latest, "type": "page"}, headers=headers)
    assert "Book Finished" not in filtered.text and "timeline-live" in filtered.text
    assert admin.get(poll, params={"after": "x"}, headers=headers).status_code == 422


def test_an_analyst_sees_personal_data_masked_and_no_unmerge(live: LiveTessera) -> None:
    send(live, KIOSK)
    analyst = browser(live, "analyst")
    refused = analyst.get("/people/email:ann@example.com")
    assert refused.status_code == 403  # looking people up by email would reveal customers
    found = analyst.get("/people/anonymous_id:kiosk")
    assert found.status_code == 302
    page = analyst.get(found.headers["location"])
    assert page.status_code == 200
    html = page.text
    for secret in ("ann@example.com", "bob@example.com", "Ann Lee", "Bob Stone"):
        assert secret not in html
    # Masked as the API masks them: the first character and the shape.
    assert "a***@***" in html and "b***@***" in html and "<h1>B***</h1>" in html
    assert "/unmerge" not in html and ">Unmerge<" not in html
    profile_id = found.headers["location"].removeprefix("/people/")
    merge = analyst.post(
        f"/people/{profile_id}/unmerge", data={"merge_id": "1", "csrf_token": csrf(html)}
    )
    assert merge.status_code == 403


def test_unmerge_from_the_form_is_audited_and_needs_the_csrf_token(
    live: LiveTessera, admin: httpx.Client
) -> None:
    send(live, KIOSK)
    profile_id = profile_id_of(admin, "email:ann@example.com")
    html = admin.get(f"/people/{profile_id}").text
    merge_id = re.search(r'name="merge_id" value="(\d+)"', html)
    assert merge_id is not None

    forged = admin.post(f"/people/{profile_id}/unmerge", data={"merge_id": merge_id.group(1)})
    assert forged.status_code == 403
    assert "reload the page" in forged.text
    assert profile_id_of(admin, "email:bob@example.com") == profile_id  # still one

    done = admin.post(
        f"/people/{profile_id}/unmerge",
        data={"merge_id": merge_id.group(1), "csrf_token": csrf(html)},
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"].startswith(f"/people/{profile_id}?unmerged=prf_")
    ann, bob = (
        profile_id_of(admin, "email:ann@example.com"),
        profile_id_of(admin, "email:bob@example.com"),
    )
    assert ann != bob and profile_id in (ann, bob)
    result = admin.get(done.headers["location"])
    assert "Two profiles again" in result.text and "is a profile of its own again" in result.text
    assert f'href="/people/{ann}"' in result.text and f'href="/people/{bob}"' in result.text
    with live.engine.connect() as conn:
        [entry] = list_entries(conn, action="profile.unmerge")["items"]
    assert entry["actor"].startswith("user:admin-") and entry["target"] == profile_id
    assert entry["details"]["merge_id"] == int(merge_id.group(1))

    again = admin.post(
        f"/people/{profile_id}/unmerge",
        data={"merge_id": merge_id.group(1), "csrf_token": csrf(result.text)},
    )
    assert again.status_code == 303  # that merge is gone; the page says so in words
    assert "no longer part of this profile" in admin.get(again.headers["location"]).text
