"""The snippets a new source is shown: the curl one run through a live server, and each
pointed at the right host with the right key (tests/clients runs the SDK ones)."""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess

import httpx
import pytest

from tessera.eventlog import list_events
from tessera.ingest.snippets import snippets
from tests.conftest import LiveTessera


def test_the_curl_snippet_sends_its_event(live: LiveTessera) -> None:
    curl = snippets(live.url, live.write_key).curl
    words = shlex.split(curl)
    if shutil.which("curl"):
        result = subprocess.run(words, capture_output=True, text=True, timeout=30, check=False)
        assert result.stdout == '{"success":true}', result.stderr
    else:  # pragma: no cover - curl is nearly everywhere; send the same request
        user = words[words.index("-u") + 1]
        response = httpx.post(
            words[words.index("-u") + 2],
            auth=(user.rstrip(":"), ""),
            content=words[words.index("-d") + 1],
            headers={"Content-Type": "application/json"},
        )
        assert response.json() == {"success": True}
    with live.engine.connect() as conn:
        [event] = list_events(conn, source_id=live.source.id)
    assert (event["type"], event["name"], event["payload"]["properties"]) == (
        "track",
        "Signed Up",
        {"plan": "trial"},
    )


def test_each_snippet_names_the_host_and_the_key() -> None:
    key = "k3y_with-dash_0123456789abcdefghi"
    made = snippets("https://cdp.example.com:8443/", key)
    assert "https://cdp.example.com:8443/v1/track" in made.curl and f"{key}:" in made.curl
    ast.parse(made.python)  # it is Python
    assert f"analytics.write_key = {key!r}" in made.python
    assert "analytics.host = 'https://cdp.example.com:8443'" in made.python
    assert f"writeKey: {json.dumps(key)}" in made.node
    assert 'host: "https://cdp.example.com:8443"' in made.node
    settings = re.search(r"cdnSettings: (\{.*\}),", made.analytics_js)
    assert settings is not None
    segment = json.loads(settings.group(1))["integrations"]["Segment.io"]
    assert segment == {"apiKey": key, "apiHost": "cdp.example.com:8443/v1", "protocol": "https"}


def test_a_base_url_without_a_host_is_refused() -> None:
    for bad in ("cdp.example.com", "ftp://cdp.example.com", "/relative"):
        with pytest.raises(ValueError, match="http"):
            snippets(bad, "key")
