"""The snippets a new source is shown, pasted and run as they are with the official SDKs
(the environments `make clients` builds): each must deliver its event to the source."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tessera.eventlog import list_events
from tessera.ingest.snippets import snippets
from tessera.processor import wait_until_caught_up
from tests.clients.test_official_clients import CLIENTS, NODE_DIR, VENVS, _require_installed
from tests.conftest import LiveTessera

pytestmark = pytest.mark.clients
BY_NAME = {client.name: client for client in CLIENTS}


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=90, cwd=cwd, check=False
    )
    assert result.returncode == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"


def _delivered(live: LiveTessera) -> list[tuple[str, str | None, str | None]]:
    wait_until_caught_up(live.engine)
    with live.engine.connect() as conn:
        rows = list_events(conn, source_id=live.source.id)
    return [(row["type"], row["name"], row["user_id"]) for row in rows]


@pytest.mark.parametrize("name", ["segment-2.3", "segment-2.4"])
def test_the_python_snippet_sends_its_event(live: LiveTessera, tmp_path: Path, name: str) -> None:
    _require_installed(BY_NAME[name])
    script = tmp_path / "send.py"
    script.write_text(snippets(live.url, live.write_key).python)
    _run([str(VENVS / name / "bin" / "python"), str(script)], cwd=tmp_path)
    assert _delivered(live) == [("track", "Signed Up", "user-1")]


def test_the_node_snippet_sends_its_event(live: LiveTessera, tmp_path: Path) -> None:
    _require_installed(BY_NAME["analytics-node"])
    # Where a user would have run `npm install @segment/analytics-node`: a node_modules.
    (tmp_path / "node_modules").symlink_to(NODE_DIR / "node_modules")
    script = tmp_path / "send.mjs"
    script.write_text(snippets(live.url, live.write_key).node)
    _run(["node", str(script)], cwd=tmp_path)
    assert _delivered(live) == [("track", "Signed Up", "user-1")]
