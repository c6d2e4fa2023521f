"""Hardening for every response: security headers, and a size limit on request bodies.

Pure ASGI, wrapped around the whole app (the tracking API keeps its own, tighter, limits).
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Pages load scripts and styles from this origin only: no inline script or style anywhere.
STRICT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; "
    "object-src 'none'"
)
# Swagger UI (served from this origin too) sets style attributes as it renders.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; "
    "object-src 'none'"
)


def _headers(path: str) -> list[tuple[bytes, bytes]]:
    csp = DOCS_CSP if path == "/docs" else STRICT_CSP
    return [
        (b"content-security-policy", csp.encode()),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]


_STRICT = _headers("/")
_DOCS = _headers("/docs")


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        extra = _DOCS if path == "/docs" else _STRICT

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if path.startswith("/v1/"):  # the tracking API enforces its own limits
            await self.app(scope, receive, send_with_headers)
            return
        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _refuse(send_with_headers, 413, _too_large(limit))
                return
        query: bytes = scope.get("query_string", b"")
        if "\x00" in path or b"%00" in query.lower() or b"\x00" in query:
            await _refuse(send_with_headers, 400, NUL_MESSAGE)
            return
        received = 0
        refused = False
        tail = b""

        async def checked_receive() -> Message:
            nonlocal received, refused, tail
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                chunk: bytes = message.get("body", b"")
                received += len(chunk)
                # The store cannot hold NUL in text; refuse it here, for every route at once.
                window = tail + chunk
                problem = None
                if received > limit:
                    problem = (413, _too_large(limit))
                elif b"\\u0000" in window or b"\x00" in window:
                    problem = (400, NUL_MESSAGE)
                tail = window[-5:]
                if problem is not None:
                    # Answer now; to the app, the client has gone away.
                    refused = True
                    await _refuse(send_with_headers, *problem)
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_refused(message: Message) -> None:
            if not refused:
                await send_with_headers(message)

        try:
            await self.app(scope, checked_receive, send_unless_refused)
        except Exception:
            if not refused:
                raise  # after our answer the app's complaint about the lost client is moot


NUL_MESSAGE = {
    "success": False,
    "code": "bad_request",
    "message": "the request contains a NUL character (\\u0000), which no field accepts",
}


def _too_large(limit: int) -> dict[str, object]:
    return {
        "success": False,
        "code": "payload_too_large",
        "message": f"the request body is over the limit of {limit} bytes",
    }


async def _refuse(send: Send, status: int, body: dict[str, object]) -> None:
    content = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})
