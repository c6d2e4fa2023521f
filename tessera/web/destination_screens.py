"""A real destination for `scripts/screenshots.py` to photograph when the demo has none: a
signed webhook to a small receiver in the screenshot process, fed the demo's latest orders
again, so its pages show deliveries, retries, dead letters and their reasons as they are.

The receiver takes most messages, answers 503 the first time for some (retried, then
delivered) and refuses some with 422 for good (dead letters). It lives as long as the
process that photographs the pages; nothing here runs inside a Tessera server.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import Connection

from tessera.activation import service
from tessera.activation.models import destinations
from tessera.eventlog.models import events
from tessera.eventlog.service import NewEvent, append_events
from tessera.store.secrets import load_keyring

ORDERS = 240


class _Receiver(BaseHTTPRequestHandler):
    seen: set[str] = set()  # noqa: RUF012 - shared by the handler's instances on purpose

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        key = self.headers.get("Idempotency-Key") or hashlib.sha256(body).hexdigest()
        roll = int(hashlib.sha256(key.encode()).hexdigest()[:4], 16) % 100
        time.sleep(0.02 + roll / 2000)  # a receiver takes a moment to answer
        if roll < 7:
            self._answer(422, b'{"error": "customer_email is required for orders"}')
        elif roll < 20 and key not in self.seen:
            self.seen.add(key)
            self._answer(503, b'{"error": "receiver busy, try again"}')
        else:
            self._answer(200, b'{"ok": true}')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def _receiver() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/orders"


def _orders_again(conn: Connection) -> int:
    """The latest orders of the demo tracked again (new message ids, now), as if their
    people had ordered once more: they reach the destination through the real processor."""
    rows = conn.execute(
        sa.select(events)
        .where(events.c.type == "track", events.c.name == "Order Completed")
        .order_by(events.c.seq.desc())
        .limit(ORDERS)
    ).all()
    now = datetime.now(UTC)
    again: list[NewEvent] = []
    for row in reversed(rows):
        payload = orjson.loads(row.payload)
        message_id = f"{row.message_id}-again"
        payload.update(messageId=message_id, timestamp=now.isoformat())
        again.append(
            NewEvent(
                source_id=row.source_id,
                message_id=message_id,
                type=row.type,
                name=row.name,
                user_id=row.user_id,
                anonymous_id=row.anonymous_id,
                timestamp=now,
                original_timestamp=None,
                sent_at=None,
                received_at=now,
                payload=orjson.dumps(payload).decode(),
            )
        )
    return append_events(conn, again)


def screenshot_setup(conn: Connection) -> str | None:
    """The id of the destination to photograph: the first there is, or a new one."""
    row = conn.execute(sa.select(destinations.c.id).order_by(destinations.c.created_at)).first()
    if row is not None:
        return str(row.id)
    secret = os.environ.get("TESSERA_SECRET_KEY")
    keyring = load_keyring(
        secret_key=SecretStr(secret) if secret else None,
        database_url=conn.engine.url.render_as_string(hide_password=False),
    )
    created = service.create_destination(
        conn,
        name="Order webhook",
        type="webhook",
        config={"url": _receiver(), "secret": "whsec-demo", "headers": {"X-Team": "growth"}},
        subscriptions=[
            {
                "type": "events",
                "event_types": ["track"],
                "event_names": ["Order Completed", "Order Refunded"],
            }
        ],
        mapping={
            "fields": [
                {"source": "profile.traits.email", "target": "email_sha256", "hash": "email"}
            ]
        },
        consent_categories=[],
        enabled=True,
        actor="user:screenshots",
        keyring=keyring,
    )
    _orders_again(conn)
    conn.commit()
    return str(created["id"])
