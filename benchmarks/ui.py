"""Server time of every page of the web UI on a large store: p50 and p95 per page and per
htmx partial, the people search and the audience preview, read from each response's
`Server-Timing` header (the network and the client are left out).

    .venv/bin/python benchmarks/ui.py [--profiles 1000000] [--events-per-person 10] [--record]

The store is the one benchmarks/preview.py builds and caches (1M profiles with their
events, audiences and computed traits; built once, about 20 minutes), opened by a
`tessera serve` with the processor off, so only the pages use the machine. Targets
(DESIGN.md): page p95 <= 300 ms, search <= 100 ms, preview <= 2 s.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from harness import announce, machine, mark, pct, record
from harness_server import free_port, run_tessera, tessera_command, tessera_env
from harness_store import region_of, settings
from preview_store import default_cache, ensure_store

PASSWORD = "benchmark password 1"
EMAIL = "ui-bench@example.com"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
PAGE_TARGET, SEARCH_TARGET, PREVIEW_TARGET = 0.300, 0.100, 2.0


def _one(db: sqlite3.Connection, query: str) -> Any:
    row = db.execute(query).fetchone()
    return row[0] if row else None


def targets(database: Path) -> list[tuple[str, str, str, float]]:
    """(label, method, path, target seconds) for every page and partial, on real ids."""
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        person = _one(
            db,
            "SELECT id FROM profiles WHERE merged_into IS NULL ORDER BY event_count DESC LIMIT 1",
        )
        audience = _one(db, "SELECT id FROM audiences ORDER BY id LIMIT 1")
        trait = _one(
            db, "SELECT name FROM computed_traits WHERE name NOT LIKE '\\_%' ESCAPE '\\' LIMIT 1"
        )
        source = _one(db, "SELECT id FROM sources ORDER BY id LIMIT 1")
        email = _one(db, "SELECT value FROM identities WHERE type = 'email' LIMIT 1") or "a@b.c"
    pages: list[tuple[str, str, str, float]] = [
        ("home", "GET", "/", PAGE_TARGET),
        ("people", "GET", "/people", PAGE_TARGET),
        ("people, recently active", "GET", "/people?sort=recent", PAGE_TARGET),
        ("people search: email piece", "GET", f"/people?q={email[:5]}", SEARCH_TARGET),
        ("people search: name prefix", "GET", "/people?q=smi", SEARCH_TARGET),
        ("profile", "GET", f"/people/{person}", PAGE_TARGET),
        ("audiences", "GET", "/audiences", PAGE_TARGET),
        ("computed traits", "GET", "/computed-traits", PAGE_TARGET),
        ("destinations", "GET", "/destinations", PAGE_TARGET),
        ("sources", "GET", "/sources", PAGE_TARGET),
        ("schema", "GET", "/schema", PAGE_TARGET),
        ("settings: users", "GET", "/settings/users", PAGE_TARGET),
        ("settings: audit", "GET", "/settings/audit", PAGE_TARGET),
    ]
    if audience:
        pages += [
            ("audience", "GET", f"/audiences/{audience}", PAGE_TARGET),
            ("audience builder", "GET", f"/audiences/{audience}/edit", PAGE_TARGET),
            ("people in an audience", "GET", f"/people?audience={audience}", PAGE_TARGET),
        ]
    if trait:
        pages.append(("computed trait", "GET", f"/computed-traits/{trait}", PAGE_TARGET))
    if source:
        pages.append(("source and live debugger", "GET", f"/sources/{source}", PAGE_TARGET))
    return pages


def start(database: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = tessera_env(database, {"TESSERA_PROCESSOR_MODE": "off"})
    process = subprocess.Popen(
        [*tessera_command(), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 1800  # a first start migrates the cached store
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("tessera serve exited at start")
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("tessera serve did not start")


def sign_in(base: str, database: Path) -> httpx.Client:
    try:
        run_tessera(database, "user", "create", EMAIL, "--role", "admin", "--password", PASSWORD)
    except RuntimeError as exc:
        if "already exists" not in str(exc):
            raise
    client = httpx.Client(base_url=base, headers={"accept": "text/html"}, timeout=60)
    form = client.get("/")
    token = CSRF.search(form.text)
    assert token, "the sign-in form has no CSRF field"
    signed = client.post(
        "/login", data={"email": EMAIL, "password": PASSWORD, "csrf_token": token.group(1)}
    )
    if signed.status_code != 303:
        raise SystemExit(f"sign-in failed: {signed.status_code}")
    client.cookies.set("tessera_session", signed.cookies["tessera_session"])
    return client


def server_ms(response: httpx.Response) -> float:
    found = re.search(r"app;dur=([\d.]+)", response.headers.get("server-timing", ""))
    return float(found.group(1)) / 1000 if found else float("nan")


def measure(
    client: httpx.Client, pages: list[tuple[str, str, str, float]], calls: int
) -> list[dict[str, Any]]:
    results = []
    for label, method, path, target in pages:
        times, statuses = [], set()
        for _ in range(calls):
            response = client.request(method, path)
            statuses.add(response.status_code)
            times.append(server_ms(response))
        results.append(
            {
                "label": label,
                "path": path,
                "target": target,
                "p50": statistics.median(times),
                "p95": pct(sorted(times), 0.95),
                "statuses": sorted(statuses),
            }
        )
        print(
            f"  {label:32} p50 {results[-1]['p50'] * 1000:7.1f} ms  p95 "
            f"{results[-1]['p95'] * 1000:7.1f} ms  {sorted(statuses)}",
            flush=True,
        )
    return results


def preview(client: httpx.Client, calls: int) -> dict[str, Any]:
    page = client.get("/audiences/new")
    token = CSRF.search(page.text)
    draft = {"definition": {"trait": "city", "op": "eq", "value": "London"}}
    times = []
    for _ in range(calls):
        response = client.post(
            "/audiences/preview",
            json=draft,
            headers={"x-csrf-token": token.group(1) if token else ""},
        )
        times.append(server_ms(response))
    return {
        "label": "audience preview (trait)",
        "path": "/audiences/preview",
        "target": PREVIEW_TARGET,
        "p50": statistics.median(times),
        "p95": pct(sorted(times), 0.95),
        "statuses": [response.status_code],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events-per-person", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--slice-people", type=int, default=20_000)
    parser.add_argument("--cache-dir", default=str(default_cache()))
    parser.add_argument("--calls", type=int, default=20, help="requests of each page")
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    announce("ui", info)
    store_settings = settings()
    database, how = ensure_store(args, store_settings, region_of(store_settings))
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        events = _one(db, "SELECT max(seq) FROM events") or 0
        profiles = _one(db, "SELECT count(*) FROM profiles WHERE merged_into IS NULL") or 0
    print(f"store: {database} ({how}), {profiles:,} profiles, {events:,} events", flush=True)
    process, base = start(database)
    try:
        client = sign_in(base, database)
        measure(client, targets(database)[:3], 2)  # warm the page cache a little
        results = measure(client, targets(database), args.calls)
        results.append(preview(client, max(3, args.calls // 4)))
    finally:
        process.terminate()
        process.wait(60)
    lines = ["| page | p50 | p95 | target | |", "| --- | --- | --- | --- | --- |"]
    for item in results:
        ok = item["p95"] <= item["target"] and item["statuses"] == [200]
        lines.append(
            f"| {item['label']} | {item['p50'] * 1000:.1f} ms | {item['p95'] * 1000:.1f} ms | "
            f"{item['target'] * 1000:.0f} ms | {mark(ok)} |"
        )
    print("\n".join(lines))
    if args.record:
        record(
            "Web UI: server time per page",
            lines,
            info=info,
            run=f"benchmarks/ui.py --profiles {args.profiles} --calls {args.calls}",
            note=(
                f"A `tessera serve` (processor off) on the cached store of benchmarks/preview.py: "
                f"{profiles:,} profiles and {events:,} events. Server time from Server-Timing, "
                f"{args.calls} requests a page, signed in as an admin."
            ),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
