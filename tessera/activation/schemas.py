"""Request and response bodies of the destinations API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class DestinationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    type: str = Field(description="A destination type: GET /api/v1/destination-types.")
    config: dict[str, Any] = Field(description="Validated by the type's config_schema.")
    subscriptions: list[Any] = Field(
        default=[],
        description="What it receives: events, audience entries/exits, trait changes.",
    )
    mapping: dict[str, Any] = Field(
        default={}, description="Field mapping, with hashing of personal data per field."
    )
    consent_categories: list[str] = Field(
        default=[], description="Consent a person must have granted for anything to be sent."
    )
    enabled: bool = True


class DestinationPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    config: dict[str, Any] | None = None
    subscriptions: list[Any] | None = None
    mapping: dict[str, Any] | None = None
    consent_categories: list[str] | None = None
    enabled: bool | None = None


class DestinationStats(BaseModel):
    sent: int
    failed: int
    dead: int
    blocked: int
    replayed: int
    pending: int
    retrying: int
    dead_letters: int
    latency_ms_mean: float | None
    latency_ms_p50: float | None
    latency_ms_p95: float | None


class DestinationOut(BaseModel):
    id: str
    name: str
    type: str
    config: dict[str, Any]
    subscriptions: list[Any]
    mapping: dict[str, Any]
    consent_categories: list[str]
    enabled: bool
    status: str = Field(description="active, paused (after failed calls in a row) or disabled")
    paused_at: datetime | None
    paused_reason: str | None
    next_probe_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    stats: DestinationStats
    created_at: datetime
    updated_at: datetime


class DestinationTypeOut(BaseModel):
    name: str
    title: str
    description: str
    config_schema: dict[str, Any]


class ConnectionCheckOut(BaseModel):
    ok: bool
    detail: str


class OutboxMessage(BaseModel):
    id: int
    message_id: str
    kind: str
    profile_id: str
    state: str
    attempts: int
    replays: int
    created_at: datetime
    next_attempt_at: datetime | None
    expires_at: datetime
    finished_at: datetime | None
    last_error: str | None
    last_status: int | None
    payload: Any


class MessagePage(BaseModel):
    items: list[OutboxMessage]
    next_cursor: str | None


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[int] | None = Field(
        default=None, max_length=10_000, description="Dead letters to replay; omit for all."
    )


class ReplayOut(BaseModel):
    replayed: int
    skipped: int = Field(description="Asked for, but not dead (already replayed, or unknown).")
