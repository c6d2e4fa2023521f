"""Browser journeys: a real Tessera on loopback, driven by Debian's Chromium through
Playwright, with axe-core (from npm) checking every page a journey opens.

Chromium is /usr/bin/chromium (`apt-get install chromium`; Playwright's own browser download
does not work here), or TESSERA_TEST_CHROMIUM. Outside CI a machine without it skips these
tests loudly; under CI=true that is an error. They are marked `e2e` and `slow`:
`pytest -m 'not e2e'` leaves them out.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy.engine import Engine

from tessera.auth.users import create_user
from tessera.config import Settings
from tests.conftest import LiveTessera, start_live

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
AXE_SOURCE = AXE.read_text() if AXE.exists() else ""
CHROMIUM = os.environ.get("TESSERA_TEST_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "a long enough password"
# Flags that keep Chromium off the network: this machine refuses outside connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.slow)


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)


# Per module, not per session: while Playwright's sync API is open, the main thread has a
# running event loop, and the tests after tests/e2e that call asyncio.run would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        _unavailable(f"Chromium is not at {CHROMIUM}: install it (apt-get install chromium)")
    if not AXE.exists():
        _unavailable(f"axe-core is not at {AXE}: run `make assets` (npm ci)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def web_settings(tmp_path: Path) -> Settings:
    """The browser tests run on SQLite: what they test is the page, and the services under
    it are tested on both backends by the tests beside them."""
    return Settings(database_url=f"sqlite:///{tmp_path / 'tessera.db'}", processor_mode="thread")


@pytest.fixture
def web(web_settings: Settings, sqlite_template: Path, tmp_path: Path) -> Iterator[LiveTessera]:
    from tessera.store import create_store_engine

    (tmp_path / "tessera.db").write_bytes(sqlite_template.read_bytes())
    engine: Engine = create_store_engine(web_settings.database_url)
    yield from start_live(web_settings, engine)
    engine.dispose()


@dataclass
class People:
    """One user per role, all with PASSWORD."""

    emails: dict[str, str]


@pytest.fixture
def people(web: LiveTessera) -> People:
    emails = {}
    with web.engine.begin() as conn:
        for role in ("admin", "marketer", "sales", "support", "analyst"):
            email = f"{role}-{uuid.uuid4().hex[:6]}@example.com"
            create_user(conn, email=email, password=PASSWORD, role=role)
            emails[role] = email
    return People(emails)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(
        viewport={"width": 1280, "height": 860}, locale="en-GB", timezone_id="Europe/Paris"
    )
    page = context.new_page()
    errors: list[str] = []

    def on_console(message: Any) -> None:
        # A page answered with 4xx on purpose (a form with errors, the 404 page) is
        # logged by Chromium as a failed load of the document itself: not a defect.
        document = message.location.get("url", "").split("#")[0] == page.url.split("#")[0]
        if message.type == "error" and not (document and "Failed to load" in message.text):
            errors.append(f"{message.text} ({message.location.get('url')})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.console_errors = errors  # type: ignore[attr-defined]
    yield page
    context.close()


def sign_in(page: Page, web: LiveTessera, email: str, password: str = PASSWORD) -> None:
    page.goto(web.url + "/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(web.url + "/")


def check_accessibility(page: Page) -> list[dict[str, Any]]:
    """Run axe-core on the page; return the serious and critical violations (none, when all
    is well), each with the rule and the offending nodes, so a failure says what to fix."""
    # Evaluated through the DevTools protocol, so the page's CSP (no inline script) allows it.
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(AXE_SOURCE)
    results = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        {
            "rule": violation["id"],
            "impact": violation["impact"],
            "help": violation["help"],
            "nodes": [node["target"] for node in violation["nodes"]][:5],
        }
        for violation in results["violations"]
        if violation["impact"] in ("serious", "critical")
    ]


def assert_accessible(page: Page) -> None:
    problems = check_accessibility(page)
    assert problems == [], f"axe-core found on {page.url}: {problems}"
    errors = getattr(page, "console_errors", [])
    assert errors == [], f"the browser console reported on {page.url}: {errors}"
