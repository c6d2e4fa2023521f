"""Who is looking at a page: the session cookie read into a `WebUser`, the permission a
page needs, and the CSRF check every form post passes.

Pages use the API's session table and permission table; nothing here is a second
implementation. A visitor without a session is sent to the sign-in form (`SignInRequired`),
a signed-in person without the permission gets the 403 page.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Connection

from tessera.api.deps import ConnectionDep, Principal
from tessera.auth.permissions import PERMISSIONS
from tessera.auth.sessions import COOKIE_NAME, get_session
from tessera.errors import Forbidden, Unauthorized

# Before sign-in there is no session to hold a CSRF token, so the sign-in and reset forms
# use a double-submit cookie: a random value in a cookie and in the form must match.
LOGIN_CSRF_COOKIE = "tessera_login_csrf"
CSRF_FIELD = "csrf_token"


class SignInRequired(Unauthorized):
    """No session: the web layer answers with the sign-in form, not a JSON 401."""


@dataclass(frozen=True, slots=True)
class WebUser:
    principal: Principal
    csrf_token: str

    @property
    def email(self) -> str:
        return self.principal.name

    @property
    def role(self) -> str:
        return self.principal.role

    def may(self, permission: str) -> bool:
        return self.principal.may(permission)


def read_user(request: Request, conn: Connection) -> WebUser | None:
    """The signed-in person, also kept on `request.state.web_user` for the templates."""
    cookie = request.cookies.get(COOKIE_NAME)
    session = get_session(conn, cookie) if cookie else None
    user = None
    if session is not None:
        principal = Principal("user", session.user_id, session.email, session.role)
        user = WebUser(principal, session.csrf_token)
    request.state.web_user = user
    return user


def optional_user(request: Request, conn: ConnectionDep) -> WebUser | None:
    return read_user(request, conn)


OptionalUser = Annotated[WebUser | None, Depends(optional_user)]


def page(permission: str) -> Callable[..., WebUser]:
    """A dependency for a page that needs `permission` (from auth/permissions.py)."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}; add it to auth/permissions.py")

    def check(request: Request, conn: ConnectionDep) -> WebUser:
        user = read_user(request, conn)
        if user is None:
            raise SignInRequired("sign in to see this page")
        if not user.may(permission):
            raise Forbidden(f"your role ({user.role}) may not {permission.replace(':', ' ')}")
        return user

    check.permission = permission  # type: ignore[attr-defined]
    return check


async def check_csrf(request: Request, conn: ConnectionDep) -> None:
    """Every form post carries the session's CSRF token, as a field or (htmx) a header.
    Before sign-in, the token is the double-submit cookie's."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    user = getattr(request.state, "web_user", None) or read_user(request, conn)
    expected = user.csrf_token if user else request.cookies.get(LOGIN_CSRF_COOKIE, "")
    sent = request.headers.get("x-csrf-token", "")
    if not sent and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD, "")
        sent = value if isinstance(value, str) else ""
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Forbidden(
            "the form has expired or came from another site; reload the page and try again"
        )


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)
