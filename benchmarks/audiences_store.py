"""The audience benchmark's 1M-profile store, built directly: demo people generated in
slices by spawned processes, their events and derived rows inserted with sqlite3."""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import shutil
import sqlite3
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from audiences_definitions import NOW, add_consent
from harness import (
    rss_mib,
)
from harness_store import (
    disk_size,
    fresh_store,
)

if TYPE_CHECKING:
    from tessera.config import Settings


RECEIVED = NOW  # received_at of the bulk-built store's events
SAMPLE_EVERY = 97  # bulk rows checked against normalise_message: one in this many


def _sql_time(iso: str) -> str:
    """`2026-09-01T10:00:00.123Z` (the generator's and `iso_utc`'s form) as `UtcDateTime`
    stores it on SQLite: `2026-09-01 10:00:00.123000`."""
    return f"{iso[:10]} {iso[11:23]}000"


def log_row(message: dict[str, Any], received_iso: str, received_sql: str) -> tuple[Any, ...]:
    """(message_id, type, name, user_id, anonymous_id, timestamp, original_timestamp, sent_at,
    received_at, payload): what `normalise_message` + `append_events` store for a demo message
    without sentAt (so the timestamp is the client's), without the validation."""
    stamp = message["timestamp"]
    kind = message["type"]
    name = message.get("event") if kind == "track" else None
    if kind in ("page", "screen"):
        name = message.get("name")
    payload = {**message, "originalTimestamp": stamp, "sentAt": None, "receivedAt": received_iso}
    when = _sql_time(stamp)
    return (
        message["messageId"],
        kind,
        name,
        message.get("userId"),
        message.get("anonymousId"),
        when,
        when,
        None,
        received_sql,
        orjson.dumps(payload).decode(),
    )


def reference_row(message: dict[str, Any]) -> tuple[Any, ...]:
    """The same through the real ingest code, for the sample check."""
    from tessera.ingest.messages import normalise_message

    row = normalise_message(message, source_id=1, received_at=RECEIVED)

    def sql(moment: datetime | None) -> str | None:
        return (
            None if moment is None else moment.replace(tzinfo=None).isoformat(" ", "microseconds")
        )

    return (
        row["message_id"],
        row["type"],
        row["name"],
        row["user_id"],
        row["anonymous_id"],
        sql(row["timestamp"]),
        sql(row["original_timestamp"]),
        sql(row["sent_at"]),
        sql(row["received_at"]),
        row["payload"],
    )


def produce_slice(task: tuple[int, int, int, str, int | None, str]) -> dict[str, Any]:  # noqa: PLR0915
    """Generate one slice of people and write its rows, with seqs relative to the slice
    (1, 2, ...), to a SQLite file of its own; the main process adds the offset."""
    index, seed, people, region, cap, directory = task
    from tessera.demo import generate

    gc.disable()  # millions of new objects and nothing to free until the slice is written
    started = time.perf_counter()
    dataset = generate(seed=seed, people=people, region=region)
    add_consent(dataset.messages)
    generated = time.perf_counter() - started
    keep_from: dict[int, int] = {}
    if cap is not None:  # each person's latest `cap` events
        totals = Counter(dataset.owners)
        keep_from = {owner: total - cap for owner, total in totals.items() if total > cap}
    seen: Counter[int] = Counter()
    received_iso = RECEIVED.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
    received_sql = _sql_time(received_iso)
    events: list[tuple[Any, ...]] = []
    first: dict[int, int] = {}  # person → rel seq of their first kept event
    last_at: dict[int, str] = {}
    counts: Counter[int] = Counter()
    traits: dict[tuple[int, str], tuple[Any, ...]] = {}
    consent: dict[tuple[int, str], tuple[Any, ...]] = {}
    mismatches = 0
    rel = 0
    position = -1
    for position, (message, owner) in enumerate(zip(dataset.messages, dataset.owners, strict=True)):
        seen[owner] += 1
        if seen[owner] <= keep_from.get(owner, 0):
            continue
        rel += 1
        row = log_row(message, received_iso, received_sql)
        if position % SAMPLE_EVERY == 0 and row != reference_row(message):
            mismatches += 1
        owner_rel = first.setdefault(owner, rel)
        events.append((rel, *row, owner_rel))
        counts[owner] += 1
        when = row[5]
        last_at[owner] = when
        # What ProfileBatch derives: identify traits, consent, then context.traits; latest wins.
        context = message.get("context") or {}
        found = message.get("traits") if message["type"] == "identify" else None
        for source in (found, context.get("traits")):
            if isinstance(source, dict):
                for name, value in source.items():
                    traits[(owner, name)] = (orjson.dumps(value).decode(), rel, row[0], when)
        preferences = (context.get("consent") or {}).get("categoryPreferences")
        if isinstance(preferences, dict):
            for category, granted in preferences.items():
                consent[(owner, category)] = (int(granted), rel, when)
    del dataset
    path = Path(directory) / f"slice-{index:05d}.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute(
            "CREATE TABLE ev (rel INTEGER PRIMARY KEY, message_id, type, name, user_id, "
            "anonymous_id, timestamp, original_timestamp, sent_at, received_at, payload, owner)"
        )
        db.execute("CREATE TABLE pf (owner INTEGER, created_at, updated_at, event_count)")
        db.execute("CREATE TABLE tr (owner INTEGER, name, value, seq INTEGER, message_id, at)")
        db.execute("CREATE TABLE cs (owner INTEGER, category, granted, seq INTEGER, at)")
        db.execute("BEGIN")
        db.executemany("INSERT INTO ev VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", events)
        db.executemany(
            "INSERT INTO pf VALUES (?, ?, ?, ?)",
            [
                (owner_rel, events[owner_rel - 1][6], last_at[owner], counts[owner])
                for owner, owner_rel in first.items()
            ],
        )
        db.executemany(
            "INSERT INTO tr VALUES (?, ?, ?, ?, ?, ?)",
            [(first[owner], name, *rest) for (owner, name), rest in traits.items()],
        )
        db.executemany(
            "INSERT INTO cs VALUES (?, ?, ?, ?, ?)",
            [(first[owner], category, *rest) for (owner, category), rest in consent.items()],
        )
        db.execute("COMMIT")
    finally:
        db.close()
    return {
        "index": index,
        "path": str(path),
        "events": rel,
        "people": len(first),
        "sampled": len(range(0, position + 1, SAMPLE_EVERY)),
        "mismatches": mismatches,
        "generate_s": generated,
        "total_s": time.perf_counter() - started,
        "rss_mib": rss_mib(),
    }


def build_store(
    database: Path, *, args: argparse.Namespace, settings: Settings, region: str
) -> dict[str, Any]:
    started = time.perf_counter()
    engine, source_id = fresh_store(database, settings, "demo")
    engine.dispose()
    directory = database.parent / "slices"
    directory.mkdir()
    slices = -(-args.profiles // args.slice_people)
    tasks = [
        (
            k,
            args.seed + 1000 + k,
            min(args.slice_people, args.profiles - k * args.slice_people),
            region,
            args.events_per_person,
            str(directory),
        )
        for k in range(slices)
    ]
    db = sqlite3.connect(database, isolation_level=None)
    base = 0
    people = sampled = mismatches = 0
    insert_s = 0.0
    generate_s = 0.0
    generator_rss = 0.0
    try:
        for pragma in (
            "journal_mode=OFF",
            "synchronous=OFF",
            "cache_size=-1000000",
            "temp_store=MEMORY",
        ):
            db.execute(f"PRAGMA {pragma}")
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.build_workers) as pool:
            for done in pool.imap(produce_slice, tasks):
                t = time.perf_counter()
                db.execute("ATTACH DATABASE ? AS s", (done["path"],))
                db.execute("BEGIN")
                db.execute(
                    "INSERT INTO events (seq, source_id, message_id, type, name, user_id, "
                    "anonymous_id, timestamp, original_timestamp, sent_at, received_at, payload) "
                    "SELECT rel + ?1, ?2, message_id, type, name, user_id, anonymous_id, "
                    "timestamp, original_timestamp, sent_at, received_at, payload "
                    "FROM s.ev ORDER BY rel",
                    (base, source_id),
                )
                db.execute(
                    "INSERT INTO event_profiles (seq, profile_id) "
                    "SELECT rel + ?1, 'prf_' || (owner + ?1) FROM s.ev ORDER BY rel",
                    (base,),
                )
                db.execute(
                    "INSERT INTO profiles (id, created_seq, merged_into, created_at, updated_at, "
                    "event_count) SELECT 'prf_' || (owner + ?1), owner + ?1, NULL, created_at, "
                    "updated_at, event_count FROM s.pf",
                    (base,),
                )
                db.execute(
                    "INSERT INTO profile_traits (profile_id, name, value, source_id, seq, "
                    "message_id, timestamp) SELECT 'prf_' || (owner + ?1), name, value, ?2, "
                    "seq + ?1, message_id, at FROM s.tr",
                    (base, source_id),
                )
                db.execute(
                    "INSERT INTO profile_consent (profile_id, category, granted, source_id, seq, "
                    "timestamp) SELECT 'prf_' || (owner + ?1), category, granted, ?2, seq + ?1, "
                    "at FROM s.cs",
                    (base, source_id),
                )
                db.execute("COMMIT")
                db.execute("DETACH DATABASE s")
                Path(done["path"]).unlink()
                base += done["events"]
                people += done["people"]
                sampled += done["sampled"]
                mismatches += done["mismatches"]
                generate_s += done["generate_s"]
                generator_rss = max(generator_rss, done["rss_mib"])
                insert_s += time.perf_counter() - t
                if done["index"] % 10 == 9 or done["index"] == slices - 1:
                    print(
                        f"  slice {done['index'] + 1}/{slices}: {people:,} people, {base:,} "
                        f"events, {time.perf_counter() - started:.0f} s",
                        flush=True,
                    )
        for stage in ("main", "derived"):  # both stages are level with the log
            db.execute(
                "INSERT OR REPLACE INTO processor_state (name, position, unattributed_events, "
                "updated_at, version, failed_batches) VALUES (?, ?, 0, ?, 0, 0)",
                (stage, base, _sql_time(received_iso_of(RECEIVED))),
            )
        db.execute("PRAGMA journal_mode=WAL")
        counts = {
            table: int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in (
                "events",
                "event_profiles",
                "profiles",
                "profile_traits",
                "profile_consent",
            )
        }
        head = int(db.execute("SELECT max(seq) FROM events").fetchone()[0] or 0)
    finally:
        db.close()
    shutil.rmtree(directory, ignore_errors=True)
    return {
        "build_s": time.perf_counter() - started,
        "insert_s": insert_s,
        "generate_cpu_s": generate_s,
        "slices": slices,
        "workers": args.build_workers,
        "people": people,
        "events": base,
        "head": head,
        "counts": counts,
        "sampled": sampled,
        "mismatches": mismatches,
        "bytes": disk_size(database),
        "rss_mib": rss_mib(),
        "generator_rss_mib": generator_rss,
    }


def received_iso_of(moment: datetime) -> str:
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
