"""Signing in and out: the one implementation behind the API's /auth/login and the web
form, so throttling, auditing and the session cookie are the same for both."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import Connection, Engine
from starlette.responses import Response

from tessera.audit.service import record, record_failure
from tessera.auth import sessions, throttle, users
from tessera.config import Settings
from tessera.errors import Unauthorized


def throttle_rules(settings: Settings) -> throttle.ThrottleRules:
    return throttle.ThrottleRules(
        max_per_account=settings.login_max_failures_per_account,
        max_per_ip=settings.login_max_failures_per_ip,
        window=timedelta(minutes=settings.login_window_minutes),
        lockout=timedelta(minutes=settings.login_lockout_minutes),
    )


def sign_in(
    conn: Connection,
    *,
    engine: Engine,
    settings: Settings,
    email: str,
    password: str,
    ip: str | None,
) -> tuple[str, sessions.Session, users.User]:
    """(cookie value, session, user) for good credentials. Raises TooManyRequests while the
    account or the address is locked out (the message says for how long), Unauthorized for
    a wrong email or password; a failure is counted and audited even though the caller's
    transaction then rolls back."""
    throttle.check(conn, email=email, ip=ip)
    user = users.check_credentials(conn, email=email, password=password)
    if user is None:
        with engine.begin() as own:
            throttle.record_failure(own, email=email, ip=ip, rules=throttle_rules(settings))
        record_failure(engine, actor="anonymous", action="auth.login", target=email[:255], ip=ip)
        raise Unauthorized("the email or the password is wrong")
    throttle.clear(conn, email=user.email)
    ttl = timedelta(hours=settings.session_ttl_hours)
    cookie, session = sessions.create_session(conn, user_id=user.id, ttl=ttl, ip=ip)
    record(conn, actor=f"user:{user.email}", action="auth.login", target=user.email, ip=ip)
    return cookie, session, user


def set_session_cookie(response: Response, cookie: str, *, settings: Settings) -> None:
    response.set_cookie(
        sessions.COOKIE_NAME,
        cookie,
        max_age=int(settings.session_ttl_hours * 3600),
        secure=settings.session_cookie_secure,
        httponly=True,
        samesite="lax",
        path="/",
    )


def sign_out(
    conn: Connection, response: Response, *, cookie: str | None, actor: str, ip: str | None
) -> None:
    if cookie:
        sessions.delete_session(conn, cookie)
    response.delete_cookie(sessions.COOKIE_NAME, path="/")
    record(conn, actor=actor, action="auth.logout", ip=ip)


def reset_password(
    conn: Connection, *, engine: Engine, token: str, password: str, ip: str | None
) -> users.User:
    """Set a new password with a one-time reset token; ends every session of the user. A
    bad token is audited as a failure (kept though the caller's transaction rolls back)."""
    try:
        user = users.reset_password(conn, token=token, password=password)
    except Exception:
        record_failure(engine, actor="anonymous", action="auth.reset_password", ip=ip)
        raise
    record(conn, actor=f"user:{user.email}", action="auth.reset_password", target=user.email, ip=ip)
    return user
