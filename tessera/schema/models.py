"""Tables of what Tessera has seen: the event catalog with property, trait and context
paths, events per minute and source, and the background counts of profiles and audiences.

The catalog tables are derived state of the schema batch stage: `tessera rebuild` empties
them and replays the log (they tally the whole log, so they have no `profile_id` and an
unmerge leaves them alone). The counts are kept by the recount worker job and only ever
overwritten by its next pass.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from tessera.store.schema import metadata
from tessera.store.types import UtcDateTime

EVENT_TYPE = sa.String(16)
NAME = sa.String(255)  # event names and paths are cut to this (`observe.MAX_TEXT`)
JSON_TYPE = sa.String(16)

schema_event_types = sa.Table(
    "schema_event_types",
    metadata,
    # A track call's event name; "" for the other types (page, screen, identify, group,
    # alias), which are one row each. Name first: the catalog is listed by name.
    sa.Column("name", NAME, primary_key=True),
    sa.Column("type", EVENT_TYPE, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
    # When Tessera received the first and the latest of them (`received_at`).
    sa.Column("first_seen", UtcDateTime, nullable=False),
    sa.Column("last_seen", UtcDateTime, nullable=False),
    # Property paths left out by the limits (too deep is kept as "object", not counted).
    sa.Column("dropped_paths", sa.BigInteger, nullable=False),
)

schema_fields = sa.Table(
    "schema_fields",
    metadata,
    # "event": an event's properties (track, page, screen) or traits (group), under its
    # type and name; "trait": profile traits (identify's traits, any call's context.traits);
    # "context": the context fields people filter on, across all events.
    sa.Column("scope", sa.String(8), primary_key=True),
    sa.Column("event_name", NAME, primary_key=True),
    sa.Column("event_type", EVENT_TYPE, primary_key=True),
    # Dotted below the scope's object: `total`, `address.city`, `campaign.source`.
    sa.Column("path", NAME, primary_key=True),
    # string, datetime (a string the audience language reads as a date), integer, number,
    # boolean, array, object (nested deeper than the limit, or empty), null.
    sa.Column("json_type", JSON_TYPE, primary_key=True),
    # Events that had it (context: of those sampled, `stage.CONTEXT_SAMPLE`).
    sa.Column("count", sa.BigInteger, nullable=False),
)

schema_event_minutes = sa.Table(
    "schema_event_minutes",
    metadata,
    # Events received per minute and source; minutes older than the retention are pruned
    # by the recount job, oldest first (the key leads with the minute for that). The
    # minute is a number (`minute_of`): a day's series of rows reads without parsing times.
    sa.Column("minute", sa.Integer, primary_key=True),
    sa.Column("source_id", sa.Integer, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)

schema_dropped = sa.Table(
    "schema_dropped",
    metadata,
    # What the catalog's limits left out, by reason: "event_names" (events of names past
    # the limit of names), "trait_paths", "context_paths".
    sa.Column("reason", sa.String(32), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)

schema_recounts = sa.Table(
    "schema_recounts",
    metadata,
    # One row per recount ("profiles", "audiences"): the pass under way (`cursor` not
    # NULL), its partial figures, and the last finished pass's results.
    sa.Column("name", sa.String(16), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),  # compare-and-set
    sa.Column("cursor", sa.String(64), nullable=True),
    sa.Column("audience_id", sa.String(32), nullable=True),  # the audience being counted
    sa.Column("partial_total", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("partial_identified", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("pass_started_at", UtcDateTime, nullable=True),
    # Time spent in this pass's steps.
    sa.Column("busy_seconds", sa.Float, nullable=False, server_default="0"),
    sa.Column("next_pass_at", UtcDateTime, nullable=True),
    sa.Column("total", sa.BigInteger, nullable=True),
    sa.Column("identified", sa.BigInteger, nullable=True),
    sa.Column("counted_at", UtcDateTime, nullable=True),
    sa.Column("pass_seconds", sa.Float, nullable=True),
)

schema_audience_sizes = sa.Table(
    "schema_audience_sizes",
    metadata,
    # Members per audience as the last recount found them.
    sa.Column("audience_id", sa.String(32), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("counted_at", UtcDateTime, nullable=False),
)


def minute_of(moment: datetime) -> int:
    """The minute `moment` falls in, as minutes since the Unix epoch (UTC)."""
    return int(moment.timestamp()) // 60


def minute_start(minute: int) -> datetime:
    """The moment a `minute_of` number starts."""
    return datetime.fromtimestamp(minute * 60, UTC)
