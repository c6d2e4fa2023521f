"""Signing in and out, and setting a new password with a reset link."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import unquote

from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import Response

from tessera.api.deps import ConnectionDep, client_ip, public
from tessera.auth import signin
from tessera.auth.passwords import MIN_LENGTH
from tessera.auth.sessions import COOKIE_NAME
from tessera.config import Settings
from tessera.errors import BadRequest, TooManyRequests, Unauthorized
from tessera.web.frame import Frame, NavItem, redirect
from tessera.web.session import LOGIN_CSRF_COOKIE, OptionalUser, check_csrf, new_login_csrf

router = APIRouter(include_in_schema=False)
NAV: list[NavItem] = []
Public = Depends(public)


def safe_next(value: str | None) -> str:
    """Only a path on this site: `next` must not send a person elsewhere after sign-in."""
    target = unquote(value or "")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def render_form(
    request: Request,
    *,
    template: str = "signin/login.html",
    context: dict[str, object] | None = None,
    status: int = 200,
) -> Response:
    """A form shown before sign-in, with its double-submit CSRF cookie (kept if the browser
    has one, so two open tabs both work)."""
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or new_login_csrf()
    request.state.login_csrf = token
    frame: Frame = request.app.state.frame
    response = frame.render(request, template, context or {}, status=status)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/")
    return response


def login_form(
    request: Request,
    *,
    email: str = "",
    errors: dict[str, str] | None = None,
    notice: str | None = None,
    status: int = 200,
) -> Response:
    return render_form(
        request,
        context={
            "email": email,
            "errors": errors or {},
            "notice": notice,
            "next": safe_next(request.query_params.get("next")),
        },
        status=status,
    )


@router.get("/login", dependencies=[Public])
def login_page(request: Request, user: OptionalUser) -> Response:
    if user is not None:
        return redirect(safe_next(request.query_params.get("next")))
    return login_form(request)


@router.post("/login", dependencies=[Public, Depends(check_csrf)])
def login(
    request: Request,
    conn: ConnectionDep,
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    errors = {}
    if not email.strip():
        errors["email"] = "Enter the email address you sign in with."
    if not password:
        errors["password"] = "Enter your password."
    if errors:
        return login_form(request, email=email, errors=errors, status=422)
    settings: Settings = request.app.state.settings
    try:
        cookie, _session, _user = signin.sign_in(
            conn,
            engine=request.app.state.engine,
            settings=settings,
            email=email,
            password=password,
            ip=client_ip(request),
        )
    except TooManyRequests as exc:
        minutes = max(1, round(int(exc.headers.get("Retry-After", "60")) / 60))
        notice = (
            "Too many failed attempts, so sign-in is paused for this account. "
            f"Try again in {minutes} minute{'s' if minutes != 1 else ''}."
        )
        return login_form(request, email=email, notice=notice, status=429)
    except Unauthorized:
        errors["password"] = "That email and password do not match. Check both and try again."
        return login_form(request, email=email, errors=errors, status=401)
    response = redirect(safe_next(next))
    signin.set_session_cookie(response, cookie, settings=settings)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


@router.post("/logout", dependencies=[Public])
async def logout(request: Request, conn: ConnectionDep, user: OptionalUser) -> Response:
    response = redirect("/", flash="You are signed out.")
    if user is not None:
        await check_csrf(request, conn)
        signin.sign_out(
            conn,
            response,
            cookie=request.cookies.get(COOKIE_NAME),
            actor=user.principal.actor,
            ip=client_ip(request),
        )
    return response


@router.get("/forgot-password", dependencies=[Public])
def forgot_password(request: Request) -> Response:
    return render_form(request, template="signin/forgot.html")


@router.get("/reset-password", dependencies=[Public])
def reset_page(request: Request) -> Response:
    return render_form(
        request,
        template="signin/reset.html",
        context={
            "token": request.query_params.get("token", ""),
            "errors": {},
            "min_length": MIN_LENGTH,
        },
    )


@router.post("/reset-password", dependencies=[Public, Depends(check_csrf)])
def reset(
    request: Request,
    conn: ConnectionDep,
    token: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    confirm: Annotated[str, Form()] = "",
) -> Response:
    errors = {}
    if len(password) < MIN_LENGTH:
        errors["password"] = f"Choose a password of at least {MIN_LENGTH} characters."
    if not token:
        errors["token"] = "This page needs the reset link your administrator gave you."
    if password != confirm:
        errors["confirm"] = "The two passwords differ. Type the same password twice."
    if not errors:
        try:
            signin.reset_password(
                conn,
                engine=request.app.state.engine,
                token=token,
                password=password,
                ip=client_ip(request),
            )
        except BadRequest as exc:
            key = "token" if "token" in exc.message else "password"
            errors[key] = exc.message[:1].upper() + exc.message[1:] + "."
    if errors:
        return render_form(
            request,
            template="signin/reset.html",
            context={"token": token, "errors": errors, "min_length": MIN_LENGTH},
            status=422,
        )
    return redirect("/", flash="Your password is changed. Sign in with the new one.")
