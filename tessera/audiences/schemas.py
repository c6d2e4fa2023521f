"""Request and response shapes of the computed-trait and audience API.

Definitions are taken as plain JSON and validated by their own languages
(`profiles.computed.parse_computed_trait`, `audiences.language.parse_audience`), so that a
bad one is answered 400 `invalid_definition` with the JSON path of the bad part, never a
pydantic 422 that knows nothing of the language. `check_plain_json` refuses, with its path,
what JSON can spell but the store cannot hold.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from tessera.errors import InvalidDefinition

MAX_DESCRIPTION = 2000
_INT64 = 2**63


def check_plain_json(document: Any, path: str = "$") -> None:
    """Refuse strings that are not valid Unicode (lone surrogates such as "\\ud800"),
    numbers that are not finite (`NaN`, `1e400`) and integers beyond 64 bits: Python's JSON
    reader accepts them, and neither the database nor the canonical JSON of a stored
    definition can hold them. Iterative, so any nesting depth the reader accepted is fine."""
    pending: list[tuple[Any, str]] = [(document, path)]
    while pending:
        value, at = pending.pop()
        if isinstance(value, str):
            if not _is_unicode(value):
                raise InvalidDefinition("the text is not valid Unicode (a lone surrogate)", path=at)
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not -_INT64 <= value < _INT64:
                raise InvalidDefinition("integers are at most 64 bits", path=at)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidDefinition("numbers must be finite and at most 1e308", path=at)
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _is_unicode(key):
                    raise InvalidDefinition(
                        "a key is not valid Unicode (a lone surrogate)", path=at
                    )
                pending.append((item, f"{at}.{key}"))
        elif isinstance(value, list):
            pending.extend((item, f"{at}[{i}]") for i, item in enumerate(value))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unicode(text: str) -> str:
    if not _is_unicode(text):
        raise ValueError("the text is not valid Unicode (a lone surrogate)")
    return text


AudienceName = Annotated[
    str,
    Field(min_length=1, max_length=200, description="Unique among audiences."),
    AfterValidator(_unicode),
]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION), AfterValidator(_unicode)]


# -- computed traits --------------------------------------------------------------------


class ComputedTraitDefinition(BaseModel):
    """A computed-trait definition (docs/api-audiences.md). Only the object shape is checked
    here; the definition language checks the rest and names the bad part's path."""

    model_config = ConfigDict(
        extra="allow",  # unknown keys reach the parser, which names them
        json_schema_extra={
            "examples": [
                {
                    "name": "orders_30d",
                    "kind": "count",
                    "event": {"name": "Order Completed"},
                    "window": {"days": 30},
                }
            ]
        },
    )

    name: Any = Field(
        None,
        description="1 to 64 of a-z, 0-9, _ starting with a letter. On PUT, omit it or repeat "
        "the name in the URL.",
    )
    kind: Any = Field(
        None,
        description="count, sum, avg, min, max, first, last, most_frequent, unique_list, "
        "first_time or last_time.",
    )
    event: Any = Field(
        None,
        description='Which events count: {"name", "type", "where"}; omit for every event.',
    )
    property: Any = Field(
        None, description="The dotted property to aggregate (not for count and the times)."
    )
    window: Any = Field(None, description='{"days": N} or {"hours": N}; omit for all time.')
    limit: Any = Field(None, description="unique_list only: how many values to keep (1-100).")

    def document(self) -> dict[str, Any]:
        """The definition as sent: the keys given, with any unknown ones."""
        return self.model_dump(exclude_unset=True)


class BackfillOut(BaseModel):
    through_seq: int = Field(description="The log position replayed into the trait so far.")
    log_head_seq: int = Field(description="The newest event's position in the log.")
    progress: float = Field(description="0 to 1; 1 when ready.")


class ComputedTraitOut(BaseModel):
    name: str
    definition: dict[str, Any] = Field(description="The canonical definition, defaults filled.")
    implicit: bool = Field(
        description="Made for an audience's event condition (`_evt_...`); read-only."
    )
    status: str = Field(description='"backfilling" until the log is replayed into it, "ready".')
    backfill: BackfillOut
    created_at: datetime
    updated_at: datetime


# -- audiences --------------------------------------------------------------------------


class AudienceIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Big spenders",
                    "description": "Over 500 spent in the last 90 days",
                    "definition": {"computed": "spend_90d", "op": "gt", "value": 500},
                }
            ]
        },
    )

    name: AudienceName
    description: Description = ""
    definition: Any = Field(
        description="The condition tree of the audience language (docs/api-audiences.md)."
    )


class AudiencePatch(BaseModel):
    """Any of the three; a changed definition rebuilds the audience."""

    model_config = ConfigDict(extra="forbid")

    name: AudienceName | None = None
    description: Description | None = None
    definition: Any = Field(None, description="The new condition tree.")

    @model_validator(mode="after")
    def _no_nulls(self) -> AudiencePatch:
        # A null would be ambiguous (clear it? leave it?); leave a field out to keep it.
        for field in ("name", "description"):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null; leave it out to keep it")
        return self


class BuildOut(BaseModel):
    evaluated_profiles: int = Field(description="Profiles evaluated by the current build.")
    profiles: int = Field(description="Profiles in all.")
    progress: float = Field(description="0 to 1; 1 when ready.")


class AudienceOut(BaseModel):
    id: str
    name: str
    description: str
    definition: dict[str, Any] = Field(description="The canonical condition tree.")
    status: str = Field(description='"building" until every profile is evaluated, "ready".')
    size: int = Field(description="Current members.")
    build: BuildOut
    created_by: str | None = Field(description="Who created it (`token:NAME`, `user:EMAIL`).")
    created_at: datetime
    updated_at: datetime


class MemberOut(BaseModel):
    profile_id: str
    entered_at: datetime


class MemberPage(BaseModel):
    items: list[MemberOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")


class PreviewIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"definition": {"trait": "plan", "op": "eq", "value": "gold"}}]
        },
    )

    definition: Any = Field(description="A draft condition tree; nothing is saved.")


class PreviewOut(BaseModel):
    size: int = Field(description="Members the draft would have now (estimated when not exact).")
    exact: bool = Field(description="Every profile was evaluated within the time budget.")
    margin: int | None = Field(
        description="The estimate's 95% half-width (size ± margin); 0 when exact, null when "
        "too few profiles were evaluated to tell."
    )
    evaluated_profiles: int
    profiles: int = Field(description="Profiles in all (counted within the last 30 s).")
    sample: list[str] = Field(description="Some members' profile ids.")
    computed_from_events: list[str] = Field(
        description="Event conditions no computed trait answers yet, computed from the events."
    )
    seconds: float


# -- list pages and trends ----------------------------------------------------------------


class TrendPoint(BaseModel):
    at: datetime = Field(description="The hour of the snapshot (UTC).")
    size: int = Field(description="Members at the start of that hour.")


class AudienceOverviewOut(BaseModel):
    id: str
    name: str
    description: str
    status: str = Field(description='"building" or "ready", as stored.')
    phase: str = Field(
        description='"backfilling" (its computed traits first), "waiting" (for audiences it '
        'refers to), "building" (walking the profiles) or "ready".'
    )
    progress: float = Field(description="0 to 1, of the current phase; 1 when ready.")
    size: int = Field(description="Current members.")
    size_week_ago: int | None = Field(
        description="The oldest snapshot of the last 7 days; null before the first snapshot."
    )
    trend: list[TrendPoint] = Field(description="The last snapshot of each of the last 7 days.")
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class SizeTrendOut(BaseModel):
    audience_id: str
    size: int = Field(description="Current members.")
    points: list[TrendPoint] = Field(
        description="Hourly snapshots, oldest first; an hour without a running worker has none."
    )


class DayChanges(BaseModel):
    day: date = Field(description="A UTC day.")
    entered: int = Field(description="Profiles that entered the audience that day.")
    exited: int = Field(description="Profiles that left it that day (merges included).")


class DailyChangesOut(BaseModel):
    audience_id: str
    days: list[DayChanges] = Field(description="Every day of the range, oldest first.")
