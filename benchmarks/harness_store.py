"""Stores built for benchmarks without HTTP: fresh and migrated, the demo's data appended to
the log directly, synthetic profiles shaped like the demo's identified customers."""

from __future__ import annotations

import random
import re
import unicodedata
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from tessera.config import Settings
    from tessera.demo import Dataset
    from tessera.processor import Pipeline
    from tessera.store.secrets import Keyring

APPEND_BATCH = 2_000
SYNTHETIC_TRAITS = ("email", "first_name", "last_name", "city", "country", "created_at")


def settings() -> Settings:
    """The settings `tessera serve` reads (TESSERA_* from the environment)."""
    from tessera.config import Settings

    return Settings()


def make_pipeline(settings: Settings) -> Pipeline:
    """The processor pipeline exactly as `tessera serve` builds it."""
    from tessera.processor import Pipeline

    return Pipeline.from_settings(settings)


def region_of(settings: Settings) -> str:
    """The store's phone region, which the demo generator must know (its numbers parse)."""
    from tessera.demo.catalog import REGIONS

    region = settings.identity_phone_region.upper()
    if region not in REGIONS:
        raise SystemExit(
            f"TESSERA_IDENTITY_PHONE_REGION={region} but the demo generator only knows "
            f"{sorted(REGIONS)}; the dataset's phone numbers must parse in the store's region"
        )
    return region


def store_engine(database: Path, settings: Settings) -> Engine:
    from tessera.store import create_store_engine

    return create_store_engine(
        f"sqlite:///{database}", sqlite_synchronous=settings.sqlite_synchronous
    )


def store_keyring(database: Path, settings: Settings) -> Keyring:
    """The keys for the store's secrets: the setting, or the key file beside `database`
    (so no `tessera.key` lands in the working directory)."""
    from tessera.store.secrets import load_keyring

    return load_keyring(secret_key=settings.secret_key, database_url=f"sqlite:///{database}")


def fresh_store(database: Path, settings: Settings, source: str) -> tuple[Engine, int]:
    """A migrated store with one source; its engine and the source's id."""
    from tessera.ingest.sources import create_source
    from tessera.store import upgrade

    engine = store_engine(database, settings)
    upgrade(engine)
    with engine.begin() as conn:
        source_id = create_source(conn, name=source).id
    return engine, source_id


def append_dataset(engine: Engine, dataset: Dataset, source_id: int) -> int:
    """Append every message to the log directly, APPEND_BATCH a transaction."""
    from tessera.eventlog import append_events
    from tessera.ingest.messages import normalise_message

    now = datetime.now(UTC)
    appended = 0
    for batch in dataset.batches(APPEND_BATCH):
        rows = [normalise_message(m, source_id=source_id, received_at=now) for m in batch]
        with engine.begin() as conn:
            append_events(conn, rows)
        appended += len(rows)
    return appended


def disk_size(database: Path) -> int:
    return sum(
        path.stat().st_size
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm"))
        if path.exists()
    )


def _ascii(name: str) -> str:
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z]", "", plain.lower()) or "x"


def sqlite_time(moment: datetime) -> str:
    """UTC wall time as `UtcDateTime` stores it on SQLite."""
    return moment.replace(tzinfo=None).isoformat(" ", "microseconds")


def synthetic_rows(
    rng: random.Random,
    *,
    first_index: int,
    count: int,
    base_seq: int,
    source_id: int,
    region: str,
    taken: set[str],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rows of `count` synthetic profiles (profiles, identities, profile_traits), shaped like
    the demo's identified customers: prf_<n> with n after the demo's last event and 20 apart.
    `taken` holds the "type:value" identifiers already in the store, to steer clear of."""
    from tessera.demo import DEFAULT_START
    from tessera.demo.catalog import EMAIL_DOMAINS, FIRST_NAMES, LAST_NAMES, REGIONS

    cities = REGIONS[region].cities
    profiles: list[tuple[Any, ...]] = []
    identities: list[tuple[Any, ...]] = []
    traits: list[tuple[Any, ...]] = []
    for index in range(first_index, first_index + count):
        n = base_seq + 1 + index * 20
        pid = f"prf_{n}"
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        # Unique among themselves by construction; `taken` holds the demo part's identifiers.
        email = f"{_ascii(first)}.{_ascii(last)}.{index}@{rng.choice(EMAIL_DOMAINS)}"
        user_id = f"cus_{(index * 2654435761) % 2**32:08x}"
        if f"email:{email}" in taken or f"user_id:{user_id}" in taken:
            email, user_id = f"s.{email}", f"{user_id}s"
        anonymous_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        created = DEFAULT_START + timedelta(seconds=rng.uniform(0, 60 * 86_400))
        signed_up = created + timedelta(seconds=rng.uniform(10, 3_600))
        updated = signed_up + timedelta(seconds=rng.uniform(0, 30 * 86_400))
        profiles.append(
            (pid, n, None, sqlite_time(created), sqlite_time(updated), rng.randint(3, 60))
        )
        identities += [
            ("anonymous_id", anonymous_id, pid, n),
            ("user_id", user_id, pid, n + 3),
            ("email", email, pid, n + 3),
        ]
        stamp = sqlite_time(signed_up)
        values = (email, first, last, rng.choice(cities), region, signed_up.isoformat())
        message = f"syn-{n + 3:012d}"
        traits += [
            (pid, name, orjson.dumps(value).decode(), source_id, n + 3, message, stamp)
            for name, value in zip(SYNTHETIC_TRAITS, values, strict=True)
        ]
    return profiles, identities, traits


PROFILE_INSERTS = (
    "INSERT INTO profiles (id, created_seq, merged_into, created_at, updated_at, "
    "event_count) VALUES (?, ?, ?, ?, ?, ?)",
    "INSERT INTO identities (type, value, profile_id, first_seq) VALUES (?, ?, ?, ?)",
    "INSERT INTO profile_traits (profile_id, name, value, source_id, seq, message_id, "
    "timestamp) VALUES (?, ?, ?, ?, ?, ?, ?)",
)
"""The statements that insert `synthetic_rows`' three lists, in their order."""
