"""The Segment HTTP Tracking API: /v1/identify|track|page|screen|group|alias|batch|import.

Each handler authenticates the write key, reads the body within its limit, validates every
message, and answers only after the accepted messages are committed to the event log.
In a batch, valid messages are stored even when others are rejected; the 400 then lists
each rejected message by index with its reason.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
import sqlalchemy as sa
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from tessera.config import Settings
from tessera.errors import (
    BadRequest,
    Forbidden,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from tessera.eventlog import EventLogWriter, NewEvent
from tessera.ingest.body import parse_json_object, read_body
from tessera.ingest.messages import MessageError, normalise_message, parse_timestamp
from tessera.ingest.sources import Source, WriteKeyCache

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

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed body; the body lists each rejected message and why."},
    401: {"description": "No write key, or an unknown one."},
    403: {"description": "The source is disabled."},
    413: {"description": "The body is over the size limit."},
    415: {"description": "A content type or encoding other than JSON/text and gzip."},
    429: {"description": "Too many events are waiting to be written; honour Retry-After."},
    503: {"description": "The event log cannot be written right now; retry."},
}


@dataclass(frozen=True, slots=True)
class IngestContext:
    settings: Settings
    writer: EventLogWriter
    write_keys: WriteKeyCache


class InflightBudget:
    """Bytes of bodies being read and parsed right now, bounded.

    Only touched from the event loop's thread, so a plain counter is enough.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.refused = 0

    def reserve(self, request: Request, body_limit: int) -> int:
        declared = request.headers.get("content-length", "")
        gzipped = "gzip" in request.headers.get("content-encoding", "")
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


def _basic_auth_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
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
        self.inflight = InflightBudget(context.settings.ingest_max_inflight_bytes)

    async def _read(self, request: Request, limit: int) -> dict[str, Any]:
        reserved = self.inflight.reserve(request, limit)
        try:
            return parse_json_object(await read_body(request, limit=limit))
        finally:
            self.inflight.release(reserved)

    async def source(self, write_key: Any) -> Source:
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
        if not source.enabled:
            raise Forbidden(f"the source {source.name!r} is disabled")
        return source

    async def single(self, request: Request, message_type: str) -> Response:
        header_key = _basic_auth_key(request)
        source = await self.source(header_key) if header_key else None
        data = await self._read(request, self.settings.ingest_max_message_bytes)
        if source is None:
            source = await self.source(data.get("writeKey"))
        try:
            row = normalise_message(
                data,
                source_id=source.id,
                received_at=datetime.now(UTC),
                message_type=message_type,
                max_bytes=self.settings.ingest_max_message_bytes,
            )
        except MessageError as exc:
            raise _rejection(
                f"the message was rejected: {exc.reason}",
                [{"index": 0, "messageId": _message_id(data), "reason": exc.reason}],
                accepted=0,
            ) from None
        await self.context.writer.append([row])
        return Response(SUCCESS, media_type="application/json")

    async def batch(self, request: Request) -> Response:
        settings = self.settings
        header_key = _basic_auth_key(request)
        source = await self.source(header_key) if header_key else None
        data = await self._read(request, settings.ingest_max_batch_bytes)
        if source is None:
            source = await self.source(data.get("writeKey"))
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
        rows: list[NewEvent] = []
        rejected: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                rows.append(
                    normalise_message(
                        item,
                        source_id=source.id,
                        received_at=received_at,
                        batch_sent_at=sent_at,
                        batch_context=context,
                        batch_integrations=integrations,
                        max_bytes=settings.ingest_max_message_bytes,
                    )
                )
            except MessageError as exc:
                rejected.append(
                    {"index": index, "messageId": _message_id(item), "reason": exc.reason}
                )
        await self.context.writer.append(rows)
        if rejected:
            raise _rejection(
                f"{len(rejected)} of {len(items)} messages were rejected; "
                f"the other {len(rows)} were stored",
                rejected,
                accepted=len(rows),
            )
        return Response(SUCCESS, media_type="application/json")


def create_router(context: IngestContext) -> APIRouter:
    handlers = _Handlers(context)
    router = APIRouter(tags=["tracking"])

    def endpoint(message_type: str | None) -> Callable[[Request], Awaitable[Response]]:
        if message_type is None:
            return handlers.batch

        async def single(request: Request) -> Response:
            return await handlers.single(request, message_type)

        return single

    body_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/plain": {"schema": {"type": "string"}},
            },
        }
    }
    paths = {**{path: kind for path, kind in ROUTES.items()}}
    for short, long in SHORT_ROUTES.items():
        paths[short] = ROUTES[long]
    for path, kind in paths.items():
        label = kind or "batch"
        router.add_api_route(
            f"/v1/{path}",
            endpoint(kind),
            methods=["POST"],
            name=f"tracking_{path}",
            summary=f"Segment {label} call" + (" (short path)" if path in SHORT_ROUTES else ""),
            responses={200: {"description": "Stored durably."}, **_ERROR_RESPONSES},
            openapi_extra=body_doc,
            include_in_schema=path not in SHORT_ROUTES,
        )
    return router
