"""Every page in the sidebar, for every role, passes axe-core with no serious or critical
violation and no browser console error, and shows only what the role may open."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Page, expect

from tessera.processor import wait_until_caught_up
from tests.conftest import LiveTessera
from tests.e2e.conftest import People, assert_accessible, sign_in

BATCH = {
    "batch": [
        {
            "type": "identify",
            "userId": "u1",
            "traits": {"email": "jo@example.com", "first_name": "Jo"},
        },
        {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"total": 42}},
        {"type": "page", "anonymousId": "a1", "name": "Home"},
    ]
}


@pytest.mark.parametrize("role", ["admin", "analyst", "sales"])
def test_every_page_of_the_sidebar_is_accessible(
    page: Page, web: LiveTessera, people: People, role: str
) -> None:
    posted = httpx.post(f"{web.url}/v1/batch", json=BATCH, auth=(web.write_key, ""), timeout=30)
    assert posted.status_code == 200
    wait_until_caught_up(web.engine)
    sign_in(page, web, people.emails[role])
    nav = page.get_by_role("navigation", name="Main")
    links = [link.get_attribute("href") for link in nav.get_by_role("link").all()]
    links = [href for href in links if href and href.startswith("/") and href != "/docs"]
    assert "/" in links and "/people" in links
    if role != "admin":
        assert "/settings/users" not in links
    for href in links:
        response = page.goto(web.url + href)
        assert response is not None and response.status == 200, href
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        assert_accessible(page)
