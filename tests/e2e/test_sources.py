"""Sources in the browser: create one, copy its curl snippet, run it with the real curl and
watch the event arrive in the live debugger without a reload; a bad message shown refused
with its reason; pausing; disabling; and who sees the area."""

from __future__ import annotations

import re
import shutil
import subprocess

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from tests.conftest import LiveTessera
from tests.e2e.conftest import People, assert_accessible, sign_in

# Events reach the log before the tracking API answers; the stream polls twice a second,
# and refusals are written by a thread twice a second. These bound a wait, they are not
# what is tested.
ARRIVES = 10_000

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl program")


def run(command: list[str] | str) -> str:
    """A real curl process (through bash for a snippet pasted as it is); its output."""
    args = ["bash", "-c", command] if isinstance(command, str) else command
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def send_bad_message(web: LiveTessera, key: str) -> str:
    return run(
        [
            "curl", "-s", "-u", f"{key}:", f"{web.url}/v1/track",
            "-H", "Content-Type: application/json", "-d", '{"userId": "user-1"}',
        ]
    )  # fmt: skip


def create_a_source(page: Page, web: LiveTessera) -> str:
    """From the sidebar, through a name error, to the new source's page; its write key."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Sources").click()
    expect(page.get_by_role("heading", name="Sources", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name=web.source.name)).to_be_visible()
    assert_accessible(page)

    page.get_by_role("button", name="Create source").click()
    expect(page.locator("#error-name")).to_contain_text("Give the source a name")
    expect(page.get_by_label("Name")).to_have_attribute("aria-invalid", "true")
    assert_accessible(page)

    page.get_by_label("Name").fill("Web shop")
    page.get_by_role("button", name="Create source").click()
    expect(page.get_by_text("Copy the key now: it will not be shown again.")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/sources/\d+$"))  # a reload shows the source
    key = page.locator("#write-key").inner_text().strip()
    assert len(key) == 32
    assert_accessible(page)
    return key


def use_the_tabs_by_keyboard(page: Page) -> None:
    """Arrows move and wrap, End goes last, one panel shows at a time."""
    page.get_by_role("tab", name="curl").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Python")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("tabpanel")).to_contain_text("segment-analytics-python")
    page.keyboard.press("End")
    expect(page.get_by_role("tabpanel")).to_contain_text("@segment/analytics-next")
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="curl")).to_be_focused()
    expect(page.get_by_role("tabpanel")).to_have_count(1)


def copy_the_curl_snippet(page: Page, key: str) -> str:
    page.get_by_role("tabpanel").get_by_role("button", name="Copy").click()
    expect(page.get_by_role("tabpanel").get_by_role("button", name="Copied")).to_be_visible()
    curl = str(page.evaluate("() => navigator.clipboard.readText()"))
    assert curl.startswith("curl ") and key in curl
    return curl


def pause_and_resume(page: Page, debugger: Locator, curl: str) -> None:
    """Paused, the debugger holds new rows back and counts them; resuming shows them."""
    rows = debugger.get_by_role("listitem").count()
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("button", name="Resume")).to_have_attribute("aria-pressed", "true")
    run(curl)
    expect(page.get_by_role("status").filter(has_text="Paused")).to_contain_text(
        "1 new", timeout=ARRIVES
    )
    assert debugger.get_by_role("listitem").count() == rows
    page.get_by_role("button", name="Resume").click()
    expect(debugger.get_by_role("listitem")).to_have_count(rows + 1)


def disable(page: Page, debugger: Locator, curl: str) -> None:
    """Asked first; then every event is refused, and shown so."""
    page.get_by_role("button", name="Disable", exact=True).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Its events will be refused")
    assert_accessible(page)
    dialog.get_by_role("button", name="Disable source").click()
    expect(page.get_by_role("status").filter(has_text="is disabled")).to_be_visible()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Disabled")
    assert "is disabled" in run(curl)
    expect(debugger.locator(".live-row.refused").first).to_contain_text(
        "the source 'Web shop' is disabled", timeout=ARRIVES
    )
    assert_accessible(page)


def test_a_new_source_shows_its_first_event_live(
    page: Page, web: LiveTessera, people: People
) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=web.url)
    sign_in(page, web, people.emails["marketer"])
    key = create_a_source(page, web)
    use_the_tabs_by_keyboard(page)
    expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible()
    curl = copy_the_curl_snippet(page, key)
    assert run(curl) == '{"success":true}'

    debugger = page.get_by_role("list", name="Events and refusals, newest first")
    newest = debugger.get_by_role("listitem").first
    expect(newest).to_contain_text("Signed Up", timeout=ARRIVES)
    expect(newest).to_contain_text("user-1")
    expect(page.locator('[data-live-count="event"]')).to_have_text("1")
    newest.locator("summary").click()
    expect(newest.locator("pre")).to_contain_text('"plan": "trial"')

    assert "track needs 'event'" in send_bad_message(web, key)
    refused = debugger.locator(".live-row.refused").first
    expect(refused).to_contain_text("track needs 'event', the name of the event", timeout=ARRIVES)
    expect(refused).to_contain_text("Refused 400")
    expect(debugger.get_by_role("listitem").first).to_contain_text("Refused")  # newest on top
    assert_accessible(page)

    pause_and_resume(page, debugger, curl)
    disable(page, debugger, curl)
    assert key not in page.content()

    page.get_by_role("link", name="← Sources").click()
    expect(page.get_by_role("row").filter(has_text="Web shop")).to_contain_text("Disabled")
    assert key not in page.content()
    assert_accessible(page)


def test_a_lost_key_is_rotated_after_a_confirmation(
    page: Page, web: LiveTessera, people: People
) -> None:
    sign_in(page, web, people.emails["admin"])
    page.goto(f"{web.url}/sources/{web.source.id}")
    expect(page.get_by_text("Send an event to see it here")).to_be_visible()
    assert_accessible(page)
    # A burst larger than one read of the stream: the newest are shown, and a notice says so.
    burst = [{"type": "track", "userId": "u", "event": f"Burst {i}"} for i in range(150)]
    sent = httpx.post(f"{web.url}/v1/batch", json={"batch": burst}, auth=(web.write_key, ""))
    assert sent.status_code == 200
    debugger = page.get_by_role("list", name="Events and refusals, newest first")
    # Below the newest 100 (one read), where the ones passed over would be.
    expect(debugger.get_by_role("listitem").nth(100)).to_contain_text(
        "only the newest are shown", timeout=ARRIVES
    )
    expect(debugger.get_by_role("listitem").first).to_contain_text("Burst 149")
    assert_accessible(page)
    expect(page.get_by_text("Send an event to see it here")).to_be_hidden()
    page.get_by_role("button", name="Rotate key").click()
    page.get_by_role("dialog").get_by_role("button", name="Rotate key").click()
    expect(page.get_by_text("The old key no longer works.")).to_be_visible()
    key = page.locator("#write-key").inner_text().strip()
    assert key != web.write_key
    assert_accessible(page)
    page.reload()
    expect(page.locator("#write-key")).to_have_count(0)


def test_roles_without_sources_manage_do_not_see_sources(
    page: Page, web: LiveTessera, people: People
) -> None:
    sign_in(page, web, people.emails["analyst"])
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Sources")).to_have_count(0)
    response = page.goto(f"{web.url}/sources")
    assert response is not None and response.status == 403
