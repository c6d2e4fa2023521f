"""Request and response shapes of the sources API (/api/v1/sources)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SourceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="A name people recognise.")


class SourcePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        description="false: the tracking API answers the source's write key with 403 (and "
        "keeps each refusal in the live view); true: it accepts events again."
    )


class SourceOut(BaseModel):
    id: int
    name: str
    enabled: bool
    created_at: datetime
    disabled_at: datetime | None
    write_key_prefix: str = Field(
        description="The write key's first characters; the key itself is shown only once."
    )
    events_today: int = Field(
        description="Messages accepted today (UTC), retried duplicates included."
    )
    refused_today: int = Field(description="Messages and requests refused today (UTC).")
    last_event_at: datetime | None = Field(description="When a message was last accepted.")
    last_refused_at: datetime | None


class Snippets(BaseModel):
    curl: str
    python: str = Field(description="For segment-analytics-python.")
    node: str = Field(description="For @segment/analytics-node.")
    analytics_js: str = Field(description="For @segment/analytics-next in the browser.")


class SourceCreated(SourceOut):
    write_key: str = Field(description="Shown in this response only: it is stored hashed.")
    snippets: Snippets = Field(description="Code that sends a first event with this key.")


class RefusalOut(BaseModel):
    id: int
    received_at: datetime
    status: int = Field(description="The HTTP status the client was answered.")
    code: str
    reason: str = Field(description="What the client was told was wrong.")
    message_id: str | None
    excerpt: str | None = Field(
        description="The start of the refused message (or body), its write key hidden."
    )


class EventOut(BaseModel):
    seq: int = Field(description="The event's position in the log.")
    type: str
    name: str | None
    message_id: str
    user_id: str | None
    anonymous_id: str | None
    timestamp: datetime
    received_at: datetime
    payload: dict[str, Any]


class TailOut(BaseModel):
    events: list[EventOut] = Field(description="Oldest first.")
    position: int = Field(description="The log position read up to: pass it as `after`.")
    skipped: bool = Field(
        description="Some of the source's events since `after` may be left out: more came "
        "than one read covers (the newest are shown)."
    )
