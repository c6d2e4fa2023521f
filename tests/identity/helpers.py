"""Write messages straight to the log and run the processor over them (no HTTP)."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tessera.eventlog import append_events
from tessera.identity.config import IdentityRules
from tessera.ingest.messages import normalise_message
from tessera.ingest.sources import create_source, get_source
from tessera.processor import Pipeline, ProcessorConfig, run_once
from tessera.profiles.views import get_profile, resolve_reference

_ids = count()


def source_id(engine: Engine, name: str = "web") -> int:
    with engine.begin() as conn:
        try:
            return get_source(conn, name=name).id
        except Exception:
            return create_source(conn, name=name).id


def ingest(engine: Engine, messages: list[dict[str, Any]], *, source: str = "web") -> None:
    sid = source_id(engine, source)
    now = datetime.now(UTC)
    rows = []
    for message in messages:
        with_id = {"messageId": f"m{next(_ids)}", **message}
        rows.append(normalise_message(with_id, source_id=sid, received_at=now))
    with engine.begin() as conn:
        append_events(conn, rows)


def pipeline(
    rules: IdentityRules | None = None, policies: dict[str, str] | None = None
) -> Pipeline:
    return Pipeline(ProcessorConfig(rules=rules or IdentityRules(), trait_policies=policies or {}))


def process(engine: Engine, pipe: Pipeline | None = None, *, limit: int | None = None) -> int:
    pipe = pipe or pipeline()
    total = 0
    while applied := run_once(engine, pipe, limit=limit):
        total += applied
    return total


def profile(engine: Engine, ref: str, rules: IdentityRules | None = None) -> dict[str, Any]:
    with engine.connect() as conn:
        return get_profile(conn, resolve_reference(conn, ref, rules or IdentityRules()))


def profile_id(engine: Engine, ref: str) -> str:
    with engine.connect() as conn:
        return resolve_reference(conn, ref, IdentityRules())


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """All derived state, in a comparable form (no wall-clock columns)."""
    queries = {
        "identities": "SELECT type, value, profile_id, first_seq FROM identities",
        "profiles": (
            "SELECT id, created_seq, merged_into, created_at, updated_at, event_count FROM profiles"
        ),
        "traits": "SELECT profile_id, name, value, source_id, seq FROM profile_traits",
        "accounts": "SELECT profile_id, group_id, traits, seq FROM profile_accounts",
        "merges": "SELECT survivor_id, absorbed_id, rule, identifiers, seq FROM profile_merges",
        "attribution": "SELECT seq, profile_id FROM event_profiles",
    }
    with engine.connect() as conn:
        return {
            name: sorted((tuple(row) for row in conn.execute(sa.text(sql))), key=repr)
            for name, sql in queries.items()
        }
