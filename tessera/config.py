"""Settings: one pydantic-settings class read from `TESSERA_*` environment variables.

Build it with `Settings()` where the process starts (the CLI, a test) and pass it down;
nothing here runs at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tessera.errors import TesseraError

DEFAULT_BLOCKED_VALUES = (
    "",
    "null",
    "none",
    "nil",
    "undefined",
    "anonymous",
    "unknown",
    "n/a",
    "0",
    "-1",
    "test@test.com",
    "test@example.com",
    "email@example.com",
    "user@example.com",
    "noreply@example.com",
    "no-reply@example.com",
    "a@a.com",
    "00000000-0000-0000-0000-000000000000",
)


class Settings(BaseSettings):
    """Every knob Tessera has. `docs/configuration.md` documents each (a test checks)."""

    # An error never echoes the value given: some are secrets (the key, the admin password).
    model_config = SettingsConfigDict(
        env_prefix="TESSERA_", extra="ignore", hide_input_in_errors=True
    )

    database_url: str = Field(
        default="sqlite:///./tessera.db",
        description=(
            "SQLAlchemy URL of the store. The default is a SQLite file in the working "
            "directory; use postgresql+psycopg://user@host/db for PostgreSQL."
        ),
    )
    host: str = Field(default="127.0.0.1", description="Address `tessera serve` listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `tessera serve` listens on.")
    public_url: str | None = Field(
        default=None,
        description=(
            "The URL clients use to reach this server, shown in the start-up banner. "
            "Defaults to http://HOST:PORT."
        ),
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Minimum level of log records written to stderr."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description=(
            "`text` writes key=value lines for people; `json` writes one JSON object a line."
        ),
    )
    access_log: bool = Field(
        default=False, description="Log every HTTP request (costly at high request rates)."
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description=(
            "SQLite `synchronous` pragma. FULL fsyncs every commit, so an acknowledged event "
            "survives a power cut; NORMAL survives a process crash only."
        ),
    )
    ingest_max_message_bytes: int = Field(
        default=32 * 1024, gt=0, description="Largest accepted message, in bytes of JSON."
    )
    ingest_max_batch_bytes: int = Field(
        default=500 * 1024,
        gt=0,
        description="Largest accepted request body, in bytes after gzip decompression.",
    )
    ingest_max_batch_messages: int = Field(
        default=2500, gt=0, description="Most messages accepted in one batch request."
    )
    ingest_queue_max_events: int = Field(
        default=50_000,
        gt=0,
        description=(
            "Events waiting for their commit before the tracking API answers 429 with "
            "Retry-After. Bounds the memory the write path may use."
        ),
    )
    ingest_max_inflight_bytes: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        description=(
            "Bytes of request bodies the tracking API reads and parses at once. Each request "
            "reserves its size limit (or its Content-Length) before reading; past this, "
            "requests get 429 with Retry-After, so concurrent uploads cannot exhaust memory."
        ),
    )
    ingest_commit_max_events: int = Field(
        default=5_000,
        gt=0,
        description="Most events group-committed in one transaction by the event-log writer.",
    )
    ingest_commit_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description=(
            "How long a tracking call waits for its commit before answering 503; the events "
            "may still commit, and the client's retry is deduplicated by messageId."
        ),
    )
    write_key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description=(
            "How long a write key lookup is cached. A source disabled elsewhere stops "
            "accepting events within this time."
        ),
    )
    source_refusals_kept: int = Field(
        default=1_000,
        ge=1,
        le=100_000,
        description=(
            "Refused messages kept per source, newest first, for its live view; older ones "
            "are deleted as new ones come."
        ),
    )
    cors_allow_origins: list[str] = Field(
        default=["*"],
        description="Origins allowed to call the tracking API (/v1) from a browser.",
    )

    identity_priority: list[str] = Field(
        default=["user_id", "email", "phone", "anonymous_id", "device_id", "advertising_id"],
        description=(
            "Identifier types, highest priority first. When linking an event's identifiers "
            "would break a limit, the lowest-priority conflicting one is dropped. Custom types "
            "from context.externalIds rank after all listed types."
        ),
    )
    identity_limits: dict[str, int] = Field(
        default={"user_id": 1, "email": 5},
        description=(
            "Most identifiers of a type one profile may hold, as a JSON object "
            'such as {"user_id": 1, "email": 5}; types not named use the default limit.'
        ),
    )
    identity_default_limit: int = Field(
        default=5, ge=1, description="Limit for identifier types not named in identity_limits."
    )
    identity_blocked_values: list[str] = Field(
        default=list(DEFAULT_BLOCKED_VALUES),
        description=(
            "Identifier values that never match anything (compared trimmed, lower-cased). "
            "Strings of only zeros and dashes are always blocked."
        ),
    )
    identity_phone_region: str = Field(
        default="US",
        min_length=2,
        max_length=2,
        description="Region (ISO 3166 code) for phone numbers written without a country code.",
    )
    identity_max_identifiers_per_profile: int = Field(
        default=500, ge=1, description="Hard cap on identifiers one profile may hold."
    )
    identity_max_merges_per_profile: int = Field(
        default=100, ge=1, description="Hard cap on merges into one profile."
    )
    trait_policies: dict[str, str] = Field(
        default={},
        description=(
            "Per-trait merge policy as a JSON object. Values: `latest` (the default: the latest "
            "event timestamp wins), `first` (the first value is kept), or "
            "`sources:NAME,NAME` (a value from an earlier-listed source beats a later one; "
            'ties go to the latest), e.g. {"plan": "sources:crm,web", "signup_source": "first"}.'
        ),
    )
    processor_mode: Literal["process", "thread", "off"] = Field(
        default="process",
        description=(
            "Where `tessera serve` runs the processor (identity, profiles): `process`, a "
            "child `tessera worker` it starts, wakes on every commit and restarts if it "
            "dies, so ingest and processing each get a core; `thread`, inside the server "
            "process (they then share one interpreter lock); `off`, not at all (run "
            "`tessera worker` yourself)."
        ),
    )
    processor_derived: Literal["inline", "separate"] = Field(
        default="inline",
        description=(
            "Where computed traits and audiences are applied: `inline`, in the processor's "
            "transaction with identity and profiles; `separate`, by a stage with its own log "
            "position that follows the main one (`tessera worker --stage derived`), so the "
            "two run on two cores. With `processor_mode=process`, `tessera serve` then "
            "starts two children, one per stage. Worth it with many audiences and a core to "
            "spare; an audience then changes one derived batch after the profile."
        ),
    )
    processor_resident_profiles: int = Field(
        default=50_000,
        ge=0,
        description=(
            "Profiles whose computed-trait states, memberships and schedule the processor "
            "keeps in memory between batches (the least recently touched go first), so a "
            "batch does not load and parse them again; 0 keeps none. Some 10-15 KB a "
            "profile with 50 audiences. Dropped whenever another writer (an unmerge, a rebuild, a "
            "definition change) touched derived state."
        ),
    )
    processor_partitions: int = Field(
        default=1,
        ge=1,
        le=256,
        description=(
            "Partitions the derived stage (computed traits, audiences) runs in, by profile: "
            "each has its own log position and is applied by whichever `tessera worker "
            "--stage derived` holds it, so several workers on PostgreSQL share the stage and "
            "one profile's events are applied in order by one of them at a time. More than "
            "1 needs `processor_derived=separate`. Every process must use the same number; "
            "a worker that finds another one levels the partitions and starts its own."
        ),
    )
    processor_batch_events: int = Field(
        default=2000, gt=0, description="Most events the processor applies in one transaction."
    )
    processor_poll_seconds: float = Field(
        default=0.2,
        gt=0,
        description=(
            "How often an idle processor looks for new events written by other processes "
            "(events written by this process wake it at once)."
        ),
    )

    delivery_max_age_seconds: float = Field(
        default=4 * 3600,
        gt=0,
        description=(
            "How long a message is retried before it becomes a dead letter (with its last "
            "error; dead letters can be replayed)."
        ),
    )
    delivery_retry_base_seconds: float = Field(
        default=1.0,
        gt=0,
        description=(
            "The first retry's delay; each further retry doubles it (up to "
            "`delivery_retry_max_seconds`), with random jitter."
        ),
    )
    delivery_retry_max_seconds: float = Field(
        default=300.0, gt=0, description="The longest delay between two retries of a message."
    )
    delivery_pause_after_failures: int = Field(
        default=10,
        ge=1,
        description=(
            "Failed calls in a row after which a destination is paused: it is then only "
            "probed every `delivery_probe_seconds` (not retried hot) until a call works or "
            "someone resumes it."
        ),
    )
    delivery_probe_seconds: float = Field(
        default=30.0, gt=0, description="How often a paused destination is probed."
    )
    delivery_poll_seconds: float = Field(
        default=0.2,
        gt=0,
        description=(
            "How often an idle delivery worker looks for new messages (the processor in the "
            "same process wakes it at once)."
        ),
    )
    delivery_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "How long a delivery worker holds a destination without renewing; a worker that "
            "dies is replaced after this long, and the messages it had in flight are sent again."
        ),
    )
    delivery_log_retention_hours: float = Field(
        default=168.0,
        gt=0,
        description="How long delivered and consent-blocked messages stay in the delivery log.",
    )
    export_dir: Path = Field(
        default=Path("exports"),
        description="Directory where audience export jobs write their files.",
    )
    export_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "How long a worker holds an audience export job without renewing (it renews with "
            "every page of 5,000 members); a job whose worker stopped is started again by "
            "another after this long, at most 3 times."
        ),
    )
    export_retention_hours: float = Field(
        default=168.0,
        gt=0,
        description=(
            "How long an audience export's file is kept after its job finished; then the "
            "delivery worker deletes it and the job shows `expired`."
        ),
    )
    schema_minutes_retention_days: float = Field(
        default=7.0,
        gt=0,
        description=(
            "How long the counts of events per minute and source (the Home dashboard's "
            "chart) are kept; older minutes are pruned an hour at a time."
        ),
    )
    schema_context_sample: int = Field(
        default=16,
        ge=1,
        description=(
            "The schema catalog reads the context fields (campaign, page, device, ...) of 1 "
            "event in this many, chosen by its position in the log; 1 reads every event's, "
            "at about the cost of the rest of the catalog again."
        ),
    )
    schema_recount_max_interval_seconds: float = Field(
        default=300.0,
        gt=0,
        description=(
            "The longest wait between two recounts of profiles, identified profiles and "
            "audience sizes (the dashboard's figures, shown with the time of the count). A "
            "recount runs in steps on the worker's loop; the next starts 100 times its own "
            "duration later, at least 10 s, at most this."
        ),
    )

    secret_key: SecretStr | None = Field(
        default=None,
        description=(
            "The key that stored secrets (destinations' signing secrets and write keys) are "
            "encrypted with: 32 url-safe base64-encoded bytes, as `tessera secrets "
            "generate-key` prints. Several, comma-separated and newest first, during a key "
            "rotation: the first encrypts, any decrypts (`tessera secrets rotate`). Required "
            "with PostgreSQL; with SQLite and no value, a key is generated on first start "
            "into `tessera.key` beside the database file (mode 0600)."
        ),
    )

    admin_email: str = Field(
        default="admin@example.com",
        description="Email of the admin `tessera serve` creates on a store with no users.",
    )
    admin_password: SecretStr | None = Field(
        default=None,
        description=(
            "Password of that first admin (at least 12 characters). Without it, a random "
            "password is generated and printed once."
        ),
    )
    session_ttl_hours: float = Field(
        default=12, gt=0, description="How long a web session lasts after sign-in."
    )
    session_cookie_secure: bool = Field(
        default=True,
        description=(
            "Mark the session cookie Secure (sent over HTTPS only; browsers also send it to "
            "http://localhost). Turn off only for plain-HTTP testing on another host."
        ),
    )
    login_max_failures_per_account: int = Field(
        default=5, ge=1, description="Failed sign-ins on one account before it is locked out."
    )
    login_max_failures_per_ip: int = Field(
        default=20, ge=1, description="Failed sign-ins from one IP address before it is locked out."
    )
    login_window_minutes: float = Field(
        default=15, gt=0, description="The window in which failed sign-ins are counted."
    )
    login_lockout_minutes: float = Field(default=15, gt=0, description="How long a lockout lasts.")
    api_token_cache_seconds: float = Field(
        default=2.0,
        ge=0,
        description=(
            "How long a valid API token is remembered, so a client's requests do not each "
            "query the store. A token revoked through this server's API is refused at once; "
            "one revoked elsewhere (`tessera token revoke`, another server) within this time. "
            "0 checks every request against the store."
        ),
    )
    password_reset_minutes: float = Field(
        default=60, gt=0, description="How long a password reset token stays valid."
    )
    api_max_body_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        description=(
            "Largest request body the management API accepts (the tracking API has its own limits)."
        ),
    )

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError(
                f"database_url {value!r} is neither sqlite:///PATH nor postgresql+psycopg://..."
            )
        return value

    @field_validator("secret_key")
    @classmethod
    def _well_formed_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from tessera.store.secrets import parse_keys

            try:
                parse_keys(value.get_secret_value())
            except TesseraError as exc:  # the message names a key's position, never the key
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _partitions_run_separately(self) -> Settings:
        if self.processor_partitions > 1 and self.processor_derived != "separate":
            raise ValueError(
                f"processor_partitions={self.processor_partitions} needs "
                "processor_derived=separate: partitions are the derived stage's own workers"
            )
        return self

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"
