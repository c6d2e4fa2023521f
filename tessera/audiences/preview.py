"""Preview a draft audience: its size and a sample of members, without saving anything.

The draft is evaluated with what the store already holds (traits, consent, computed traits,
other audiences), a window of profiles at a time. Event conditions no computed trait
answers yet are computed on the fly from those profiles' own events.

Windows are equal slices of the profile-id key space, so each is one primary-key range,
and they are visited in a random order. Within the time budget a small store is walked
whole and the size is exact. Past the budget, the size is an estimate, marked so (`exact:
false`): every profile had the same chance to be in a visited window, so the share of
members among the evaluated profiles, times the profiles in all, is unbiased; `margin` is
its 95% half-width from the spread between windows (a ratio estimator over a simple random
sample of windows). That is what a marketer shaping a draft needs within two seconds at a
million profiles.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tessera.audiences.catalog import (
    READY,
    AudienceEntry,
    Catalog,
    load_catalog,
    parse_stored_trait,
)
from tessera.audiences.evaluate import ProfileFacts, evaluate
from tessera.audiences.language import AudienceDefinition
from tessera.audiences.service import parse_definition
from tessera.audiences.stage import DerivedState
from tessera.eventlog.models import events
from tessera.profiles.computed import ComputedTraitSpec
from tessera.profiles.models import event_profiles, profiles

DRAFT = "draft"
# Profiles a window holds on average. Each window is a few range queries (~1 ms of fixed
# cost) and ~50 us a profile; small windows make many clusters within the budget, so an
# estimate is spread over the whole store rather than a few stretches of it (profiles
# near each other in id were created near each other, and often behave alike).
WINDOW_PROFILES = 250
# With event conditions computed from the events, a profile costs its events' reads
# (~1 ms at a million profiles): smaller windows give more of them within the budget.
EVENT_WINDOW_PROFILES = 50
_LOWEST, _HIGHEST = "", "\x7f"  # below and above every profile id
TOTAL_SECONDS = 30.0
GRACE_SECONDS = 0.3  # how long the last window may run past the budget


class _OutOfTime(Exception):
    """A window ran past the deadline; its profiles are left out."""


_totals: weakref.WeakKeyDictionary[Engine, tuple[float, int]] = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class _Draft:
    """The draft as every window evaluates it."""

    catalog: Catalog
    definition: AudienceDefinition
    on_the_fly: list[ComputedTraitSpec]  # event conditions computed from the events
    now: datetime


@dataclasses.dataclass
class _Tally:
    """What the visited windows found: (profiles, members) per window, and a sample."""

    sample_size: int
    windows: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    sample: list[str] = dataclasses.field(default_factory=list)

    @property
    def evaluated(self) -> int:
        return sum(n for n, _ in self.windows)

    @property
    def members(self) -> int:
        return sum(m for _, m in self.windows)


def preview_audience(
    conn: Connection,
    *,
    document: Any,
    now: datetime,
    budget_seconds: float = 1.5,
    sample_size: int = 20,
    window_profiles: int | None = None,
) -> dict[str, Any]:
    """The draft `document`'s size and up to `sample_size` members at `now`: exact when
    every window fits in `budget_seconds`, else estimated with its 95% `margin`."""
    started = time.perf_counter()
    definition = parse_definition(conn, document, None)
    catalog, on_the_fly = _draft_catalog(conn, definition)
    draft = _Draft(catalog, definition, [catalog.traits[name] for name in on_the_fly], now)
    total = surviving_total(conn)
    if window_profiles is None:
        window_profiles = EVENT_WINDOW_PROFILES if on_the_fly else WINDOW_PROFILES
    windows = key_windows(max(1, math.ceil(total / max(1, window_profiles))))
    tally = _Tally(sample_size)
    # A window still reading past this is left out (unless none has found a profile yet):
    # reading a profile's events can take milliseconds when they are not in the cache.
    deadline = started + budget_seconds + GRACE_SECONDS
    for index in visiting_order(len(windows)):
        low, high = windows[index]
        try:
            found = _evaluate_window(
                conn, draft, low=low, high=high, tally=tally,
                deadline=deadline if tally.evaluated else None,
            )  # fmt: skip
        except _OutOfTime:
            break
        tally.windows.append(found)
        if time.perf_counter() - started > budget_seconds:
            break
    exact = len(tally.windows) == len(windows)
    evaluated, members = tally.evaluated, tally.members
    margin: int | None = 0
    if exact:
        size = members
    else:
        size = round(members * total / evaluated) if evaluated else 0
        margin = _margin(tally.windows, total, len(windows))
    return {
        "size": size,
        "exact": exact,
        "margin": margin,
        "evaluated_profiles": evaluated,
        "profiles": evaluated if exact else total,
        "sample": tally.sample,
        "computed_from_events": on_the_fly,
        "seconds": round(time.perf_counter() - started, 3),
    }


def surviving_total(conn: Connection) -> int:
    """Surviving profiles, as counted within the last `TOTAL_SECONDS` on this engine: the
    count reads every profile's index entry (~0.1-0.3 s at a million), and a marketer
    editing a draft previews it again and again."""
    engine = conn.engine
    now = time.monotonic()
    kept = _totals.get(engine)
    if kept is not None and now - kept[0] < TOTAL_SECONDS:
        return kept[1]
    total = int(
        conn.execute(
            sa.select(sa.func.count()).where(profiles.c.merged_into.is_(None))
        ).scalar_one()
    )
    _totals[engine] = (now, total)
    return total


def _draft_catalog(conn: Connection, definition: AudienceDefinition) -> tuple[Catalog, list[str]]:
    """The store's catalog with the draft in it; event conditions without a ready computed
    trait are added as ready ones, to be computed from the events (their names)."""
    catalog = load_catalog(conn)
    on_the_fly = []
    for trait in definition.implicit_traits:
        name = trait["name"]
        if catalog.trait_status.get(name) != READY:
            catalog.traits[name] = parse_stored_trait(
                name, orjson.dumps({k: v for k, v in trait.items() if k != "name"}).decode()
            )
            catalog.trait_status[name] = READY
            on_the_fly.append(name)
    draft = AudienceEntry(DRAFT, DRAFT, definition, READY, "")
    return dataclasses.replace(catalog, audiences={**catalog.audiences, DRAFT: draft}), on_the_fly


def key_windows(count: int) -> list[tuple[str, str]]:
    """`count` ranges (low, high] of profile ids that together hold every id, equally wide
    in key space: an id `prf_<digits>` sits at the fraction 0.<digits> (its first digit is
    not 0, so in [0.1, 1)), and digit strings compare as those fractions do."""
    places = len(str(count)) + 3
    cuts = [
        f"prf_{round(10**places * (0.1 + 0.9 * k / count)):0{places}d}" for k in range(1, count)
    ]
    bounds = [_LOWEST, *cuts, _HIGHEST]
    return list(itertools.pairwise(bounds))


def visiting_order(count: int) -> list[int]:
    """0 .. count-1, each once, in a random order that is the same for the same count (the
    same draft on the same store answers the same). Random rather than evenly spaced:
    profile behaviour can repeat along the ids (created in batches, by time of day), and
    evenly spaced windows could all fall on the same phase of it."""
    order = list(range(count))
    random.Random(count).shuffle(order)
    return order


def _evaluate_window(
    conn: Connection,
    draft: _Draft,
    *,
    low: str,
    high: str,
    tally: _Tally,
    deadline: float | None = None,
) -> tuple[int, int]:
    """Evaluate the surviving profiles with `low < id <= high`: (profiles, members).
    Raises _OutOfTime past `deadline` (time.perf_counter), before touching `tally`."""
    state = DerivedState(draft.catalog, draft.now)
    with _stopped_at(conn, deadline):
        ids = [
            row.id
            for row in conn.execute(
                sa.select(profiles.c.id, profiles.c.merged_into)
                .where(profiles.c.id > low, profiles.c.id <= high)
                .order_by(profiles.c.id)
            )
            if row.merged_into is None
        ]
        if not ids:
            return 0, 0
        state.load_range(conn, low, high, DRAFT, own=False)
        if draft.on_the_fly:
            _compute_from_events(conn, state, draft.on_the_fly, low=low, high=high)
    if deadline is not None and time.perf_counter() > deadline:
        raise _OutOfTime
    members = 0
    for pid in ids:
        facts = ProfileFacts(
            traits=state.traits.get(pid, {}),
            computed=state.values.get(pid, {}),
            audiences=state.members.get(pid, set()),
            consent=state.consent.get(pid, {}),
        )
        if evaluate(draft.definition, facts, draft.now).member:
            members += 1
            if len(tally.sample) < tally.sample_size:
                tally.sample.append(pid)
    return len(ids), members


@contextmanager
def _stopped_at(conn: Connection, deadline: float | None) -> Iterator[None]:
    """Stop the queries inside when `deadline` passes (_OutOfTime): a query reading events
    that are not in the page cache can take seconds, and checking between rows comes too
    late. SQLite: a progress handler interrupts the statement. PostgreSQL: a statement
    timeout, in a savepoint so that the cancelled statement leaves the transaction usable."""
    if deadline is None:
        yield
        return
    if conn.dialect.name == "sqlite":
        raw: Any = conn.connection.dbapi_connection
        raw.set_progress_handler(lambda: time.perf_counter() > deadline, 1000)
        try:
            yield
        except sa.exc.OperationalError as exc:
            if "interrupted" not in str(exc):
                raise
            raise _OutOfTime from exc
        finally:
            raw.set_progress_handler(None, 0)
        return
    left = max(1, round((deadline - time.perf_counter()) * 1000))
    savepoint = conn.begin_nested()
    try:
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {left}")
        yield
    except sa.exc.OperationalError as exc:
        savepoint.rollback()  # also undoes the SET LOCAL
        if "statement timeout" not in str(exc):
            raise
        raise _OutOfTime from exc
    except BaseException:
        savepoint.rollback()
        raise
    else:
        conn.exec_driver_sql("SET LOCAL statement_timeout TO DEFAULT")
        savepoint.commit()


def _compute_from_events(
    conn: Connection,
    state: DerivedState,
    specs: list[ComputedTraitSpec],
    *,
    low: str,
    high: str,
) -> None:
    """Feed the window's events that `specs` may count to their states. The log's `type`
    and `name` columns leave the others out in SQL, and payloads are parsed only for specs
    that read properties."""
    needs_payload = any(spec.reads_payload for spec in specs)
    columns = [
        event_profiles.c.profile_id,
        events.c.seq,
        # Raw: SQLite's text is parsed below, far cheaper than the type's result processing.
        sa.type_coerce(events.c.timestamp, sa.String).label("timestamp"),
        events.c.type,
        events.c.name,
    ]
    if needs_payload:
        columns.append(events.c.payload)
    query = (
        sa.select(*columns)
        .join(events, events.c.seq == event_profiles.c.seq)
        .where(event_profiles.c.profile_id > low, event_profiles.c.profile_id <= high)
    )
    if all(spec.event_type is not None for spec in specs):
        query = query.where(events.c.type.in_(sorted({str(spec.event_type) for spec in specs})))
    if all(spec.event_name is not None for spec in specs):
        query = query.where(events.c.name.in_(sorted({str(spec.event_name) for spec in specs})))
    for row in conn.execute(query):
        if needs_payload:
            payload = orjson.loads(row.payload)
        else:  # what `matches` reads: the type, and the name where the type has one
            payload = {"type": row.type, "event" if row.type == "track" else "name": row.name}
        at = row.timestamp
        if isinstance(at, str):  # SQLite: UTC wall time as text
            at = datetime.fromisoformat(at).replace(tzinfo=UTC)
        for spec in specs:
            state.observe_one(row.profile_id, spec.name, payload, at=at, seq=row.seq)
    state.settle_values()


def _margin(visited: list[tuple[int, int]], total: int, count: int) -> int | None:
    """The 95% half-width of the estimated size: the ratio estimator's variance over the
    `visited` windows (clusters) of `count`, corrected for the share visited. None with
    fewer than two windows that held profiles."""
    held = [(n, m) for n, m in visited if n]
    k = len(held)
    if k < 2:
        return None
    evaluated = sum(n for n, _ in held)
    ratio = sum(m for _, m in held) / evaluated
    spread_ = sum((m - ratio * n) ** 2 for n, m in held) / (k - 1)
    mean = evaluated / k
    variance = (1 - len(visited) / count) * spread_ / (k * mean * mean)
    # Student's t for k - 1 degrees of freedom, roughly (2.09 at 20 windows, 1.97 at 400):
    # over few windows the spread itself is uncertain.
    quantile = 1.96 + 2.4 / (k - 1)
    return round(quantile * total * math.sqrt(max(0.0, variance)))
