"""Response shapes of the schema and dashboard API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class EventType(BaseModel):
    type: str = Field(description="track, page, screen, identify, group or alias.")
    name: str | None = Field(description="A track call's event name; null for other types.")
    count: int
    first_seen: datetime = Field(description="When the first was received.")
    last_seen: datetime = Field(description="When the latest was received.")
    dropped_paths: int = Field(description="Property paths the catalog's limits left out.")


class EventTypePage(BaseModel):
    items: list[EventType]
    next_cursor: str | None
    left_out: dict[str, int] = Field(
        description="What the catalog's limits left out, by reason (event_names: events of "
        "names past the limit of names; trait_paths; context_paths)."
    )


class ObservedType(BaseModel):
    type: str = Field(
        description="string, datetime (a string that reads as an ISO date), integer, number, "
        "boolean, array, object (nested past the depth limit, or empty) or null."
    )
    count: int


class ObservedPath(BaseModel):
    path: str = Field(description="Dotted for nested objects, as conditions name it.")
    count: int = Field(description="Events that had it (context fields: of those sampled).")
    types: list[ObservedType] = Field(description="Most seen first.")


class EventProperties(BaseModel):
    type: str
    name: str | None
    count: int
    last_seen: datetime
    dropped_paths: int
    properties: list[ObservedPath]


class Traits(BaseModel):
    traits: list[ObservedPath]


class ContextFields(BaseModel):
    fields: list[ObservedPath] = Field(description="Paths below `context`.")
    sample: int = Field(description="Context is read from 1 event in this many.")


class SourceSeries(BaseModel):
    source_id: int
    name: str | None = Field(description="Null for a source deleted since.")
    total: int
    counts: list[int] = Field(description="One count per minute from `start`, zeros included.")


class EventsPerMinute(BaseModel):
    start: datetime
    end: datetime
    step_seconds: int
    sources: list[SourceSeries]


class ProfileCounts(BaseModel):
    profiles: int | None = Field(description="Surviving profiles; null before the first count.")
    identified: int | None = Field(description="Of which with an email, user id or phone.")
    share_identified: float | None
    counted_at: datetime | None = Field(description="When the background recount ended.")


class MergesToday(BaseModel):
    since: datetime = Field(description="Midnight UTC.")
    count: int


class AudienceTrendPoint(BaseModel):
    hour: datetime
    size: int


class LargeAudience(BaseModel):
    id: str
    name: str
    status: str
    size: int
    counted_at: datetime
    trend: list[AudienceTrendPoint] = Field(description="Hourly sizes over the last 24 hours.")


class DestinationHealth(BaseModel):
    id: str
    name: str
    type: str
    status: str = Field(description="active, paused or disabled.")
    paused_at: datetime | None
    paused_reason: str | None
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    sent: int
    failed: int = Field(description="Failed attempts (retried or not).")
    dead: int
    blocked: int
    replayed: int
    pending: int
    dead_letters: int
    capped: bool = Field(description="pending or dead_letters reached the count's limit.")


class StageLag(BaseModel):
    position: int
    lag_events: int
    capped: bool = Field(description="lag_events reached the count's limit (100,000).")
    oldest_waiting_seconds: float | None
    failed_batches: int
    last_error: str | None
    last_error_at: datetime | None


class Dashboard(BaseModel):
    now: datetime
    events_per_minute: EventsPerMinute
    profiles: ProfileCounts
    merges_today: MergesToday
    audiences: list[LargeAudience]
    destinations: list[DestinationHealth] | None = Field(
        description="Null for roles that may not read destinations."
    )
    processor: dict[str, StageLag] = Field(description="By stage: main, derived.")
