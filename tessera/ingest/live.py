"""The live view of one source as server-sent events: its events as they are logged, and the
messages refused from it, with their reasons.

The stream polls the store every `poll_seconds` (`tail_events`, which reads a bounded range
of the log, and `list_refusals`) in a worker thread, so it works the same whichever process
wrote the events; each poll costs the same at any log size. It is a plain Starlette
`StreamingResponse` of text frames: the protocol is a few lines of text, and Starlette
already cancels the generator when the client goes away (sse-starlette would add a pin and
a process-wide patch of uvicorn's signal handling for what `stopping` does here).

Every message carries the cursor after it as its `id` (`<log position>-<refusal id>`), and
an `id`-only frame moves the cursor on when the log moved without this source, so a
reconnecting `EventSource` resumes where it was (`Last-Event-ID`), as does `?after=`. A
stream ends after `max_seconds` (the client reconnects and is authorised again) and when the
server stops (`stopping`, set by `local_server.Server`), so it never holds a shutdown up.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import orjson
from sqlalchemy.engine import Engine

from tessera.errors import BadRequest
from tessera.eventlog.service import head_position, tail_events
from tessera.ingest.activity import last_refusal_id, list_refusals

POLL_SECONDS = 0.5
HEARTBEAT_SECONDS = 15.0
MAX_STREAM_SECONDS = 300.0
RECONNECT_MILLISECONDS = 2_000
BATCH = 100  # events, and refusals, sent per poll at most


@dataclass(frozen=True, slots=True)
class Cursor:
    position: int  # the log position read up to
    refusal_id: int  # the last refusal sent

    def __str__(self) -> str:
        return f"{self.position}-{self.refusal_id}"


_CURSOR = re.compile(r"(\d{1,19})(?:-(\d{1,19}))?", re.ASCII)
MAX_CURSOR_PART = 2**63 - 1


def parse_cursor(text: str) -> Cursor:
    """`<position>-<refusal id>` as this stream sends in `id:`; a plain position also works
    (refusals then start from the newest)."""
    found = _CURSOR.fullmatch(text.strip())
    parts = [int(part) for part in found.groups("0")] if found else []
    if not parts or max(parts) > MAX_CURSOR_PART:
        raise BadRequest(
            f"the cursor {text[:40]!r} is not one this stream sent; expected "
            "'<log position>-<refusal id>', e.g. '1042-7'"
        )
    assert found is not None
    return Cursor(parts[0], parts[1] if found.group(2) is not None else -1)


def start_cursor(engine: Engine, *, source_id: int, given: Cursor | None) -> Cursor:
    """Where a stream starts: the given cursor, or now (the head of the log and the
    source's newest refusal), so a new viewer sees what arrives from here on."""
    if given is not None and given.refusal_id >= 0:
        return given
    with engine.connect() as conn:
        refusal_id = last_refusal_id(conn, source_id=source_id)
        position = head_position(conn) if given is None else given.position
    return Cursor(position, refusal_id)


def _frame(kind: str | None, data: dict[str, Any] | None, cursor: Cursor) -> bytes:
    lines = [f"id: {cursor}"]
    if kind is not None and data is not None:
        lines += [f"event: {kind}", "data: " + orjson.dumps(data).decode()]
    return ("\n".join(lines) + "\n\n").encode()


def event_out(row: dict[str, Any]) -> dict[str, Any]:
    """An event of the log as the live view and `/events` show it."""
    return {
        "seq": row["seq"],
        "type": row["type"],
        "name": row["name"],
        "message_id": row["message_id"],
        "user_id": row["user_id"],
        "anonymous_id": row["anonymous_id"],
        "timestamp": row["timestamp"],
        "received_at": row["received_at"],
        "payload": row["payload"],
    }


def refusal_out(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "received_at": row["received_at"],
        "status": row["status"],
        "code": row["code"],
        "reason": row["reason"],
        "message_id": row["message_id"],
        "excerpt": row["excerpt"],
    }


def _poll(engine: Engine, source_id: int, cursor: Cursor) -> tuple[list[bytes], Cursor]:
    """The frames for what came since `cursor`, and the cursor after them."""
    frames: list[bytes] = []
    with engine.connect() as conn:
        tail = tail_events(conn, source_id=source_id, after_position=cursor.position, limit=BATCH)
        refusals = list_refusals(conn, source_id=source_id, after_id=cursor.refusal_id, limit=BATCH)
    if tail.skipped:
        gap = {"after_position": cursor.position, "to_position": tail.position}
        frames.append(_frame("gap", gap, cursor))
    for row in tail.events:
        cursor = Cursor(row["seq"], cursor.refusal_id)
        frames.append(_frame("event", event_out(row), cursor))
    for row in refusals:
        cursor = Cursor(cursor.position, row["id"])
        frames.append(_frame("refusal", refusal_out(row), cursor))
    if tail.position != cursor.position:
        cursor = Cursor(tail.position, cursor.refusal_id)
        frames.append(_frame(None, None, cursor))  # moves the client's Last-Event-ID only
    return frames, cursor


async def live_stream(
    engine: Engine,
    *,
    source_id: int,
    cursor: Cursor,
    stopping: threading.Event,
    poll_seconds: float = POLL_SECONDS,
    max_seconds: float = MAX_STREAM_SECONDS,
) -> AsyncIterator[bytes]:
    """The frames of one stream, until `max_seconds`, `stopping`, or the client leaves
    (Starlette then cancels this generator at its next await)."""
    yield f"retry: {RECONNECT_MILLISECONDS}\n".encode() + _frame(None, None, cursor)
    started = last_sent = time.monotonic()
    while not stopping.is_set() and time.monotonic() - started < max_seconds:
        frames, cursor = await anyio.to_thread.run_sync(_poll, engine, source_id, cursor)
        now = time.monotonic()
        if frames:
            yield b"".join(frames)
            last_sent = now
        elif now - last_sent >= HEARTBEAT_SECONDS:
            yield b": keep-alive\n\n"  # keeps proxies from closing an idle stream
            last_sent = now
        await anyio.sleep(poll_seconds)
