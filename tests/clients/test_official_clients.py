"""The official tracking SDKs, installed from their registries, against a live Tessera.

Each SDK runs in its own environment, built by `make clients` (tests/clients/setup.sh):
segment-analytics-python 2.3 and 2.4 and rudder-sdk-python in .venv-clients/<name>/, and
@segment/analytics-node in tests/clients/node/node_modules. A driver (drive_python.py,
node/drive.mjs) makes one identify, track, page, screen, group and alias call through the
SDK's public API, flushes, and reports the HTTP requests the SDK made. The test then checks
the wire format each SDK really uses (path, auth, gzip) and that the event log holds each
call exactly once with its fields intact.

A missing environment skips the test with a hint to run `make clients`; under CI=true it
fails instead.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tessera.eventlog import list_events
from tests.conftest import LiveTessera

pytestmark = pytest.mark.clients

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VENVS = REPO / ".venv-clients"
NODE_DIR = HERE / "node"
DRIVER_TIMEOUT = 90
CALL_TYPES = ("identify", "track", "page", "screen", "group", "alias")


@dataclass(frozen=True)
class Client:
    """One official SDK and what its requests are expected to look like."""

    name: str
    library: str  # context.library.name the SDK stamps on each message
    basic_auth: bool  # sends the write key as the Basic auth username
    body_write_key: bool  # sends the write key as 'writeKey' in the batch body
    gzipped: bool
    identify_traits: tuple[str, ...] = ("traits",)  # where identify's traits land

    @property
    def is_node(self) -> bool:
        return self.name == "analytics-node"

    @property
    def pinned_version(self) -> str:
        if self.is_node:
            manifest = json.loads((NODE_DIR / "package.json").read_text())
            return str(manifest["dependencies"]["@segment/analytics-node"])
        distribution = "rudder-sdk-python" if self.name == "rudder" else "segment-analytics-python"
        for line in (HERE / f"requirements-{self.name}.txt").read_text().splitlines():
            if line.lower().startswith(f"{distribution}=="):
                return line.split("==", 1)[1].strip()
        raise AssertionError(f"requirements-{self.name}.txt does not pin {distribution}")

    def installed_marker(self) -> Path:
        """The stamp setup.sh writes once an environment is completely built."""
        if self.is_node:
            return NODE_DIR / "node_modules" / ".stamp-tessera"
        return VENVS / self.name / ".stamp-requirements"

    def command(self, live: LiveTessera) -> list[str]:
        if self.is_node:
            return ["node", str(NODE_DIR / "drive.mjs"), live.url, live.write_key]
        python = str(VENVS / self.name / "bin" / "python")
        return [python, str(HERE / "drive_python.py"), self.name, live.url, live.write_key]


CLIENTS = [
    # 2.3 authenticates with 'writeKey' in the body only: no Authorization header.
    Client("segment-2.3", "analytics-python", basic_auth=False, body_write_key=True, gzipped=False),
    # 2.4 added Basic auth and still sends 'writeKey' in the body.
    Client("segment-2.4", "analytics-python", basic_auth=True, body_write_key=True, gzipped=False),
    # RudderStack's fork: Basic auth only, gzip on by default, identify traits in context.
    Client(
        "rudder",
        "analytics-python",
        basic_auth=True,
        body_write_key=False,
        gzipped=True,
        identify_traits=("context", "traits"),
    ),
    Client(
        "analytics-node",
        "@segment/analytics-node",
        basic_auth=True,
        body_write_key=True,
        gzipped=False,
    ),
]


def _require_installed(client: Client) -> None:
    marker = client.installed_marker()
    problem = None
    if not marker.exists():
        problem = f"{marker.relative_to(REPO)} is missing"
    elif client.is_node and shutil.which("node") is None:
        problem = "`node` is not on PATH"
    if problem is None:
        return
    message = (
        f"the {client.name} SDK environment is not installed ({problem}); "
        "run `make clients` (bash tests/clients/setup.sh) to build it"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _calls(tag: str) -> list[dict[str, Any]]:
    """One call of each type, with values unique to this run."""
    user = f"user-{tag}"
    return [
        {
            "type": "identify",
            "messageId": f"{tag}-identify",
            "userId": user,
            "traits": {"email": f"{tag}@example.com", "plan": "pro", "seats": 3},
        },
        {
            "type": "track",
            "messageId": f"{tag}-track",
            "userId": user,
            "event": f"Order Completed {tag}",
            "properties": {"run": tag, "revenue": 42.5, "items": ["a", "b"]},
        },
        {
            "type": "page",
            "messageId": f"{tag}-page",
            "userId": user,
            "category": "Docs",
            "name": f"Pricing {tag}",
            "properties": {"run": tag, "path": "/pricing"},
        },
        {
            "type": "screen",
            "messageId": f"{tag}-screen",
            "userId": user,
            "category": "App",
            "name": f"Settings {tag}",
            "properties": {"run": tag, "tab": "billing"},
        },
        {
            "type": "group",
            "messageId": f"{tag}-group",
            "userId": user,
            "groupId": f"group-{tag}",
            "traits": {"name": f"Acme {tag}", "employees": 12},
        },
        {
            "type": "alias",
            "messageId": f"{tag}-alias",
            "userId": user,
            "previousId": f"anon-{tag}",
        },
    ]


def _drive(client: Client, live: LiveTessera, calls: list[dict[str, Any]]) -> dict[str, Any]:
    result = subprocess.run(
        client.command(live),
        input=json.dumps(calls),
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT,
        cwd=HERE,
        check=False,
    )
    detail = f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.returncode == 0, f"the {client.name} driver failed: {detail}"
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _at(payload: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = payload
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _contains(actual: Any, expected: dict[str, Any]) -> bool:
    return isinstance(actual, dict) and {k: actual.get(k) for k in expected} == expected


def _parse(value: Any) -> datetime:
    assert isinstance(value, str) and value, f"expected an ISO-8601 string, got {value!r}"
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _check_wire(client: Client, live: LiveTessera, report: dict[str, Any], ids: list[str]) -> None:
    """What the SDK really put on the wire: path, auth, encoding, one copy of each message."""
    assert report["sdk"]["version"] == client.pinned_version, (
        f"{client.name} runs {report['sdk']['version']} but {client.pinned_version} is pinned; "
        "run `make clients` to rebuild its environment"
    )
    requests = report["requests"]
    assert requests, f"{client.name} made no HTTP request: {report}"
    for request in requests:
        assert request["status"] == 200, f"{client.name} request was refused: {request}"
        assert request["method"] == "POST"
        assert urlsplit(request["url"]).path == "/v1/batch"
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert headers["content-type"].startswith("application/json")
        authorization = headers.get("authorization")
        if client.basic_auth:
            assert authorization is not None, f"{client.name} sent no Authorization header"
            scheme, _, credentials = authorization.partition(" ")
            assert scheme == "Basic"
            assert base64.b64decode(credentials).decode() == f"{live.write_key}:"
        else:
            assert authorization is None, f"{client.name} unexpectedly sent {authorization!r}"
        body = request["body"]
        assert isinstance(body, dict), f"{client.name} sent a body that is not JSON: {body!r}"
        if client.body_write_key:
            assert body.get("writeKey") == live.write_key
        else:
            assert "writeKey" not in body
        assert body.get("sentAt"), f"{client.name} sent no batch-level sentAt"
        assert request["gzipped"] is client.gzipped
        assert (headers.get("content-encoding") == "gzip") is client.gzipped
    if client.gzipped:
        assert report["config"]["gzip"] is True, "gzip should be the SDK's own default"
    sent = Counter(m["messageId"] for r in requests for m in r["body"]["batch"])
    assert sent == Counter(ids), f"{client.name} did not send each message exactly once"


def _check_row(
    client: Client,
    call: dict[str, Any],
    row: dict[str, Any],
    window: tuple[datetime, datetime],
    write_key: str,
) -> None:
    payload = row["payload"]
    kind = call["type"]
    where = f"{client.name} {kind}"
    assert row["type"] == payload["type"] == kind, where
    assert row["user_id"] == payload["userId"] == call["userId"], where
    assert row["anonymous_id"] is None, where
    assert payload["messageId"] == call["messageId"], where
    if kind == "track":
        assert row["name"] == payload["event"] == call["event"], where
        assert _contains(payload.get("properties"), call["properties"]), (where, payload)
    elif kind in ("page", "screen"):
        assert row["name"] == payload["name"] == call["name"], where
        assert payload.get("category") == call["category"], (where, payload)
        assert _contains(payload.get("properties"), call["properties"]), (where, payload)
    elif kind == "identify":
        traits = _at(payload, client.identify_traits)
        assert _contains(traits, call["traits"]), (where, payload)
    elif kind == "group":
        assert payload["groupId"] == call["groupId"], where
        assert _contains(payload.get("traits"), call["traits"]), (where, payload)
    elif kind == "alias":
        assert payload["previousId"] == call["previousId"], where
    assert _at(payload, ("context", "library", "name")) == client.library, (where, payload)
    assert _at(payload, ("context", "library", "version")) == client.pinned_version, where

    started, finished = window
    received = _parse(payload["receivedAt"])
    assert started <= received <= finished, (where, payload["receivedAt"])
    slack = timedelta(minutes=1)
    for field in ("timestamp", "sentAt", "originalTimestamp"):
        moment = _parse(payload[field])
        assert abs(moment - received) < slack, (where, field, payload[field])
    for column in ("timestamp", "original_timestamp", "sent_at", "received_at"):
        assert row[column] is not None, (where, column)
    # The write key is a credential: it must not be stored with the event.
    assert write_key not in json.dumps(payload), where


@pytest.mark.parametrize("client", CLIENTS, ids=[c.name for c in CLIENTS])
def test_each_call_type_is_stored_exactly_once(client: Client, live: LiveTessera) -> None:
    _require_installed(client)
    tag = f"{client.name}-{uuid.uuid4().hex[:10]}"
    calls = _calls(tag)
    ids = [call["messageId"] for call in calls]
    assert [call["type"] for call in calls] == list(CALL_TYPES)

    started = datetime.now(UTC)
    report = _drive(client, live, calls)
    finished = datetime.now(UTC)
    assert report["errors"] == [], f"{client.name} reported errors: {report['errors']}"
    _check_wire(client, live, report, ids)

    with live.engine.connect() as conn:
        rows = list_events(conn, source_id=live.source.id)
    stored = Counter(row["message_id"] for row in rows)
    assert stored == Counter(ids), f"expected each of {ids} once, the log holds {dict(stored)}"
    by_id = {row["message_id"]: row for row in rows}
    for call in calls:
        _check_row(client, call, by_id[call["messageId"]], (started, finished), live.write_key)
