"""The stores benchmarks/search.py searches: synthetic identified profiles in harness_store's
shape (names, email, user id, anonymous id) plus phones and companies, inserted straight
into the tables, then indexed by the search index's own backfill (`index_all_profiles`, what
revision 0010 runs on an existing store). Kept in a cache directory between runs, under a
name that changes with the code that writes the index; a PostgreSQL copy on request."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
from harness import ROOT
from harness_store import (
    PROFILE_INSERTS,
    disk_size,
    fresh_store,
    settings,
    store_engine,
    synthetic_rows,
)

CHUNK = 50_000
PHONE_SHARE, COMPANY_SHARE = 0.6, 0.3
COMPANY_WORDS = (
    ("North", "Blue", "Bright", "Green", "Silver", "Red", "Oak", "Iron", "Swift", "Clear",
     "Grand", "Little", "Open", "Pine", "Stone", "Summit", "True", "Urban", "West", "Wild"),
    ("Harbour", "Field", "Bridge", "Works", "Labs", "Studio", "Foods", "Logistics", "Digital",
     "Print", "Motors", "Design", "Energy", "Health", "Media", "Garden", "Craft", "Supply",
     "Textiles", "Systems"),
    ("Ltd", "Inc", "GmbH", "LLC", "Co"),
)  # fmt: skip
# What decides the SQLite store's index: a cached store made by other versions of these
# is not reused (PostgreSQL's part of the migration does not count: its copy is rebuilt).
INDEX_SOURCES = ("tessera/profiles/search_terms.py", "tessera/profiles/search_index.py")


def _migration() -> Any:
    import importlib

    return importlib.import_module("tessera.store.migrations.versions.0010_profile_search")


def code_version(backend: str = "sqlite") -> str:
    """A digest of what decides the index's content on `backend`."""
    digest = hashlib.sha256()
    for name in INDEX_SOURCES:
        digest.update((ROOT / name).read_bytes())
    migration = _migration()
    statements = migration.GIN_INDEX if backend == "postgresql" else migration.FTS5_TRIGGERS
    for statement in (migration.FTS5_TABLE, *statements):
        digest.update(statement.encode())
    return digest.hexdigest()[:10]


def _phone(rng: random.Random) -> tuple[str, str]:
    """(as typed in a form, E.164 as identity holds it): a North American number."""
    area, exchange, line = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    return f"({area}) {exchange}-{line:04d}", f"+1{area}{exchange}{line:04d}"


def _extras(
    rng: random.Random, profiles: list[tuple[Any, ...]], source_id: int, phones: set[str]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Phone and company traits, and phone identifiers, for a share of `profiles`; `phones`
    holds the numbers given out so far (an identifier has one owner)."""
    identities, traits = [], []
    for pid, n, _merged, _created, updated, _count in profiles:
        message = f"syn-{n + 4:012d}"
        if rng.random() < PHONE_SHARE:
            typed, e164 = _phone(rng)
            while e164 in phones:
                typed, e164 = _phone(rng)
            phones.add(e164)
            identities.append(("phone", e164, pid, n + 4))
            traits.append(
                (pid, "phone", orjson.dumps(typed).decode(), source_id, n + 4, message, updated)
            )
        if rng.random() < COMPANY_SHARE:
            company = " ".join(rng.choice(words) for words in COMPANY_WORDS)
            traits.append(
                (pid, "company", orjson.dumps(company).decode(), source_id, n + 4, message, updated)
            )
    return identities, traits


def build_sqlite(database: Path, *, profiles: int, seed: int) -> dict[str, Any]:
    """A migrated store of `profiles` synthetic profiles, indexed; timings and sizes."""
    import sqlalchemy as sa

    from tessera.profiles.search_index import index_all_profiles

    started = time.perf_counter()
    engine, source_id = fresh_store(database, settings(), "synthetic")
    engine.dispose()
    rng = random.Random(f"search-{seed}")
    phones: set[str] = set()
    db = sqlite3.connect(database, isolation_level=None)
    try:
        for pragma in ("journal_mode=DELETE", "synchronous=OFF", "cache_size=-1000000"):
            db.execute(f"PRAGMA {pragma}")
        for first in range(0, profiles, CHUNK):
            rows = synthetic_rows(
                rng,
                first_index=first,
                count=min(CHUNK, profiles - first),
                base_seq=0,
                source_id=source_id,
                region="US",
                taken=set(),
            )
            identities, traits = _extras(rng, rows[0], source_id, phones)
            db.execute("BEGIN")
            for statement, rows_of in zip(PROFILE_INSERTS, rows, strict=True):
                db.executemany(statement, rows_of)
            db.executemany(PROFILE_INSERTS[1], identities)
            db.executemany(PROFILE_INSERTS[2], traits)
            db.execute("COMMIT")
        db.execute("PRAGMA journal_mode=WAL")
    finally:
        db.close()
    inserted = time.perf_counter()
    engine = store_engine(database, settings())
    with engine.begin() as conn:
        indexed = index_all_profiles(conn)
    with engine.connect() as conn:
        rows_in_index = conn.execute(sa.text("SELECT count(*) FROM profile_search")).scalar_one()
    engine.dispose()
    done = time.perf_counter()
    return {
        "insert_s": inserted - started,
        "index_s": done - inserted,
        "indexed": indexed,
        "rows": rows_in_index,
        "bytes": disk_size(database),
    }


def cached_sqlite(cache: Path, *, profiles: int, seed: int) -> tuple[Path, dict[str, Any]]:
    """The store for (`profiles`, `seed`) under `cache`, built when it is not there yet."""
    cache.mkdir(parents=True, exist_ok=True)
    database = cache / f"search-{profiles}-{seed}-{code_version()}.db"
    marker = database.with_suffix(".json")
    if database.exists() and marker.exists():
        info: dict[str, Any] = orjson.loads(marker.read_bytes())
        return database, {**info, "cached": True}
    for stale in cache.glob(f"search-{profiles}-{seed}-*"):
        stale.unlink()
    print(f"building a store of {profiles:,} profiles in {database} (cached for later runs)")
    info = build_sqlite(database, profiles=profiles, seed=seed)
    marker.write_bytes(orjson.dumps(info))
    return database, {**info, "cached": False}


def copy_to_postgresql(database: Path, admin_url: str, prefix: str) -> tuple[str, dict[str, Any]]:
    """A migrated PostgreSQL database `name` holding the SQLite store's profiles and their
    index rows (COPY: the generated tsvector column is computed as the rows arrive, the GIN
    index built once, after the load), named `prefix` and the code's version; reused when
    it holds as many rows, and copies made by other versions dropped."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from tessera.store import create_store_engine, upgrade

    name = f"{prefix}_{code_version('postgresql')}"
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as source:
        wanted = int(source.execute("SELECT count(*) FROM profile_search").fetchone()[0])
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        stale = conn.execute(
            sa.text(
                "SELECT datname FROM pg_database WHERE datname LIKE :like AND datname <> :name"
            ),
            {"like": f"{prefix}\\_%", "name": name},
        ).scalars()
        for old in list(stale):
            conn.execute(sa.text(f'DROP DATABASE "{old}" WITH (FORCE)'))
        exists = conn.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
        ).first()
        if exists is None:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    engine = create_store_engine(url)
    upgrade(engine)
    with engine.connect() as conn:
        have = conn.execute(sa.text("SELECT count(*) FROM profile_search")).scalar_one()
    if have == wanted:
        engine.dispose()
        return url, {"cached": True, "copy_s": 0.0}
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE profile_search, profiles"))
        conn.execute(sa.text("DROP INDEX IF EXISTS ix_profile_search_document"))
        raw = conn.connection.driver_connection
        assert raw is not None
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as source, raw.cursor() as cur:
            for table, columns in (
                ("profiles", "id, created_seq, merged_into, created_at, updated_at, event_count"),
                ("profile_search", "seq, profile_id, name, email, phone, company, terms"),
            ):
                with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in source.execute(f"SELECT {columns} FROM {table}"):
                        copy.write_row(row)
        conn.execute(sa.text("SET LOCAL maintenance_work_mem = '512MB'"))
        conn.execute(sa.text(_gin_index()))
    # As autovacuum would leave them: statistics, and the visibility map that lets the
    # join to `profiles` read its index alone.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM (ANALYZE) profiles, profile_search"))
    engine.dispose()
    return url, {"cached": False, "copy_s": time.perf_counter() - started}


def _gin_index() -> str:
    """The migration's statement that makes the GIN index (dropped for the load)."""
    statements: tuple[str, ...] = _migration().GIN_INDEX
    return next(statement for statement in statements if statement.startswith("CREATE INDEX"))
