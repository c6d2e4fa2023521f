"""One place that turns exceptions into uniform JSON error responses."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tessera.errors import HTTPError
from tessera.logs import event

log = logging.getLogger(__name__)


def _json(status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


def _respond(
    request: Request, status: int, body: dict[str, object], headers: dict[str, str] | None = None
) -> Response:
    """JSON, or, for a browser asking for a page, the web UI's error page (`web.install`
    sets the hooks; the API does not import the UI)."""
    state = request.app.state
    if getattr(state, "wants_page", None) is not None and state.wants_page(request):
        page: Response = state.page_error(request, status, str(body.get("message", "")))
        return page
    return _json(status, body, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    return _respond(request, exc.status_code, exc.to_dict(), exc.headers)


async def _starlette_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"nothing is at {request.url.path}"
    return _respond(
        request,
        exc.status_code,
        {"success": False, "code": code, "message": message},
        dict(exc.headers or {}),
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"location": list(error.get("loc", ())), "reason": error.get("msg", "")}
        for error in exc.errors()
    ]
    return _respond(
        request,
        422,
        {
            "success": False,
            "code": "invalid_request",
            "message": "the request is invalid",
            "problems": problems,
        },
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    event(log, logging.ERROR, "http.unhandled_error", path=request.url.path, error=repr(exc)[:300])
    return _respond(
        request, 500, {"success": False, "code": "internal_error", "message": "internal error"}
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPError, _http_error)
    app.add_exception_handler(StarletteHTTPException, _starlette_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
