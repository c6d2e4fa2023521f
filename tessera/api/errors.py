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


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    return _json(exc.status_code, exc.to_dict(), exc.headers)


async def _starlette_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _json(
        exc.status_code,
        {"success": False, "code": code, "message": str(exc.detail)},
        dict(exc.headers or {}),
    )


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"location": list(error.get("loc", ())), "reason": error.get("msg", "")}
        for error in exc.errors()
    ]
    return _json(
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
    return _json(500, {"success": False, "code": "internal_error", "message": "internal error"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPError, _http_error)
    app.add_exception_handler(StarletteHTTPException, _starlette_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
