"""Preview a draft audience: its size and a sample of members, without saving anything.

The draft is evaluated over the profiles in id order, a range of profiles at a time, with
what the store already holds (traits, consent, computed traits, other audiences). Event
conditions no computed trait answers yet are computed on the fly from those profiles' own
events. Within the time budget the walk usually covers the whole store and the size is
exact; past it, the size is extrapolated from the profiles evaluated and marked so
(`exact: false`), which is what a marketer shaping a draft needs to see in two seconds.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.audiences.catalog import READY, AudienceEntry, load_catalog, parse_stored_trait
from tessera.audiences.evaluate import ProfileFacts, evaluate
from tessera.audiences.service import parse_definition
from tessera.audiences.stage import DerivedState, surviving_profiles
from tessera.eventlog.models import events
from tessera.profiles.models import event_profiles, profiles

DRAFT = "draft"


def preview_audience(
    conn: Connection,
    *,
    document: Any,
    now: datetime,
    budget_seconds: float = 1.5,
    sample_size: int = 20,
    chunk: int = 5000,
) -> dict[str, Any]:
    started = time.perf_counter()
    definition = parse_definition(conn, document, None)
    catalog = load_catalog(conn)
    # Event conditions without a ready computed trait are computed here, from the events.
    on_the_fly = []
    for trait in definition.implicit_traits:
        name = trait["name"]
        if catalog.trait_status.get(name) != READY:
            catalog.traits[name] = parse_stored_trait(
                name, orjson.dumps({k: v for k, v in trait.items() if k != "name"}).decode()
            )
            catalog.trait_status[name] = READY
            on_the_fly.append(name)
    catalog = dataclasses.replace(
        catalog,
        audiences={**catalog.audiences, DRAFT: AudienceEntry(DRAFT, DRAFT, definition, READY, "")},
    )
    total = conn.execute(
        sa.select(sa.func.count()).where(profiles.c.merged_into.is_(None))
    ).scalar_one()
    cursor, evaluated, size = "", 0, 0
    sample: list[str] = []
    exact = False
    while True:
        ids, last = surviving_profiles(conn, after=cursor, limit=chunk)
        if last is None:
            exact = True
            break
        state = DerivedState(catalog, now)
        state.load_range(conn, cursor, last, DRAFT)
        if on_the_fly:
            _compute_from_events(conn, state, on_the_fly, cursor, last)
        for pid in ids:
            facts = ProfileFacts(
                traits=state.traits.get(pid, {}),
                computed=state.values.get(pid, {}),
                audiences=state.members.get(pid, set()),
                consent=state.consent.get(pid, {}),
            )
            if evaluate(definition, facts, now).member:
                size += 1
                if len(sample) < sample_size:
                    sample.append(pid)
        evaluated += len(ids)
        cursor = last
        if time.perf_counter() - started > budget_seconds:
            break
    # Past the budget, the share of members among the profiles evaluated, scaled up.
    estimate = round(size * total / evaluated) if not exact and evaluated else size
    return {
        "size": estimate,
        "exact": exact,
        "evaluated_profiles": evaluated,
        "profiles": int(total),
        "sample": sample,
        "computed_from_events": on_the_fly,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _compute_from_events(
    conn: Connection, state: DerivedState, names: list[str], low: str, high: str
) -> None:
    rows = conn.execute(
        sa.select(event_profiles.c.profile_id, events.c.seq, events.c.timestamp, events.c.payload)
        .join(events, events.c.seq == event_profiles.c.seq)
        .where(event_profiles.c.profile_id > low, event_profiles.c.profile_id <= high)
    )
    for row in rows:
        payload = orjson.loads(row.payload)
        for name in names:
            state.observe_one(row.profile_id, name, payload, at=row.timestamp, seq=row.seq)
    state.settle_values()
