"""Tables of the identity graph: who owns each identifier, and every merge with its reason.

All of it is derived state: `tessera rebuild` empties and re-derives it from the event log,
except `merge_blocks`, which records people's decisions (an unmerge) and is kept.
"""

from __future__ import annotations

import sqlalchemy as sa

from tessera.store.schema import metadata
from tessera.store.types import UtcDateTime

PROFILE_ID = sa.String(32)

identities = sa.Table(
    "identities",
    metadata,
    sa.Column("type", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), primary_key=True),
    sa.Column("profile_id", PROFILE_ID, nullable=False, index=True),
    # The event that first linked this identifier to a profile.
    sa.Column("first_seq", sa.BigInteger, nullable=False),
)

profile_merges = sa.Table(
    "profile_merges",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("survivor_id", PROFILE_ID, nullable=False, index=True),
    sa.Column("absorbed_id", PROFILE_ID, nullable=False, index=True),
    # Why: "identifier" (a shared identifier) or "alias" (an alias call).
    sa.Column("rule", sa.String(32), nullable=False),
    # The identifiers of the event that linked the two, as a JSON list of "type:value".
    sa.Column("identifiers", sa.Text, nullable=False),
    # Indexed: a separate derived stage reads the merges of each range of the log.
    sa.Column("seq", sa.BigInteger, nullable=False, index=True),
    sa.Column("message_id", sa.String(255), nullable=False),
    # Indexed: the dashboard counts today's merges.
    sa.Column("merged_at", UtcDateTime, nullable=False, index=True),
)

merge_blocks = sa.Table(
    "merge_blocks",
    metadata,
    # Two profiles that must never be merged again (an unmerge decided so); a < b.
    sa.Column("profile_a", PROFILE_ID, primary_key=True),
    sa.Column("profile_b", PROFILE_ID, primary_key=True),
    sa.Column("identifier", sa.Text, nullable=True),
    sa.Column("created_by", sa.String(200), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

dropped_identifiers = sa.Table(
    "identity_dropped_identifiers",
    metadata,
    # Identifiers the rules left unlinked, counted by reason with the batch that dropped
    # them, so /metrics reports them whichever process ran the processor.
    sa.Column("reason", sa.String(64), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)
