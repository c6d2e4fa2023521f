"""Take a screenshot of every page of the web UI, on demo data, into docs/screenshots/.

    .venv/bin/python scripts/screenshots.py [--people 300] [--out docs/screenshots]

It makes a fresh SQLite store in a temporary directory, loads `tessera demo` through the
real pipeline, starts `tessera serve`, signs in as an admin in Debian's Chromium and visits:
every sidebar entry (so a new page is photographed the day it is added), the sign-in form,
the 404 page, and the extra pages a view module lists in `SCREENSHOTS(conn)` (a list of
(name, path) or (name, path, width) for detail pages such as one profile).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PASSWORD = "screenshots password"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _slug(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "home"


def pages(database_url: str) -> list[tuple[str, str, int]]:
    """(file name, path, viewport width) for every page to photograph."""
    from tessera.store import create_store_engine
    from tessera.web.views import modules

    found: list[tuple[str, str, int]] = [("signin", "/", 1280)]
    engine = create_store_engine(database_url)
    with engine.connect() as conn:
        for module in modules():
            for item in getattr(module, "NAV", []):
                found.append((_slug(item.href), item.href, 1280))
            extra = getattr(module, "SCREENSHOTS", None)
            for entry in extra(conn) if extra else []:
                name, path, *width = entry
                found.append((name, path, width[0] if width else 1280))
    engine.dispose()
    found.append(("not-found", "/no/such/page", 1280))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument(
        "--chromium", default=os.environ.get("TESSERA_TEST_CHROMIUM", "/usr/bin/chromium")
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        url_db = f"sqlite:///{workdir}/tessera.db"
        env = {**os.environ, "TESSERA_DATABASE_URL": url_db, "TESSERA_NEW_USER_PASSWORD": PASSWORD}
        env.setdefault("TESSERA_SECRET_KEY", "")
        if not env["TESSERA_SECRET_KEY"]:
            del env["TESSERA_SECRET_KEY"]
        tessera = str(BIN / "tessera")
        subprocess.run([tessera, "migrate"], env=env, check=True, cwd=workdir)
        subprocess.run(
            [tessera, "user", "create", "admin@example.com", "--role", "admin"],
            env=env,
            check=True,
            cwd=workdir,
            capture_output=True,
        )
        subprocess.run(
            [tessera, "demo", "--people", str(args.people)],
            env=env,
            check=True,
            cwd=workdir,
            capture_output=True,
        )
        port = _free_port()
        server = subprocess.Popen(
            [tessera, "serve", "--port", str(port)],
            env=env,
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    httpx.get(base + "/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.2)
            shoot(base, pages(url_db), args.out, args.chromium)
        finally:
            server.terminate()
            server.wait(30)
    return 0


def shoot(base: str, targets: list[tuple[str, str, int]], out: Path, chromium: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        visitor = browser.new_page(viewport={"width": 1280, "height": 800})
        visitor.goto(base + "/")
        visitor.screenshot(path=str(out / "signin.png"))
        context = browser.new_context(viewport={"width": 1280, "height": 860}, locale="en-GB")
        page = context.new_page()
        page.goto(base + "/")
        page.get_by_label("Email").fill("admin@example.com")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(base + "/")
        for name, path, width in targets:
            if name == "signin":
                continue
            page.set_viewport_size({"width": width, "height": 860 if width > 600 else 844})
            page.goto(base + path)
            page.wait_for_load_state("networkidle")
            # The viewport grows to the page's height, so the fixed sidebar spans it too.
            height = page.evaluate("document.documentElement.scrollHeight")
            page.set_viewport_size({"width": width, "height": min(max(height, 800), 4000)})
            page.wait_for_timeout(150)
            page.screenshot(path=str(out / f"{name}.png"))
            print(f"screenshots: {name}.png  {path}")
        browser.close()


if __name__ == "__main__":
    raise SystemExit(main())
