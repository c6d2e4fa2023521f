"""Signing in and out in the browser: the form, its errors, the lockout, and the pages a
visitor or a role may not see."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.conftest import LiveTessera
from tests.e2e.conftest import People, assert_accessible, sign_in


def test_sign_in_and_out(page: Page, web: LiveTessera, people: People) -> None:
    page.goto(web.url + "/")
    expect(page.get_by_role("heading", name="Sign in to your workspace")).to_be_visible()
    assert_accessible(page)

    page.get_by_label("Email").fill(people.emails["marketer"])
    page.get_by_label("Password").fill("not the password at all")
    page.get_by_role("button", name="Sign in").click()
    error = page.locator("#error-password")
    expect(error).to_contain_text("do not match")
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Email")).to_have_value(people.emails["marketer"])
    assert_accessible(page)

    sign_in(page, web, people.emails["marketer"])
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    page.get_by_text(people.emails["marketer"]).first.click()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_contain_text("signed out")
    page.goto(web.url + "/settings/users")
    expect(page.get_by_role("heading", name="Sign in to your workspace")).to_be_visible()


def test_a_locked_account_is_told_when_to_try_again(
    page: Page, web: LiveTessera, people: People
) -> None:
    email = people.emails["sales"]
    for _ in range(web.settings.login_max_failures_per_account):
        page.goto(web.url + "/")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill("wrong password, again")
        page.get_by_role("button", name="Sign in").click()
    page.goto(web.url + "/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("a long enough password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text(re.compile(r"Try again in \d+ minutes?"))


def test_sign_in_returns_to_the_page_asked_for(
    page: Page, web: LiveTessera, people: People
) -> None:
    page.goto(web.url + "/settings/audit")
    page.get_by_label("Email").fill(people.emails["admin"])
    page.get_by_label("Password").fill("a long enough password")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/settings/audit$"))


def test_missing_and_forbidden_pages(page: Page, web: LiveTessera, people: People) -> None:
    sign_in(page, web, people.emails["analyst"])
    response = page.goto(web.url + "/no/such/page")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="We could not find that page")).to_be_visible()
    assert_accessible(page)
    response = page.goto(web.url + "/settings/users")
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", name="This page is not for your role")).to_be_visible()
    assert "Traceback" not in page.content()
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Users")).to_have_count(0)
