"""Drive one official Python tracking SDK against a tracking API and report what it sent.

Runs under the SDK's own virtualenv (`.venv-clients/<client>/bin/python`), never Tessera's,
so it imports nothing from this repository:

    drive_python.py <client> <base-url> <write-key>  < calls.json

`calls.json` is a JSON array of Segment-spec calls ({"type": "track", "messageId": ...,
"userId": ..., "event": ..., "properties": ...}, and so on for identify, page, screen, group
and alias). Each becomes one call of the SDK's public API; the client is then flushed and
shut down. Stdout gets one JSON report:

    {"sdk": {"distribution", "version"}, "config": {...},
     "requests": [{"method", "url", "headers", "gzipped", "body", "status", "response"}],
     "errors": [{"error", "messageIds"}]}

`requests` is recorded by a response hook on the SDK's own requests session, so it shows
each request exactly as prepared and sent (headers after auth, body before decoding).
The exit status is 1 when the SDK reported an error.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.metadata
import json
import sys
from typing import Any

# client name → (distribution, the package holding Client, the module holding _session)
CLIENTS: dict[str, tuple[str, str, str]] = {
    "segment-2.3": (
        "segment-analytics-python",
        "segment.analytics",
        "segment.analytics.request",
    ),
    "segment-2.4": (
        "segment-analytics-python",
        "segment.analytics",
        "segment.analytics.request",
    ),
    "rudder": ("rudder-sdk-python", "rudderstack.analytics", "rudderstack.analytics.request"),
}

# Fail fast and visibly: no long retry loops, tiny flush interval.
COMMON_OPTIONS: dict[str, Any] = {"max_retries": 1, "timeout": 10, "upload_interval": 0.05}
EXTRA_OPTIONS: dict[str, dict[str, Any]] = {
    # 2.4 added a wall-clock budget for retries (12 hours by default).
    "segment-2.4": {"max_total_backoff_duration": 10, "max_rate_limit_duration": 10},
}


def _decode_body(body: bytes | str | None) -> tuple[bool, Any]:
    raw = body.encode() if isinstance(body, str) else (body or b"")
    gzipped = raw[:2] == b"\x1f\x8b"
    if gzipped:
        raw = gzip.decompress(raw)
    try:
        return gzipped, json.loads(raw)
    except ValueError:
        return gzipped, raw.decode("utf-8", "replace")


def _send(client: Any, call: dict[str, Any]) -> None:
    kind = call["type"]
    message_id = call["messageId"]
    if kind == "identify":
        client.identify(call["userId"], call["traits"], message_id=message_id)
    elif kind == "track":
        client.track(call["userId"], call["event"], call["properties"], message_id=message_id)
    elif kind in ("page", "screen"):
        getattr(client, kind)(
            call["userId"],
            category=call["category"],
            name=call["name"],
            properties=call["properties"],
            message_id=message_id,
        )
    elif kind == "group":
        client.group(call["userId"], call["groupId"], call["traits"], message_id=message_id)
    elif kind == "alias":
        client.alias(call["previousId"], call["userId"], message_id=message_id)
    else:
        raise SystemExit(f"unknown call type {kind!r}")


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[1] not in CLIENTS:
        print(__doc__, file=sys.stderr)
        return 2
    name, base_url, write_key = argv[1:]
    distribution, package, request_module = CLIENTS[name]
    calls = json.load(sys.stdin)

    requests_seen: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []

    def record(response: Any, *args: Any, **kwargs: Any) -> None:
        prepared = response.request
        gzipped, body = _decode_body(prepared.body)
        requests_seen.append(
            {
                "method": prepared.method,
                "url": prepared.url,
                "headers": dict(prepared.headers),
                "gzipped": gzipped,
                "body": body,
                "status": response.status_code,
                "response": response.text[:2000],
            }
        )

    def on_error(error: Exception, batch: list[dict[str, Any]]) -> None:
        errors.append({"error": repr(error), "messageIds": [m.get("messageId") for m in batch]})

    importlib.import_module(request_module)._session.hooks["response"].append(record)
    client_class = importlib.import_module(package).Client
    client = client_class(
        write_key,
        host=base_url,
        on_error=on_error,
        **COMMON_OPTIONS,
        **EXTRA_OPTIONS.get(name, {}),
    )
    for call in calls:
        _send(client, call)
    client.flush()
    client.shutdown()

    report = {
        "sdk": {
            "distribution": distribution,
            "version": importlib.metadata.version(distribution),
        },
        "config": {"gzip": client.gzip, "host": client.host},
        "requests": requests_seen,
        "errors": errors,
    }
    json.dump(report, sys.stdout)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
