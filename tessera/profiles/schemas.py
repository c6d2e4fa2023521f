"""Response shapes of the profile API (the contract in DESIGN.md, plus provenance)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class IdentityOut(BaseModel):
    type: str
    value: str


class IdentityDetail(IdentityOut):
    first_seen_message_id: str | None = Field(None, description="The event that linked it.")


class TraitSource(BaseModel):
    source: str | None
    message_id: str
    timestamp: datetime


class AccountOut(BaseModel):
    group_id: str
    traits: dict[str, Any]
    timestamp: datetime


class ProfileOut(BaseModel):
    id: str
    traits: dict[str, Any]
    identities: list[IdentityOut]
    computed_traits: dict[str, Any] = Field(default_factory=dict)
    audiences: list[Any] = Field(default_factory=list)
    consent: dict[str, Any] = Field(default_factory=dict)
    accounts: list[AccountOut] = Field(default_factory=list)
    provenance: dict[str, TraitSource] = Field(
        default_factory=dict, description="Where each trait's current value came from."
    )
    merged_ids: list[str] = Field(
        default_factory=list, description="Profile ids absorbed into this one."
    )
    event_count: int
    created_at: datetime
    updated_at: datetime


class EventOut(BaseModel):
    seq: int
    messageId: str
    type: str
    event: str | None = None
    name: str | None = None
    userId: str | None = None
    anonymousId: str | None = None
    timestamp: datetime
    receivedAt: datetime
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    source: str | None = None


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")


class UnmergeIn(BaseModel):
    merge_id: int = Field(
        ge=1, le=2_147_483_647, description="The id of the merge to undo, from GET .../merges."
    )


class UnmergeOut(BaseModel):
    survivor_id: str
    restored_id: str = Field(description="The absorbed profile, back under its own id.")
    blocked_identifiers: list[str] = Field(
        description="The identifiers that linked the pair; they no longer merge these two."
    )
    events_replayed: int


class MergeOut(BaseModel):
    id: int
    survivor_id: str
    absorbed_id: str
    rule: str
    identifiers: list[str]
    message_id: str
    merged_at: datetime


class ProfileSummary(BaseModel):
    id: str
    name: str | None = Field(description="The `name` trait, else first and last name.")
    email: str | None
    phone: str | None
    company: str | None
    updated_at: datetime


class ProfileSearchPage(BaseModel):
    items: list[ProfileSummary] = Field(
        description="Exact identifier matches first, then the newest profiles first."
    )
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")
