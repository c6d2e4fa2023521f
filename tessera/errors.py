"""Tessera's exception tree; every error we raise on purpose descends from `TesseraError`.

    TesseraError
    ├── ConfigurationError            settings that cannot work (bad URL, unknown level)
    ├── StoreError                    the database failed us (translated driver errors)
    │   └── MigrationError            the schema could not be brought up to date
    └── HTTPError                     carries `status_code`; rendered as JSON by `api.errors`
        ├── BadRequest           400  the body is not what the contract says
        │   └── InvalidDefinition     a trait or audience definition, with the JSON path
        ├── Unauthorized         401  missing or unknown credentials
        ├── Forbidden            403  known credentials, not allowed (a disabled source)
        ├── NotFound             404  a named thing (source, profile, token) does not exist
        ├── Conflict             409  the name is taken
        ├── Gone                 410  it existed and was deleted for good (an expired export)
        ├── PayloadTooLarge      413  over a documented size limit
        ├── UnsupportedMediaType 415  a content type or encoding we do not read
        ├── TooManyRequests      429  back-pressure; carries `retry_after` seconds
        └── ServiceUnavailable   503  the store is unreachable; retry later

Messages name the offending value and say what would be right.
"""

from __future__ import annotations

from typing import Any


class TesseraError(Exception):
    """Root of every error Tessera raises on purpose."""


class ConfigurationError(TesseraError):
    """A setting has a value that cannot work."""


class StoreError(TesseraError):
    """The database failed; the message says which operation and why."""


class MigrationError(StoreError):
    """The schema could not be migrated to the version this code needs."""


class HTTPError(TesseraError):
    """An error that faces an HTTP client; subclasses fix the status code."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        fields: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        """The JSON body: `success`, `code` (stable, machine-readable), `message`, and extras.

        `code` is the key Segment's API uses; the official Python SDKs read it, and retry a
        permanent 4xx as if it were a network error when it is missing.
        """
        return {"success": False, "code": self.code, "message": self.message, **self.fields}


class BadRequest(HTTPError):
    status_code = 400
    code = "bad_request"


class InvalidDefinition(BadRequest):
    """A computed-trait or audience definition that cannot work; `path` points into it
    (`$.and[1].op`) so the builder can show the error beside the condition."""

    code = "invalid_definition"

    def __init__(self, message: str, *, path: str = "$"):
        super().__init__(f"{path}: {message}", fields={"path": path})
        self.path = path


class Unauthorized(HTTPError):
    status_code = 401
    code = "unauthorized"


class Forbidden(HTTPError):
    status_code = 403
    code = "forbidden"


class NotFound(HTTPError):
    status_code = 404
    code = "not_found"


class Conflict(HTTPError):
    status_code = 409
    code = "conflict"


class Gone(HTTPError):
    status_code = 410
    code = "gone"


class PayloadTooLarge(HTTPError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(HTTPError):
    status_code = 415
    code = "unsupported_media_type"


class TooManyRequests(HTTPError):
    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class ServiceUnavailable(HTTPError):
    status_code = 503
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5):
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after
