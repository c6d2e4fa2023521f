"""The webhook destination: POSTs each message (or a batch of them) as JSON, with custom
headers, an idempotency key, and an HMAC-SHA256 signature over a timestamp and the body.

The signature header is `X-Tessera-Signature: t=<unix seconds>,v1=<hex>`, where `hex` is
HMAC-SHA256 with the destination's secret over `"<t>.<body bytes>"`. A receiver recomputes
it, compares in constant time, and refuses a `t` older than a few minutes, so a captured
request cannot be replayed later (docs/destinations.md shows how).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from tessera.activation import http
from tessera.activation.plugins import ConnectionCheck, Message

SIGNATURE_HEADER = "X-Tessera-Signature"
RESERVED_HEADERS = {"content-type", "content-length", "host", SIGNATURE_HEADER.lower()}


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance: float = 300.0) -> bool:
    """What a receiver does: the signature matches and is recent."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body)
    return hmac.compare_digest(expected, header)


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Where to POST, http:// or https://.", min_length=8)
    headers: dict[str, str] = Field(
        default={}, description="Extra request headers, e.g. an Authorization header."
    )
    secret: SecretStr | None = Field(
        default=None,
        description="Signing secret: with it every request carries X-Tessera-Signature.",
    )
    timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="How long to wait for an answer."
    )
    batch_size: int = Field(
        default=1,
        ge=1,
        le=1000,
        description='Messages per request; above 1 the body is {"batch": [messages]}.',
    )
    concurrency: int = Field(
        default=4, ge=1, le=64, description="Requests in flight at once (per-person order holds)."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parsed = httpx.URL(value)
        except httpx.InvalidURL:  # not a ValueError: pydantic would not report it
            raise ValueError(f"{value!r} is not an http:// or https:// URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"the header {name!r} is set by Tessera")
            if not name or any(c in name for c in " :\r\n") or any(c in text for c in "\r\n"):
                raise ValueError(f"{name!r} is not a valid header")
        return value


class WebhookDestination(http.HTTPDestination):
    title = "Webhook"
    description = "POST JSON to any URL, signed with HMAC-SHA256, one message or a batch per call."
    config_model = WebhookConfig

    def __init__(self, config: BaseModel) -> None:
        super().__init__(config)
        assert isinstance(config, WebhookConfig)
        self.settings = config

    def _headers(self, body: bytes, idempotency_key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **self.settings.headers}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        if self.settings.secret is not None:
            headers[SIGNATURE_HEADER] = sign(
                self.settings.secret.get_secret_value(), int(time.time()), body
            )
        return headers

    async def _post(self, body: bytes, idempotency_key: str | None) -> None:
        url = self.settings.url
        try:
            response = await self.http().post(
                url, content=body, headers=self._headers(body, idempotency_key)
            )
        except httpx.HTTPError as exc:
            raise http.transport_failure(exc, url, self.timeout) from None
        http.check(response)

    async def deliver(self, messages: Sequence[Message]) -> None:
        if self.settings.batch_size == 1 and len(messages) == 1:
            message = messages[0]
            await self._post(orjson.dumps(message.payload), message.message_id)
            return
        batch: list[Any] = [message.payload for message in messages]
        await self._post(orjson.dumps({"batch": batch}), None)

    async def test_connection(self) -> ConnectionCheck:
        body = orjson.dumps({"kind": "test", "messageId": f"test-{int(time.time())}"})
        try:
            await self._post(body, None)
        except Exception as exc:
            return ConnectionCheck(False, f"{self.settings.url} failed: {exc}")
        return ConnectionCheck(True, f"{self.settings.url} accepted a test message")
