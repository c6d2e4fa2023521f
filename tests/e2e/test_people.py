"""Finding a person: the search box in the top bar, a piece of their email, their profile."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from tessera.processor import wait_until_caught_up
from tests.conftest import LiveTessera
from tests.e2e.conftest import People, assert_accessible, sign_in

BATCH = {
    "batch": [
        {
            "type": "identify",
            "userId": "u1",
            "traits": {"email": "jo.smith@example.com", "first_name": "Jo", "last_name": "Smith"},
        },
        {
            "type": "identify",
            "userId": "u2",
            "traits": {"email": "ann.lee@example.org", "first_name": "Ann", "last_name": "Lee"},
        },
    ]
}


def _load(web: LiveTessera) -> None:
    response = httpx.post(f"{web.url}/v1/batch", json=BATCH, auth=(web.write_key, ""), timeout=30)
    assert response.status_code == 200
    wait_until_caught_up(web.engine)


def test_find_a_person_by_a_piece_of_their_email(
    page: Page, web: LiveTessera, people: People
) -> None:
    _load(web)
    sign_in(page, web, people.emails["marketer"])
    search = page.get_by_role("searchbox", name="Find a person")
    search.first.fill("jo.smi")
    search.first.press("Enter")
    expect(page.get_by_role("link", name="Jo Smith")).to_be_visible()
    expect(page.get_by_role("link", name="Ann Lee")).to_have_count(0)
    assert_accessible(page)
    page.get_by_role("link", name="Jo Smith").click()
    expect(page.get_by_role("heading", name="Jo Smith", level=1)).to_be_visible()
    assert_accessible(page)


def test_an_analyst_sees_masked_data_and_no_settings(
    page: Page, web: LiveTessera, people: People
) -> None:
    _load(web)
    sign_in(page, web, people.emails["analyst"])
    page.goto(web.url + "/people")
    expect(page.get_by_text("masked for your role")).to_be_visible()
    expect(page.get_by_text("jo.smith@example.com")).to_have_count(0)
    nav = page.get_by_role("navigation", name="Main")
    for hidden in ("Users", "API tokens", "Audit log", "Sources"):
        expect(nav.get_by_role("link", name=hidden)).to_have_count(0)
    assert_accessible(page)
