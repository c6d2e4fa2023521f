"""Tables of unified profiles: the profile, its traits with provenance, its accounts, and
which profile each event belongs to. All derived from the event log."""

from __future__ import annotations

import sqlalchemy as sa

from tessera.identity.models import PROFILE_ID
from tessera.store.schema import metadata
from tessera.store.types import UtcDateTime

profiles = sa.Table(
    "profiles",
    metadata,
    # "prf_<seq of the event that created it>": stable, and the same after a rebuild.
    sa.Column("id", PROFILE_ID, primary_key=True),
    sa.Column("created_seq", sa.BigInteger, nullable=False),
    # Set when absorbed by a merge: the survivor this id now resolves to (one hop).
    sa.Column("merged_into", PROFILE_ID, nullable=True, index=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("event_count", sa.Integer, nullable=False, default=0),
    # Pulls `updated_since` a moment (activation/pull.py) read the surviving profiles changed
    # since then from here. `merged_into` leads because SQLite, which keeps no statistics,
    # otherwise prefers the equality on `ix_profiles_merged_into` to a range on `updated_at`
    # and sorts every surviving profile for each page.
    sa.Index("ix_profiles_merged_into_updated_at", "merged_into", "updated_at"),
)

profile_traits = sa.Table(
    "profile_traits",
    metadata,
    sa.Column("profile_id", PROFILE_ID, primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),  # JSON
    # Provenance: where the winning value came from.
    sa.Column("source_id", sa.Integer, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("message_id", sa.String(255), nullable=False),
    sa.Column("timestamp", UtcDateTime, nullable=False),
)

profile_accounts = sa.Table(
    "profile_accounts",
    metadata,
    sa.Column("profile_id", PROFILE_ID, primary_key=True),
    sa.Column("group_id", sa.String(255), primary_key=True),
    sa.Column("traits", sa.Text, nullable=False),  # JSON of the latest group call
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("timestamp", UtcDateTime, nullable=False),
)

event_profiles = sa.Table(
    "event_profiles",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    # NULL when the event carried no usable identifier (all blocked): counted, not guessed.
    sa.Column("profile_id", PROFILE_ID, nullable=True),
    # The profile the main stage attributed the event to when it applied it: a merge moves
    # `profile_id` to the survivor but not this (the derived stage's partitions read it).
    # NULL with `profile_id`, and on rows written before revision 0008.
    sa.Column("applied_to", PROFILE_ID, nullable=True),
    sa.Index("ix_event_profiles_profile_id_seq", "profile_id", "seq"),
)

computed_traits = sa.Table(
    "computed_traits",
    metadata,
    # Named definitions (API) and the implicit ones audiences' event conditions compile to
    # ("_evt_<hash>", shared by identical conditions). People's decisions, not derived.
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("definition", sa.Text, nullable=False),  # JSON, canonical
    sa.Column("implicit", sa.Boolean, nullable=False, default=False),
    # "backfilling" until the log up to the processor's position has been replayed into it,
    # then "ready": the processor maintains it with every batch.
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("backfilled_through", sa.BigInteger, nullable=False, default=0),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

computed_trait_values = sa.Table(
    "computed_trait_values",
    metadata,
    # Read by profile (primary-key ranges); no index on `name` alone: SQLite would pick it
    # for range reads and scan every profile's row of that trait.
    sa.Column("profile_id", PROFILE_ID, primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=True),  # JSON of the current value
    sa.Column("updated_at", UtcDateTime, nullable=False),
    # Last: SQLite reads a row's columns in order, so reading the value never walks the
    # overflow pages of a large state.
    sa.Column("state", sa.Text, nullable=False),  # the engine's incremental state
)

profile_consent = sa.Table(
    "profile_consent",
    metadata,
    # The person's latest stated preference per category, from Segment's
    # `context.consent.categoryPreferences` (the latest event timestamp wins).
    sa.Column("profile_id", PROFILE_ID, primary_key=True),
    sa.Column("category", sa.String(64), primary_key=True),
    sa.Column("granted", sa.Boolean, nullable=False),
    sa.Column("source_id", sa.Integer, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("timestamp", UtcDateTime, nullable=False),
)

profile_search = sa.Table(
    "profile_search",
    metadata,
    # What the people search finds a surviving profile by, one row per profile that has
    # anything to find (names, emails, phones, identifiers other than anonymous and device
    # ids, a company): derived by the `profile_search` batch stage (`search_index.py`).
    # The profile's `created_seq`: results come newest person first, and on SQLite it is
    # the row id the FTS5 index `profile_search_fts` (revision 0010) points at.
    sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("profile_id", PROFILE_ID, nullable=False),
    # The summary a result shows, so a page of results reads no traits.
    sa.Column("name", sa.String(255), nullable=True),
    sa.Column("email", sa.String(255), nullable=True),
    sa.Column("phone", sa.String(255), nullable=True),
    sa.Column("company", sa.String(255), nullable=True),
    # Space-separated index terms (`search_terms.py`). SQLite indexes them with FTS5,
    # PostgreSQL with a GIN index over them as a tsvector, the generated column
    # `document` (both in revision 0010).
    sa.Column("terms", sa.Text, nullable=False),
    sa.Index("ix_profile_search_profile_id", "profile_id", unique=True),
)
# What revision 0010 makes beside `profile_search` and a model cannot declare, one backend's
# each: SQLite's FTS5 table (with the shadow tables FTS5 names after it), PostgreSQL's
# generated tsvector column and its GIN index. Schema comparisons leave them out
# (`store.schema.include_name`).
SEARCH_INDEX_OBJECTS = (
    "profile_search_fts",
    "profile_search.document",
    "ix_profile_search_document",
)
metadata.info.setdefault("unmodelled", set()).update(SEARCH_INDEX_OBJECTS)
