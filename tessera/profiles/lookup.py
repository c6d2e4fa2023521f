"""`GET /api/v1/profiles/{ref}` on a lean path: the read other systems call per page view or
per message, answered without FastAPI's routing, dependency solving and thread hops.

The route stays declared in `profiles/api.py` (OpenAPI, the permission matrix) and answers
every request this path does not take. This path takes only what it can answer exactly as
the route would: a GET of one profile with a Bearer token that `TokenCache` holds and whose
role may read profiles. Everything else (a session cookie, a token not checked for a while,
no or bad credentials, any other method or path) goes on to FastAPI unchanged, so refusals
have one implementation. The body is `show_profile`'s (`profiles/service.py`), rendered
through `ProfileOut` as the route renders it, and errors are rendered as `api/errors.py`
renders them.

On SQLite the store work runs on the event loop: it is a few indexed reads of a local file
(about 0.3 ms), cheaper than the hop to a worker thread and back, and in WAL mode a reader
never waits for a writer. On PostgreSQL every query waits on the network, so it runs in a
worker thread.
"""

from __future__ import annotations

import logging

import anyio.to_thread
import sqlalchemy as sa
from pydantic import TypeAdapter
from sqlalchemy.engine import Connection, Engine
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tessera.auth.permissions import allowed
from tessera.auth.tokens import TokenCache
from tessera.errors import HTTPError
from tessera.identity.config import IdentityRules
from tessera.logs import event
from tessera.profiles.schemas import ProfileOut
from tessera.profiles.service import Memberships, show_profile
from tessera.store.engine import is_sqlite

log = logging.getLogger(__name__)

PREFIX = "/api/v1/profiles/"
_PROFILE = TypeAdapter(ProfileOut)
_JSON = (b"content-type", b"application/json")


class ProfileLookup:
    """ASGI middleware: answers cached-token profile lookups, passes everything else on."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        engine: Engine,
        tokens: TokenCache,
        rules: IdentityRules,
        memberships: Memberships | None,
    ) -> None:
        self.app = app
        self.engine = engine
        self.tokens = tokens
        self.rules = rules
        self.memberships = memberships
        self.on_event_loop = is_sqlite(engine)
        # On the event loop, one connection of our own: waiting on the pool there could
        # wait for connections that only the event loop can give back.
        self._loop_connection: Connection | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            ref = path[len(PREFIX) :]
            if path.startswith(PREFIX) and ref and "/" not in ref:
                role = self._cached_role(scope)
                if role is not None and allowed(role, "profiles:read"):
                    await self._answer(ref, role, scope, receive, send)
                    return
        elif scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing_on_shutdown(send))
            return
        await self.app(scope, receive, send)

    def _cached_role(self, scope: Scope) -> str | None:
        """The role of the request's Bearer token if the cache holds it, else None (the
        request then goes to the route, which checks the token against the store)."""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                token = token.strip()
                if scheme.lower() != "bearer" or not token:
                    return None
                principal = self.tokens.cached(token)
                return None if principal is None else principal.role
        return None

    async def _answer(
        self, ref: str, role: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            if self.on_event_loop:
                content = self._render_on_loop(ref, role)
            else:
                content = await anyio.to_thread.run_sync(self._render_pooled, ref, role)
        except HTTPError as exc:
            response = JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers)
            await response(scope, receive, send)
            return
        except Exception as exc:
            event(
                log,
                logging.ERROR,
                "http.unhandled_error",
                path=scope["path"],
                error=repr(exc)[:300],
            )
            body = {"success": False, "code": "internal_error", "message": "internal error"}
            await JSONResponse(body, status_code=500)(scope, receive, send)
            return
        headers = [(b"content-length", str(len(content)).encode()), _JSON]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def _render(self, conn: Connection, ref: str, role: str) -> bytes:
        body = show_profile(conn, ref, rules=self.rules, role=role, memberships=self.memberships)
        return _PROFILE.dump_json(_PROFILE.validate_python(body))

    def _render_pooled(self, ref: str, role: str) -> bytes:
        with self.engine.connect() as conn:
            return self._render(conn, ref, role)

    def _render_on_loop(self, ref: str, role: str) -> bytes:
        conn = self._loop_connection
        if conn is None or conn.closed or conn.invalidated:
            conn = self._loop_connection = self.engine.connect()
        try:
            return self._render(conn, ref, role)
        except sa.exc.SQLAlchemyError:
            self._loop_connection = None
            conn.close()
            raise
        finally:
            # Ends the read: the connection holds no snapshot between lookups.
            if not conn.closed:
                conn.rollback()

    def _closing_on_shutdown(self, send: Send) -> Send:
        async def closing(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete" and self._loop_connection:
                self._loop_connection.close()
                self._loop_connection = None
            await send(message)

        return closing
