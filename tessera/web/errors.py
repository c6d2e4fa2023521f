"""Errors as pages: a browser that asks for a page gets a 403, 404 or error page of the
product's own, or the sign-in form, never JSON or a stack trace."""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tessera.web.frame import Frame

# Paths that are never pages, whatever the Accept header says.
MACHINE_PREFIXES = ("/api/", "/v1/", "/openapi.json", "/healthz", "/readyz", "/metrics", "/static/")

TITLES = {
    400: "That did not work",
    401: "Please sign in",
    403: "This page is not for your role",
    404: "We could not find that page",
    405: "That did not work",
    409: "That clashes with something that exists",
    410: "That is gone",
    413: "That is too large",
    422: "That did not work",
    429: "Too many attempts",
}


def wants_page(request: Request) -> bool:
    if request.url.path.startswith(MACHINE_PREFIXES):
        return False
    accept = request.headers.get("accept", "")
    return "text/html" in accept or request.headers.get("hx-request") == "true"


def sign_in_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = "/" if target == "/" else f"/?next={quote(target, safe='')}"
    if request.headers.get("hx-request") == "true":
        return Response(status_code=204, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=303)


def render_error(request: Request, status: int, message: str) -> Response:
    """The error page for `status`; `message` is already in words for a person."""
    frame: Frame = request.app.state.frame
    if status == 401:
        return sign_in_redirect(request)
    if status >= 500:
        title, message = (
            "Something went wrong on our side",
            (
                "The error was logged. Try again in a moment; if it keeps happening, "
                "tell your administrator the time it happened."
            ),
        )
    else:
        title = TITLES.get(status, "That did not work")
    return frame.render(
        request,
        "errors/error.html",
        {"status": status, "title": title, "message": message},
        status=status,
    )
