"""Read a tracking request's body within its size limit, decompressing gzip as it streams.

The limit is enforced while reading, before any JSON parsing, and for gzip on the
decompressed size, so neither a huge body nor a gzip bomb can exhaust memory.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from starlette.types import Receive

from tessera.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

JSON_MEDIA_TYPES = ("application/json", "text/plain", "")


class ClientDisconnected(Exception):
    """The client went away before sending its whole body; nobody is left to answer."""


def _too_large(limit: int, what: str = "the request body") -> PayloadTooLarge:
    return PayloadTooLarge(f"{what} is over the limit of {limit} bytes")


async def read_body(headers: dict[str, str], receive: Receive, *, limit: int) -> bytes:
    """The body, decompressed, at most `limit` bytes; raise 413/415/400 otherwise.

    `headers` holds the request's headers with lower-case names.
    """
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in JSON_MEDIA_TYPES and not media_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type {media_type!r} is not accepted; send application/json or text/plain"
        )
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not accepted; send gzip or no encoding"
        )
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)

    chunks: list[bytes] = []
    size = 0
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if encoding == "gzip" else None
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk: bytes = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        piece = chunk if inflater is None else _inflate(inflater, chunk, limit - size)
        size += len(piece)
        if size > limit:
            raise _too_large(limit, "the decompressed request body")
        chunks.append(piece)
        if not message.get("more_body", False):
            break
    if inflater is not None and not inflater.eof:
        raise BadRequest("the gzip body is truncated")
    return b"".join(chunks)


def _inflate(inflater: Any, data: bytes, room: int) -> bytes:
    """Decompress `data`, producing at most `room + 1` bytes so an overflow shows at once."""
    out = bytearray()
    try:
        while True:
            out += inflater.decompress(data, room - len(out) + 1)
            data = inflater.unconsumed_tail
            if len(out) > room or not data:
                return bytes(out)
    except zlib.error as exc:
        raise BadRequest(f"the body is not valid gzip: {exc}") from None


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 naming what is wrong."""
    if not body.strip():
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("the request body must be a JSON object")
    return value
