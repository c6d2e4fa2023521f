"""The Segment-compatible forwarder: sends messages on to any endpoint that speaks Segment's
HTTP Tracking API (Segment, RudderStack, another Tessera), authenticated by its write key.

Events go on as they were tracked (with their messageId, so the receiver dedupes). Audience
entries and exits become a `track` ("Audience Entered" / "Audience Exited") plus an
`identify` that sets a boolean trait named after the audience, as Segment's own audiences
do; trait changes become an `identify`. A message over Segment's 32 KB limit is refused
when it is mapped, so it becomes a visible dead letter instead of failing its whole batch.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from tessera.activation import http
from tessera.activation.plugins import ConnectionCheck, Message

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 450 * 1024  # under the 500 KB limit, with room for the envelope
DROPPED_FIELDS = ("receivedAt", "sentAt", "writeKey")


class SegmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(
        default="https://api.segment.io",
        description="Base URL of the Segment-compatible API; messages go to <endpoint>/v1/batch.",
    )
    write_key: SecretStr = Field(description="The receiving source's write key.")
    batch_size: int = Field(default=100, ge=1, le=500, description="Messages per request.")
    timeout_seconds: float = Field(default=10.0, gt=0, le=120, description="Answer timeout.")
    concurrency: int = Field(default=2, ge=1, le=16, description="Requests in flight at once.")

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parsed = httpx.URL(value)
        except httpx.InvalidURL:  # not a ValueError: pydantic would not report it
            raise ValueError(f"{value!r} is not an http:// or https:// URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value.rstrip("/")


def trait_name(audience_name: str) -> str:
    """`VIP customers (EU)` → `vip_customers_eu`, the trait an audience sets."""
    return re.sub(r"[^a-z0-9]+", "_", audience_name.lower()).strip("_") or "audience"


def _who(body: dict[str, Any]) -> dict[str, Any]:
    profile = body.get("profile") or {}
    identities = profile.get("identities") or {}
    who: dict[str, Any] = {}
    if identities.get("user_id"):
        who["userId"] = identities["user_id"][0]
    if identities.get("anonymous_id"):
        who["anonymousId"] = identities["anonymous_id"][0]
    if not who:
        who["anonymousId"] = profile.get("id") or body["messageId"]
    return who


def to_segment(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Tessera's message → the Segment calls that carry it."""
    kind = body["kind"]
    if kind == "event" and isinstance(body.get("event"), dict):
        call = {key: value for key, value in body["event"].items() if key not in DROPPED_FIELDS}
        call["messageId"] = body["messageId"]
        return [call]
    who = _who(body)
    at = body.get("timestamp")
    if kind in ("audience.entered", "audience.exited"):
        audience = body.get("audience") or {}
        entered = kind == "audience.entered"
        name = audience.get("name") or audience.get("id") or "audience"
        return [
            {
                "type": "track",
                "event": "Audience Entered" if entered else "Audience Exited",
                "properties": {"audience_id": audience.get("id"), "audience_name": name},
                "messageId": f"{body['messageId']}-track",
                "timestamp": at,
                **who,
            },
            {
                "type": "identify",
                "traits": {trait_name(name): entered},
                "messageId": f"{body['messageId']}-identify",
                "timestamp": at,
                **who,
            },
        ]
    traits = body.get("traits")
    if not isinstance(traits, dict):  # a mapping that moved things: send what is there
        traits = {k: v for k, v in body.items() if k not in ("messageId", "kind", "timestamp")}
    return [
        {
            "type": "identify",
            "traits": traits,
            "messageId": body["messageId"],
            "timestamp": at,
            **who,
        }
    ]


class SegmentDestination(http.HTTPDestination):
    title = "Segment-compatible API"
    description = "Forward events and audience changes to Segment, RudderStack or another Tessera."
    config_model = SegmentConfig

    def __init__(self, config: BaseModel) -> None:
        super().__init__(config)
        assert isinstance(config, SegmentConfig)
        self.settings = config

    @property
    def url(self) -> str:
        return f"{self.settings.endpoint}/v1/batch"

    def map(self, body: dict[str, Any]) -> Any:
        calls = to_segment(body)
        for call in calls:
            size = len(orjson.dumps(call))
            if size > MAX_MESSAGE_BYTES:
                raise ValueError(
                    f"the call is {size:,} bytes; Segment's API takes at most 32 KB per message"
                )
        return calls

    async def _post(self, calls: list[dict[str, Any]]) -> None:
        body = orjson.dumps({"batch": calls, "sentAt": _now_iso()})
        try:
            response = await self.http().post(
                self.url,
                content=body,
                auth=(self.settings.write_key.get_secret_value(), ""),
                headers={"Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise http.transport_failure(exc, self.url, self.timeout) from None
        http.check(response)

    async def deliver(self, messages: Sequence[Message]) -> None:
        calls: list[dict[str, Any]] = []
        size = 0
        for message in messages:
            for call in message.payload:
                call_size = len(orjson.dumps(call)) + 1
                if calls and size + call_size > MAX_BATCH_BYTES:
                    await self._post(calls)
                    calls, size = [], 0
                calls.append(call)
                size += call_size
        if calls:
            await self._post(calls)

    async def test_connection(self) -> ConnectionCheck:
        # An empty batch authenticates the write key without recording anything.
        try:
            await self._post([])
        except Exception as exc:
            return ConnectionCheck(False, f"{self.url} failed: {exc}")
        return ConnectionCheck(True, f"{self.url} accepted the write key")


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
