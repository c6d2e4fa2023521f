"""Destinations in the browser, against a local webhook receiver: set one up through the
generated form and test its connection; make its deliveries fail, read the dead letters'
reasons, fix the receiver and replay; and what an analyst sees. Every page passes
axe-core with no console error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tessera.config import Settings
from tests.activation.receiver import Faults, receiver
from tests.activation.test_delivery import FAST, orders, send, wait_for
from tests.conftest import LiveTessera
from tests.e2e.conftest import People, assert_accessible, sign_in


@pytest.fixture
def web_settings(tmp_path: Path) -> Settings:
    """Retries and pauses in fractions of a second, and messages that give up after four,
    so failures become dead letters while the test watches."""
    base = Settings(database_url=f"sqlite:///{tmp_path / 'tessera.db'}", processor_mode="thread")
    return base.model_copy(update={**FAST, "delivery_max_age_seconds": 4.0})


def create_webhook(page: Page, web: LiveTessera, name: str, url: str) -> str:
    """Through the catalogue and the generated form; returns the destination's path."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Destinations").click()
    expect(page.get_by_role("heading", name="Destinations", exact=True)).to_be_visible()
    page.get_by_role("link", name=re.compile("Choose a destination|Add a destination")).click()
    expect(page.get_by_role("heading", name="Add a destination")).to_be_visible()
    assert_accessible(page)
    page.locator('a[href="/destinations/new/webhook"]').click()
    expect(page.get_by_role("heading", name="Set up Webhook")).to_be_visible()
    assert_accessible(page)
    page.get_by_label("Name").fill(name)
    page.get_by_label("URL").fill(url)
    page.get_by_role("button", name="Events").click()  # htmx adds an events rule
    expect(page.get_by_label("Track (actions)")).to_be_focused()
    names = page.get_by_label("Event names")
    expect(names).to_be_visible()
    names.fill("Order Completed")
    page.get_by_text("Advanced settings").click()
    expect(page.get_by_label("Timeout (seconds)")).to_have_value("10")
    assert_accessible(page)
    page.get_by_role("button", name="Create destination").click()
    page.wait_for_url(re.compile(r"/destinations/dst_[0-9a-f]+$"))
    expect(page.get_by_role("status").first).to_contain_text("is set up")
    return page.url.removeprefix(web.url)


def test_set_up_a_webhook_and_test_its_connection(
    page: Page, web: LiveTessera, people: People
) -> None:
    with receiver() as hook:
        sign_in(page, web, people.emails["marketer"])
        page.goto(web.url + "/destinations")
        expect(page.get_by_role("heading", name="No destinations yet")).to_be_visible()
        assert_accessible(page)
        # A bad URL first: the error sits under the field, in words.
        page.get_by_role("link", name="Choose a destination").click()
        page.locator('[href="/destinations/new/webhook"]').click()
        page.get_by_label("Name").fill("Broken")
        page.get_by_label("URL").fill("ftp://files.example.com/")
        page.get_by_role("button", name="Create destination").click()
        expect(page.locator("#error-field-config-url")).to_contain_text(
            "is not an http:// or https:// URL"
        )
        expect(page.get_by_label("URL")).to_have_attribute("aria-invalid", "true")
        assert_accessible(page)

        path = create_webhook(page, web, "Orders webhook", hook.url)
        assert_accessible(page)
        page.get_by_role("button", name="Test connection").click()
        expect(page.locator("#connection-result")).to_contain_text("The connection works.")
        assert hook.messages()[0]["kind"] == "test"
        hook.down()
        page.get_by_role("button", name="Test connection").click()
        expect(page.locator("#connection-result")).to_contain_text("The connection failed.")
        assert_accessible(page)
        page.get_by_role("link", name="What it receives").click()
        expect(page.get_by_label("Event names")).to_have_value("Order Completed")
        assert_accessible(page)
        page.get_by_role("link", name="Mapping").click()
        page.get_by_role("button", name="Add hashed email and phone").click()
        expect(page.locator('input[value="email_sha256"]')).to_be_visible()
        page.get_by_role("button", name="Save mapping").click()
        expect(page.get_by_role("status").first).to_contain_text("Mapping saved")
        assert_accessible(page)
        page.goto(web.url + "/destinations")
        expect(page.get_by_role("link", name="Orders webhook")).to_be_visible()
        assert_accessible(page)
        assert path.startswith("/destinations/dst_")


def test_failed_deliveries_become_dead_letters_that_replay(
    page: Page, web: LiveTessera, people: People
) -> None:
    with receiver(faults=Faults(error_500=1.0)) as hook:
        sign_in(page, web, people.emails["marketer"])
        page.goto(web.url + "/destinations")
        path = create_webhook(page, web, "Flaky orders", hook.url)
        send(web, orders(3, 1))
        # The receiver answers 500 to everything: retried, then dead after their maximum age.
        page.get_by_role("link", name=re.compile("Dead letters")).click()
        expect(page.get_by_role("heading", name=re.compile("dead letters", re.I))).to_be_visible()

        def dead_letters() -> bool:
            page.reload()
            return page.locator("table.messages tbody tr").count() == 3

        wait_for(dead_letters, what="three dead letters")
        reasons = page.get_by_role("region", name="Why they failed")
        expect(reasons).to_contain_text("boom")
        expect(reasons).to_contain_text("maximum age")
        assert_accessible(page)
        page.get_by_role("link", name="Delivery log").click()
        page.get_by_label("Status").select_option("dead")
        page.wait_for_url(re.compile(r"state=dead"))
        expect(page.locator("table.messages tbody tr")).to_have_count(3)
        assert_accessible(page)

        # Fix the receiver, then replay one dead letter after confirming.
        hook.faults.error_500 = 0.0
        page.get_by_role("link", name=re.compile("Dead letters")).click()
        page.locator("table.messages tbody tr").first.get_by_role("button", name="Replay").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("Replay this dead letter?")
        assert_accessible(page)
        dialog.get_by_role("button", name="Replay it").click()
        expect(page.get_by_role("status").first).to_contain_text("1 dead letter queued again")
        wait_for(lambda: len(hook.messages()) == 1, what="the replayed message")

        def delivered() -> bool:
            page.goto(web.url + path + "/log?state=delivered")
            return page.locator("table.messages tbody tr").count() == 1

        wait_for(delivered, what="the replayed message in the log")
        expect(page.locator("table.messages")).to_contain_text("Delivered")
        assert_accessible(page)
        # The rest, ticked all at once.
        page.goto(web.url + path + "/dead-letters")
        page.get_by_label("Select all on this page").check()
        expect(page.locator('input[name="ids"]:checked')).to_have_count(2)
        page.get_by_role("button", name="Replay selected").click()
        page.get_by_role("dialog").get_by_role("button", name="Replay selected").click()
        expect(page.get_by_role("status").first).to_contain_text("2 dead letters queued again")
        wait_for(lambda: len(hook.messages()) == 3, what="all three delivered")
        page.goto(web.url + path)
        expect(page.get_by_role("img", name=re.compile("Messages sent and failed"))).to_be_visible()
        assert_accessible(page)


def test_a_paused_destination_resumes(page: Page, web: LiveTessera, people: People) -> None:
    with receiver() as hook:
        hook.down()
        sign_in(page, web, people.emails["admin"])
        page.goto(web.url + "/destinations")
        path = create_webhook(page, web, "Down for now", hook.url)
        send(web, orders(4, 3))

        def paused() -> bool:
            page.goto(web.url + path)
            return page.get_by_role("button", name="Resume now").count() == 1

        wait_for(paused, what="the destination to pause")
        expect(page.locator(".paused-banner")).to_contain_text("calls failed in a row")
        assert_accessible(page)
        hook.up()
        page.get_by_role("button", name="Resume now").click()
        expect(page.get_by_role("status").first).to_contain_text("is sending again")
        expect(page.get_by_role("button", name="Resume now")).to_have_count(0)
        assert_accessible(page)


def test_an_analyst_reads_without_edit_controls(
    page: Page, web: LiveTessera, people: People
) -> None:
    sign_in(page, web, people.emails["marketer"])
    page.goto(web.url + "/destinations")
    path = create_webhook(page, web, "Read me", "https://example.com/hook")
    page.goto(web.url + "/")
    page.get_by_text(people.emails["marketer"]).first.click()
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, web, people.emails["analyst"])
    for tab in ("", "/log", "/dead-letters", "/subscriptions", "/mapping", "/settings"):
        page.goto(web.url + path + tab)
        expect(page.get_by_role("button", name="Test connection")).to_have_count(0)
        expect(page.locator("main form[method=post]")).to_have_count(0)
        assert_accessible(page)
    expect(
        page.get_by_text("stored, not shown").or_(page.get_by_text("not set")).first
    ).to_be_visible()
    page.goto(web.url + "/destinations")
    expect(page.get_by_role("link", name="Add a destination")).to_have_count(0)
    assert_accessible(page)
