"""Small helpers for tracking API tests."""

from __future__ import annotations

from typing import Any

import httpx

from tessera.eventlog import list_events
from tests.conftest import LiveTessera


def post(live: LiveTessera, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("auth", (live.write_key, ""))
    if body is not None:
        kwargs["json"] = body
    return httpx.post(f"{live.url}{path}", timeout=30, **kwargs)


def stored(live: LiveTessera) -> list[dict[str, Any]]:
    with live.engine.connect() as conn:
        return list_events(conn, limit=100_000)
