"""Tables of audiences: definitions (people's decisions), current members and their count,
membership history, the published change stream and its count per day, hourly size
snapshots, and the time-based re-evaluation schedule."""

from __future__ import annotations

import sqlalchemy as sa

from tessera.identity.models import PROFILE_ID
from tessera.store.schema import metadata
from tessera.store.types import UtcDateTime

AUDIENCE_ID = sa.String(32)

audiences = sa.Table(
    "audiences",
    metadata,
    sa.Column("id", AUDIENCE_ID, primary_key=True),  # "aud_<random>"
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("definition", sa.Text, nullable=False),  # JSON, canonical
    # "building" until every profile has been evaluated once, then "ready" (real time).
    sa.Column("status", sa.String(16), nullable=False),
    # The build walks profiles in id order; the last id evaluated, and how many so far.
    sa.Column("build_cursor", sa.String(32), nullable=False, default=""),
    sa.Column("built_profiles", sa.BigInteger, nullable=False, default=0),
    # Surviving profiles when the build began (its first step counts them): what
    # `built_profiles` is a fraction of, so progress is read without counting profiles.
    sa.Column("build_total", sa.BigInteger, nullable=False, default=0, server_default="0"),
    sa.Column("created_by", sa.String(200), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

audience_members = sa.Table(
    "audience_members",
    metadata,
    sa.Column("audience_id", AUDIENCE_ID, primary_key=True),
    sa.Column("profile_id", PROFILE_ID, primary_key=True, index=True),
    sa.Column("entered_at", UtcDateTime, nullable=False),
)

audience_history = sa.Table(
    "audience_history",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("audience_id", AUDIENCE_ID, nullable=False),
    sa.Column("profile_id", PROFILE_ID, nullable=False),
    sa.Column("entered_at", UtcDateTime, nullable=False),
    sa.Column("entered_cause", sa.String(300), nullable=False),
    sa.Column("exited_at", UtcDateTime, nullable=True),
    sa.Column("exited_cause", sa.String(300), nullable=True),
    sa.Index("ix_audience_history_profile", "profile_id", "audience_id"),
)

audience_changes = sa.Table(
    "audience_changes",
    metadata,
    # The published stream activation consumes in `seq` order: one row per entry or exit.
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("audience_id", AUDIENCE_ID, nullable=False, index=True),
    sa.Column("profile_id", PROFILE_ID, nullable=False),
    sa.Column("change", sa.String(8), nullable=False),  # "entered" | "exited"
    sa.Column("at", UtcDateTime, nullable=False),
    # What caused it: "event:<messageId>", "time", "merge:<survivor>", "definition".
    sa.Column("cause", sa.String(300), nullable=False),
)

audience_daily_changes = sa.Table(
    "audience_daily_changes",
    metadata,
    # The change stream counted per audience and UTC day, kept with it in the same
    # transaction (derived state: rebuild empties both). A build's day holds every member
    # entering at once, hundreds of thousands of rows of the stream; this is one row.
    sa.Column("audience_id", AUDIENCE_ID, primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("entered", sa.BigInteger, nullable=False),
    sa.Column("exited", sa.BigInteger, nullable=False),
)

audience_sizes = sa.Table(
    "audience_sizes",
    metadata,
    # Current members per audience, kept with every entry and exit in the same
    # transaction (derived state: rebuild empties it), so a size is read, never counted.
    sa.Column("audience_id", AUDIENCE_ID, primary_key=True),
    sa.Column("members", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

audience_size_snapshots = sa.Table(
    "audience_size_snapshots",
    metadata,
    # The size at the start of each hour (the first look of the worker job within it): one
    # row per audience and hour, for the size trend. Observations, kept across rebuilds.
    sa.Column("audience_id", AUDIENCE_ID, primary_key=True),
    sa.Column("hour", UtcDateTime, primary_key=True),
    sa.Column("members", sa.BigInteger, nullable=False),
    sa.Column("taken_at", UtcDateTime, nullable=False),
)

evaluation_schedule = sa.Table(
    "evaluation_schedule",
    metadata,
    # When time alone may next change something about a profile: a windowed computed
    # trait ("trait:<name>") or an audience's date condition ("audience:<id>").
    sa.Column("profile_id", PROFILE_ID, primary_key=True),
    sa.Column("item", sa.String(80), primary_key=True),
    sa.Column("due_at", UtcDateTime, nullable=False, index=True),
)
