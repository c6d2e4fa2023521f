"""Tables of activation: destinations (people's decisions), their runtime state, the
outbox (every message, from enqueued to delivered or dead), counters (in all and per hour),
the cursor over the audience change stream, and audience export jobs."""

from __future__ import annotations

import sqlalchemy as sa

from tessera.identity.models import PROFILE_ID
from tessera.store.schema import metadata
from tessera.store.types import BigIntegerPK, UtcDateTime

DESTINATION_ID = sa.String(32)

destinations = sa.Table(
    "destinations",
    metadata,
    sa.Column("id", DESTINATION_ID, primary_key=True),  # "dst_<random>"
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("type", sa.String(64), nullable=False),  # the plugin's entry-point name
    sa.Column("config", sa.Text, nullable=False),  # JSON, validated by the plugin's model
    sa.Column("subscriptions", sa.Text, nullable=False),  # JSON list
    sa.Column("mapping", sa.Text, nullable=False),  # JSON
    sa.Column("consent_categories", sa.Text, nullable=False),  # JSON list
    # Off: nothing is queued for it and nothing delivered.
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

destination_state = sa.Table(
    "destination_state",
    metadata,
    # Written by the delivery workers: who delivers it now, and how it is doing.
    sa.Column("destination_id", DESTINATION_ID, primary_key=True),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_until", UtcDateTime, nullable=True),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, default=0),
    # Paused after too many failures in a row: only a probe now and then until one works.
    sa.Column("paused_at", UtcDateTime, nullable=True),
    sa.Column("paused_reason", sa.Text, nullable=True),
    sa.Column("next_probe_at", UtcDateTime, nullable=True),
    sa.Column("last_success_at", UtcDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_error_at", UtcDateTime, nullable=True),
    # For destinations that deliver on a schedule (file exports).
    sa.Column("last_delivery_at", UtcDateTime, nullable=True),
)

outbox = sa.Table(
    "outbox",
    metadata,
    # One row per message and destination, written by the processor in the transaction
    # that produced it; delivered in `id` order per person.
    sa.Column("id", BigIntegerPK, primary_key=True),
    sa.Column("destination_id", DESTINATION_ID, nullable=False),
    sa.Column("person", PROFILE_ID, nullable=False),  # the profile when it was queued
    # "event" | "audience.entered" | "audience.exited" | "traits.changed"
    sa.Column("kind", sa.String(24), nullable=False),
    sa.Column("message_id", sa.String(255), nullable=False),  # the idempotency key
    sa.Column("payload", sa.Text, nullable=False),  # JSON: the event, audience or traits
    sa.Column("created_at", UtcDateTime, nullable=False),
    # Retries stop here and the message becomes a dead letter (reset by a replay).
    sa.Column("expires_at", UtcDateTime, nullable=False),
    # "pending" | "delivered" | "dead" | "blocked" (consent)
    sa.Column("state", sa.String(12), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_status", sa.Integer, nullable=True),
    sa.Column("finished_at", UtcDateTime, nullable=True),  # delivered, dead or blocked
    sa.Column("replays", sa.Integer, nullable=False, default=0),
    sa.Index("ix_outbox_destination_state_id", "destination_id", "state", "id"),
    # Only messages that failed at least once: who is waiting out a retry (order per person).
    sa.Index(
        "ix_outbox_retrying",
        "destination_id",
        "person",
        "id",
        sqlite_where=sa.text("attempts > 0 AND state = 'pending'"),
        postgresql_where=sa.text("attempts > 0 AND state = 'pending'"),
    ),
)

destination_counters = sa.Table(
    "destination_counters",
    metadata,
    # Totals since the destination was created: sent, failed (attempts), dead, blocked,
    # replayed, and the summed latency of sent messages (for the mean).
    sa.Column("destination_id", DESTINATION_ID, primary_key=True),
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)

destination_hours = sa.Table(
    "destination_hours",
    metadata,
    # The same figures per hour (UTC, truncated), for the delivery charts: one row per
    # destination and hour that saw a delivery attempt; kept for `activity.KEEP_DAYS`.
    sa.Column("destination_id", DESTINATION_ID, primary_key=True),
    sa.Column("hour", UtcDateTime, primary_key=True),
    sa.Column("sent", sa.BigInteger, nullable=False),
    sa.Column("failed", sa.BigInteger, nullable=False),
    sa.Column("dead", sa.BigInteger, nullable=False),
    sa.Column("latency_ms", sa.BigInteger, nullable=False),  # summed over `sent`
)

activation_cursor = sa.Table(
    "activation_cursor",
    metadata,
    # How far the processor has fanned out the audience change stream (`audience_changes`
    # seq); moved in the same transactions that write changes, so none is skipped.
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
)

export_jobs = sa.Table(
    "export_jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # "exp_<random>"
    sa.Column("audience_id", sa.String(32), nullable=False),
    sa.Column("format", sa.String(8), nullable=False),  # csv | jsonl | parquet
    # "queued" | "running" | "done" | "failed" | "expired" (done, and its file deleted)
    sa.Column("status", sa.String(12), nullable=False),
    sa.Column("total", sa.BigInteger, nullable=True),
    sa.Column("done", sa.BigInteger, nullable=False, default=0),
    sa.Column("path", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_by", sa.String(200), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    # The worker running it renews its lease a page at a time; a job still `running` past
    # `lease_until` lost its worker, and the next worker starts it again (`attempts` + 1).
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_until", UtcDateTime, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0, server_default="0"),
    # Workers poll for the oldest queued (or abandoned) job; retention for old done ones.
    sa.Index("ix_export_jobs_status_created_at", "status", "created_at"),
)
