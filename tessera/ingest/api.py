"""The Segment HTTP Tracking API: /v1/identify|track|page|screen|group|alias|batch|import.

Each handler authenticates the write key, reads the body within its limit, validates every
message, and answers only after the accepted messages are committed to the event log.
In a batch, valid messages are stored even when others are rejected; the 400 then lists
each rejected message by index with its reason. Every refusal of a known source (a
rejected message, a body that cannot be read, a disabled source, back-pressure) is handed
to `IngestActivity` in memory, which keeps it for the source's live view; refusals without
a known source are only counted.

`TrackingAPI` is a plain ASGI app rather than FastAPI routes: this is the hottest path in
Tessera, and routing by dict lookup with headers read straight from the scope costs a
third of what FastAPI's routing, dependency solving and Request objects do per call.
The API is documented in docs/tracking-api.md instead of the management API's OpenAPI.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
import orjson
import sqlalchemy as sa
from starlette.types import Receive, Scope, Send

from tessera.config import Settings
from tessera.errors import (
    BadRequest,
    Forbidden,
    HTTPError,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from tessera.eventlog import EventLogWriter, NewEvent
from tessera.ingest.activity import (
    IngestActivity,
    Refusal,
    excerpt_of_body,
    excerpt_of_message,
)
from tessera.ingest.body import ClientDisconnected, parse_json_object, read_body
from tessera.ingest.messages import MessageError, iso_utc, normalise_message, parse_timestamp
from tessera.ingest.sources import Source, WriteKeyCache
from tessera.logs import event

log = logging.getLogger(__name__)
Headers = dict[str, str]

SUCCESS = b'{"success":true}'

# path → message type; None marks the batch endpoints.
ROUTES: dict[str, str | None] = {
    "identify": "identify",
    "track": "track",
    "page": "page",
    "screen": "screen",
    "group": "group",
    "alias": "alias",
    "batch": None,
    "import": None,
}
# The short paths analytics.js uses.
SHORT_ROUTES: dict[str, str] = {
    "i": "identify",
    "t": "track",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
    "b": "batch",
}


@dataclass(frozen=True, slots=True)
class IngestContext:
    settings: Settings
    writer: EventLogWriter
    write_keys: WriteKeyCache
    activity: IngestActivity


class _Call:
    """What one request has shown so far, for the record of its refusal."""

    __slots__ = ("body", "recorded", "source", "write_key")

    def __init__(self) -> None:
        self.source: Source | None = None
        self.write_key: str | None = None
        self.body: bytes | None = None
        self.recorded = False  # its rejected messages were recorded one by one


class InflightBudget:
    """Bytes of bodies being read and parsed right now, bounded.

    Only touched from the event loop's thread, so a plain counter is enough.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.refused = 0

    def reserve(self, headers: Headers, body_limit: int) -> int:
        declared = headers.get("content-length", "")
        gzipped = "gzip" in headers.get("content-encoding", "")
        size = body_limit
        if declared.isdigit() and not gzipped:
            size = min(int(declared), body_limit)
        if self.used and self.used + size > self.limit:
            self.refused += 1
            raise TooManyRequests(
                f"{self.used} bytes of requests are being read, the limit is {self.limit}; "
                "retry after the Retry-After delay",
                retry_after=1,
            )
        self.used += size
        return size

    def release(self, size: int) -> None:
        self.used -= size


def _rejection(message: str, rejected: list[dict[str, Any]], accepted: int) -> BadRequest:
    return BadRequest(message, fields={"accepted": accepted, "rejected": rejected})


def _message_id(item: Any) -> Any:
    if isinstance(item, dict):
        value = item.get("messageId")
        if isinstance(value, str | int) and not isinstance(value, bool):
            return value
    return None


def _basic_auth_key(headers: Headers) -> str | None:
    header = headers.get("authorization")
    if header is None:
        return None
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic":
        raise Unauthorized(
            "the tracking API takes Basic auth with the write key as the username; "
            f"got an Authorization header of scheme {scheme[:16]!r}"
        )
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("the Authorization header is not valid Basic auth") from None
    key = decoded.partition(":")[0]
    if not key:
        raise Unauthorized("the Basic auth username (the write key) is empty")
    return key


class _Handlers:
    def __init__(self, context: IngestContext) -> None:
        self.context = context
        self.settings = context.settings
        self.activity = context.activity
        self.inflight = InflightBudget(context.settings.ingest_max_inflight_bytes)

    async def _read(
        self, headers: Headers, receive: Receive, limit: int, call: _Call
    ) -> dict[str, Any]:
        reserved = self.inflight.reserve(headers, limit)
        try:
            call.body = await read_body(headers, receive, limit=limit)
            return parse_json_object(call.body)
        finally:
            self.inflight.release(reserved)

    def refused(self, call: _Call, error: HTTPError) -> None:
        """Hand a refused request to the activity record (memory only: no write here)."""
        if call.recorded:
            return
        if call.source is None:
            self.activity.unattributed(error.status_code)
            return
        self.activity.refused(
            Refusal(
                source_id=call.source.id,
                received_at=datetime.now(UTC),
                status=error.status_code,
                code=error.code,
                reason=error.message,
                excerpt=excerpt_of_body(call.body, call.write_key),
            )
        )

    def _rejected_message(
        self, call: _Call, source: Source, item: Any, reason: str, received_at: datetime
    ) -> None:
        self.activity.refused(
            Refusal(
                source_id=source.id,
                received_at=received_at,
                status=BadRequest.status_code,
                code=BadRequest.code,
                reason=reason,
                message_id=None if (m := _message_id(item)) is None else str(m),
                excerpt=excerpt_of_message(item, call.write_key),
            )
        )
        call.recorded = True

    async def source(self, write_key: Any, call: _Call) -> Source:
        if write_key is None or write_key == "":
            raise Unauthorized(
                "no write key: send it as the Basic auth username (empty password) "
                "or as 'writeKey' in the body"
            )
        if not isinstance(write_key, str):
            raise Unauthorized("'writeKey' must be a string")
        cache = self.context.write_keys
        hit, source = cache.cached(write_key)
        if not hit:
            try:
                source = await anyio.to_thread.run_sync(cache.load, write_key)
            except sa.exc.SQLAlchemyError:
                raise ServiceUnavailable(
                    "the store cannot be reached to check the write key"
                ) from None
        if source is None:
            raise Unauthorized(f"the write key {write_key[:6]!r}… is not known")
        call.source, call.write_key = source, write_key
        if not source.enabled:
            raise Forbidden(f"the source {source.name!r} is disabled")
        return source

    async def single(
        self, headers: Headers, receive: Receive, call: _Call, message_type: str
    ) -> None:
        header_key = _basic_auth_key(headers)
        source = await self.source(header_key, call) if header_key else None
        data = await self._read(headers, receive, self.settings.ingest_max_message_bytes, call)
        if source is None:
            source = await self.source(data.get("writeKey"), call)
        received_at = datetime.now(UTC)
        try:
            row = normalise_message(
                data,
                source_id=source.id,
                received_at=received_at,
                message_type=message_type,
                max_bytes=self.settings.ingest_max_message_bytes,
            )
        except MessageError as exc:
            self._rejected_message(call, source, data, exc.reason, received_at)
            raise _rejection(
                f"the message was rejected: {exc.reason}",
                [{"index": 0, "messageId": _message_id(data), "reason": exc.reason}],
                accepted=0,
            ) from None
        await self.context.writer.append([row])
        self.activity.accepted(source.id, 1, received_at)

    async def batch(self, headers: Headers, receive: Receive, call: _Call) -> None:
        settings = self.settings
        header_key = _basic_auth_key(headers)
        source = await self.source(header_key, call) if header_key else None
        data = await self._read(headers, receive, settings.ingest_max_batch_bytes, call)
        if source is None:
            source = await self.source(data.get("writeKey"), call)
        items = data.get("batch")
        if not isinstance(items, list):
            raise BadRequest("the body needs 'batch', an array of messages")
        if len(items) > settings.ingest_max_batch_messages:
            raise BadRequest(
                f"the batch has {len(items)} messages; the limit is "
                f"{settings.ingest_max_batch_messages}"
            )
        context, integrations = data.get("context"), data.get("integrations")
        for field, value in (("context", context), ("integrations", integrations)):
            if value is not None and not isinstance(value, dict):
                raise BadRequest(f"the batch's {field!r} must be an object")
        try:
            sent_at = parse_timestamp("sentAt", data.get("sentAt"))
        except MessageError as exc:
            raise BadRequest(f"the batch's {exc.reason}") from None

        received_at = datetime.now(UTC)
        received_at_iso, sent_at_iso = iso_utc(received_at), iso_utc(sent_at)
        rows: list[NewEvent] = []
        rejected: list[dict[str, Any]] = []
        refused_items: list[tuple[Any, str]] = []
        for index, item in enumerate(items):
            try:
                rows.append(
                    normalise_message(
                        item,
                        source_id=source.id,
                        received_at=received_at,
                        received_at_iso=received_at_iso,
                        batch_sent_at=sent_at,
                        batch_sent_at_iso=sent_at_iso,
                        batch_context=context,
                        batch_integrations=integrations,
                        max_bytes=settings.ingest_max_message_bytes,
                    )
                )
            except MessageError as exc:
                rejected.append(
                    {"index": index, "messageId": _message_id(item), "reason": exc.reason}
                )
                refused_items.append((item, exc.reason))
        await self.context.writer.append(rows)
        if rows:
            self.activity.accepted(source.id, len(rows), received_at)
        for item, reason in refused_items:
            self._rejected_message(call, source, item, reason, received_at)
        if rejected:
            raise _rejection(
                f"{len(rejected)} of {len(items)} messages were rejected; "
                f"the other {len(rows)} were stored",
                rejected,
                accepted=len(rows),
            )


Handler = Callable[[Headers, Receive, _Call], Awaitable[None]]
_WANTED_HEADERS = frozenset(
    {b"authorization", b"content-type", b"content-encoding", b"content-length"}
)
_JSON = (b"content-type", b"application/json")


class TrackingAPI:
    """ASGI app for /v1/...: routes by path, answers JSON, never raises."""

    def __init__(self, context: IngestContext) -> None:
        self._handlers = _Handlers(context)
        self.routes: dict[str, Handler] = {}
        for path, kind in ROUTES.items():
            self.routes[f"/v1/{path}"] = self._endpoint(kind)
        for short, long in SHORT_ROUTES.items():
            self.routes[f"/v1/{short}"] = self._endpoint(ROUTES[long])

    @property
    def inflight(self) -> InflightBudget:
        return self._handlers.inflight

    def _endpoint(self, kind: str | None) -> Handler:
        if kind is None:
            return self._handlers.batch

        async def single(headers: Headers, receive: Receive, call: _Call) -> None:
            await self._handlers.single(headers, receive, call, kind)

        return single

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        handler = self.routes.get(scope["path"].rstrip("/"))
        if handler is None:
            await _respond(
                send, 404, {"success": False, "code": "not_found", "message": "Not Found"}
            )
            return
        if scope["method"] != "POST":
            body = {
                "success": False,
                "code": "method_not_allowed",
                "message": f"{scope['method']} is not allowed here; the tracking API takes POST",
            }
            await _respond(send, 405, body, [(b"allow", b"POST")])
            return
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _WANTED_HEADERS
        }
        call = _Call()
        try:
            await handler(headers, receive, call)
        except HTTPError as exc:
            self._handlers.refused(call, exc)
            extra = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
            await _respond(send, exc.status_code, exc.to_dict(), extra)
            return
        except ClientDisconnected:
            return
        except Exception as exc:
            event(
                log,
                logging.ERROR,
                "tracking.unhandled_error",
                path=scope["path"],
                error=repr(exc)[:300],
            )
            body = {"success": False, "code": "internal_error", "message": "internal error"}
            await _respond(send, 500, body)
            return
        await send({"type": "http.response.start", "status": 200, "headers": _SUCCESS_HEADERS})
        await send({"type": "http.response.body", "body": SUCCESS})


_SUCCESS_HEADERS = [_JSON, (b"content-length", str(len(SUCCESS)).encode())]


async def _respond(
    send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    content = orjson.dumps(body)
    headers = [_JSON, (b"content-length", str(len(content)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
