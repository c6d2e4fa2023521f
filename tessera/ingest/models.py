"""Tables of the ingest stage: the sources that may send events, each with its write key,
what each source sent by day, and the last messages the tracking API refused from it."""

from __future__ import annotations

import sqlalchemy as sa

from tessera.store.schema import metadata
from tessera.store.types import BigIntegerPK, UtcDateTime

sources = sa.Table(
    "sources",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    # The SHA-256 (hex) of the write key, never the key (sources.py says why). The column
    # keeps its first name: renaming it would rebuild, on SQLite, the table the whole event
    # log refers to. In code it is `sources.c.write_key_hash`.
    sa.Column("write_key", sa.String(64), key="write_key_hash", nullable=False, unique=True),
    # The key's first characters, so people can tell which key a source has.
    sa.Column("write_key_prefix", sa.String(8), nullable=True),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("disabled_at", UtcDateTime, nullable=True),
)

source_activity = sa.Table(
    "source_activity",
    metadata,
    # One row per source and UTC day, added to by every API process about twice a second
    # (activity.py): what the sources page shows without counting the log.
    sa.Column(
        "source_id",
        sa.Integer,
        sa.ForeignKey("sources.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("accepted", sa.BigInteger, nullable=False),  # messages, duplicates included
    sa.Column("refused", sa.BigInteger, nullable=False),
    sa.Column("last_accepted_at", UtcDateTime, nullable=True),
    sa.Column("last_refused_at", UtcDateTime, nullable=True),
)

source_refusals = sa.Table(
    "source_refusals",
    metadata,
    # The newest refused messages of each known source (at most `source_refusals_kept`;
    # older rows are trimmed as new ones come), with the reason the client was given.
    sa.Column("id", BigIntegerPK, primary_key=True, autoincrement=True),
    sa.Column(
        "source_id",
        sa.Integer,
        sa.ForeignKey("sources.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),  # the HTTP status answered
    sa.Column("code", sa.String(32), nullable=False),  # its `code`: bad_request, forbidden, ...
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("message_id", sa.String(255), nullable=True),
    # The start of the message (or of the body, when no message could be read), with the
    # write key taken out.
    sa.Column("excerpt", sa.Text, nullable=True),
    sa.Index(None, "source_id", "id"),
)
