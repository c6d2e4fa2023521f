"""The profile page in the browser: open a person, read an event's payload, scroll the
timeline, watch a new event arrive, undo a wrong merge, and the analyst's masked view."""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tessera.processor import wait_until_caught_up
from tests.conftest import LiveTessera
from tests.e2e.conftest import People, assert_accessible, sign_in
from tests.web.test_profile_page import KIOSK

# A reader with more events than one page of the timeline holds (30).
READER = [
    {
        "type": "identify",
        "userId": "reader",
        "traits": {"name": "Rea Der", "plan": "pro"},
        "timestamp": "2026-10-31T09:00:00Z",
    },
    *(
        {
            "type": "track",
            "userId": "reader",
            "event": f"Chapter {number:02d} Read",
            "properties": {"book": "Dune", "chapter": number},
            "timestamp": f"2026-11-01T10:{number:02d}:00Z",
        }
        for number in range(45)
    ),
]


def track(web: LiveTessera, messages: list[Any]) -> None:
    response = httpx.post(
        f"{web.url}/v1/batch", json={"batch": messages}, auth=(web.write_key, ""), timeout=30
    )
    assert response.status_code == 200, response.text


def test_read_a_profile_its_payloads_and_a_live_timeline(
    page: Page, web: LiveTessera, people: People
) -> None:
    track(web, READER)
    wait_until_caught_up(web.engine)
    sign_in(page, web, people.emails["marketer"])
    page.goto(web.url + "/people/user_id:reader")
    expect(page).to_have_url(re.compile(r"/people/prf_\d+$"))
    expect(page.get_by_role("heading", level=1, name="Rea Der")).to_be_visible()
    expect(
        page.get_by_role("img", name=re.compile("was built from its identifiers"))
    ).to_be_visible()
    assert_accessible(page)

    events = page.locator("#timeline .event-item")
    expect(events).to_have_count(30)
    newest = events.first
    expect(newest).to_contain_text("Chapter 44 Read")
    payload = newest.locator("pre")
    expect(payload).to_be_hidden()  # folded until asked for
    newest.get_by_text("Payload").click()
    expect(payload).to_be_visible()
    expect(payload).to_contain_text('"chapter": 44')

    # Scrolling to the end of the list loads the older events, a page at a time.
    page.locator("#timeline-more").scroll_into_view_if_needed()
    expect(events).to_have_count(46)
    expect(events.last.locator("time")).not_to_have_text(re.compile(r"^\d{4}-"))  # localised
    expect(page.get_by_text("That is the first event we have for this person.")).to_be_visible()

    # An event sent after the page loaded shows up at the top, without a reload.
    page.evaluate("window.__same_page = true")
    track(web, [{"type": "track", "userId": "reader", "event": "Book Finished"}])
    expect(events.first).to_contain_text("Book Finished", timeout=10_000)
    expect(events.first.locator("time")).to_have_text(re.compile("second|now"))
    assert page.evaluate("window.__same_page") is True
    assert_accessible(page)


def test_filter_the_timeline(page: Page, web: LiveTessera, people: People) -> None:
    track(web, READER)
    wait_until_caught_up(web.engine)
    sign_in(page, web, people.emails["support"])
    page.goto(web.url + "/people/user_id:reader")
    page.get_by_label("Type").select_option("identify")
    events = page.locator("#timeline .event-item")
    expect(events).to_have_count(1)
    expect(events.first).to_contain_text("Identified")
    expect(page).to_have_url(re.compile(r"type=identify"))
    assert_accessible(page)


def test_unmerge_a_wrong_merge_after_confirming(
    page: Page, web: LiveTessera, people: People
) -> None:
    track(web, KIOSK)
    wait_until_caught_up(web.engine)
    sign_in(page, web, people.emails["admin"])
    page.goto(web.url + "/people/email:ann@example.com")
    merges = page.get_by_role("region", name="Merge history")
    expect(merges).to_contain_text("through a shared identifier")
    merges.get_by_role("button", name="Unmerge").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("will not merge these two again")
    assert_accessible(page)
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()

    merges.get_by_role("button", name="Unmerge").click()
    dialog.get_by_role("button", name="Unmerge").click()
    expect(page.get_by_role("status")).to_contain_text("is a profile of its own again")
    split = page.get_by_role("region", name="Two profiles again")
    expect(split.get_by_role("link")).to_have_count(2)
    expect(page.get_by_role("region", name="Merge history")).to_contain_text("Never merged")
    assert_accessible(page)

    other = split.get_by_role("link").filter(has_not_text="this page")
    other.click()
    expect(page.get_by_role("heading", level=1)).to_have_text(re.compile("Ann Lee|Bob Stone"))
    expect(page.get_by_role("region", name="Merge history")).to_contain_text("Never merged")
    assert_accessible(page)


def test_an_analyst_sees_the_profile_masked(page: Page, web: LiveTessera, people: People) -> None:
    track(web, KIOSK)
    wait_until_caught_up(web.engine)
    sign_in(page, web, people.emails["analyst"])
    page.goto(web.url + "/people/anonymous_id:kiosk")
    expect(page.get_by_role("heading", level=1)).to_have_text("B***")
    content = page.content()
    for secret in ("ann@example.com", "bob@example.com", "Ann Lee", "Bob Stone"):
        assert secret not in content
    expect(page.get_by_role("button", name="Unmerge")).to_have_count(0)
    assert_accessible(page)
