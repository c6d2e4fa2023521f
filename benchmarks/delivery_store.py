"""Delivery benchmark's stores: synthetic profiles, a webhook destination and a full outbox
of realistic track calls, queued by the processor's own `Fanout`."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from harness_store import (
    PROFILE_INSERTS,
    fresh_store,
    store_keyring,
    synthetic_rows,
)
from ingest_driver import event_templates

if TYPE_CHECKING:
    from tessera.config import Settings


# Frames of this benchmark's own wrappers, left out of the profile summaries.
PROFILE_IGNORE = ("benchmarks/delivery",)
OUTBOX_CHUNK = 5_000  # outbox rows a Fanout flush while filling
REFERENCE_BODIES = 8  # distinct request bodies the reference client cycles through


def _templates() -> list[dict[str, Any]]:
    """ingest.py's realistic track calls as dicts (messageId and timestamp are added)."""
    return [orjson.loads(template[:-1] + b"}") for template in event_templates()]


def build_store(
    database: Path,
    *,
    settings: Settings,
    region: str,
    people: int,
    messages: int,
    url: str,
    batch_size: int,
    concurrency: int,
    seed: int,
) -> dict[str, Any]:
    """A migrated store with `people` profiles, a webhook destination and `messages` pending
    outbox rows for it; returns what the reference and the checks need."""
    from tessera.activation import delivery_store
    from tessera.activation.delivery import tessera_message
    from tessera.activation.fanout import Fanout, load_catalog
    from tessera.activation.service import create_destination
    from tessera.ingest.messages import normalise_message

    started = time.perf_counter()
    engine, source_id = fresh_store(database, settings, "bench")
    rng = random.Random(f"delivery-{seed}")
    profile_rows, identity_rows, trait_rows = synthetic_rows(
        rng,
        first_index=0,
        count=people,
        base_seq=0,
        source_id=source_id,
        region=region,
        taken=set(),
    )
    config = {"url": url, "batch_size": batch_size, "concurrency": concurrency}
    with engine.begin() as conn:
        for statement, rows in zip(
            PROFILE_INSERTS, (profile_rows, identity_rows, trait_rows), strict=True
        ):
            conn.exec_driver_sql(statement, rows)
        destination = create_destination(
            conn,
            name="bench webhook",
            type="webhook",
            config=config,
            subscriptions=[{"type": "events", "event_types": ["track"]}],
            mapping={},
            consent_categories=[],
            enabled=True,
            actor="benchmark",
            keyring=store_keyring(database, settings),
        )
    pids = [row[0] for row in profile_rows]
    known: dict[str, dict[str, list[str]]] = {pid: {} for pid in pids}
    for kind, value, pid, _ in identity_rows:
        known[pid].setdefault(kind, []).append(value)
    traits: dict[str, dict[str, Any]] = {pid: {} for pid in pids}
    for pid, name, value, *_ in trait_rows:
        traits[pid][name] = orjson.loads(value)

    templates = _templates()
    tag = uuid.uuid4().hex[:6]
    now = datetime.now(UTC)
    max_age = timedelta(seconds=settings.delivery_max_age_seconds)
    sample: list[delivery_store.Pending] = []
    queued = 0
    with engine.begin() as conn:
        fanout = Fanout(load_catalog(conn), now=now, max_age=max_age)
        for i in range(messages):
            person, n = i % people, i // people
            pid = pids[person]
            template = templates[i % len(templates)]
            message = {
                **template,
                "userId": known[pid]["user_id"][0],
                "anonymousId": known[pid]["anonymous_id"][0],
                "messageId": f"{tag}-{person}-{n}",
                "timestamp": (now - timedelta(milliseconds=messages - i)).isoformat(),
                "properties": {**template["properties"], "n": n},
            }
            row = normalise_message(message, source_id=source_id, received_at=now)
            payload = row["payload"]
            fanout.event(
                person=pid,
                message_id=row["message_id"],
                payload=orjson.loads(payload),
                raw=payload,
            )
            if len(sample) < batch_size * REFERENCE_BODIES:
                sample.append(
                    delivery_store.Pending(
                        i + 1, pid, "event", row["message_id"], payload, now, 0, now + max_age
                    )
                )
            if len(fanout.rows) >= OUTBOX_CHUNK:
                queued += fanout.flush(conn)
        queued += fanout.flush(conn)
    engine.dispose()
    # The reference's bodies: Tessera's messages exactly as the webhook posts them.
    bodies: list[tuple[bytes, str | None, int]] = []
    shaped = [
        tessera_message(
            pending,
            delivery_store.Profile(
                pending.person, traits=traits[pending.person], identities=known[pending.person]
            ),
        )
        for pending in sample
    ]
    if batch_size == 1:
        bodies = [(orjson.dumps(body), body["messageId"], 1) for body in shaped]
    else:
        for start in range(0, len(shaped), batch_size):
            chunk = shaped[start : start + batch_size]
            bodies.append((orjson.dumps({"batch": chunk}), None, len(chunk)))
    return {
        "build_s": time.perf_counter() - started,
        "destination_id": destination["id"],
        "queued": queued,
        "tag": tag,
        "bodies": bodies,
        "message_bytes": sum(len(body) for body, _, _ in bodies) // max(1, len(shaped)),
    }
