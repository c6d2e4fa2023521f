"""The processor's later stages: computed traits and audience membership, for the profiles
one transaction touches. Four paths share it:

- a batch of events (`Pipeline.apply_batch`): matching events feed computed traits, merges
  fold the absorbed profile's values into the survivor, and only the audiences that the
  changed traits and computed traits can affect are re-evaluated (the catalog's index);
- time (`run_due`): the schedule holds, per profile, the moment a windowed trait or a date
  condition next changes, and that moment re-evaluates exactly what it concerns;
- a new or changed computed trait (`backfill_step`): replayed from the log in chunks;
- a new or changed audience (`build_step`): evaluated over every profile in id order.

Every entry and exit is written to the member table, the history, and the change stream
in the same transaction as the processor's position.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.audiences.catalog import BUILDING, READY, Catalog, dependents_closure
from tessera.audiences.evaluate import ProfileFacts, evaluate
from tessera.audiences.models import (
    audience_members,
    audiences,
    evaluation_schedule,
)
from tessera.audiences.sizes import count_members
from tessera.eventlog.models import events
from tessera.profiles import computed
from tessera.profiles.computed import TraitState
from tessera.profiles.models import (
    computed_trait_values,
    computed_traits,
    event_profiles,
    profile_consent,
    profile_traits,
    profiles,
)
from tessera.store.chunks import chunked
from tessera.store.upsert import bind_time, upsert

_NOTHING: dict[str, Any] = {}
_NO_MEMBERSHIPS: frozenset[str] = frozenset()
TRAIT_ITEM = "trait:"
AUDIENCE_ITEM = "audience:"


class DerivedState:
    """Computed-trait states and memberships of a set of profiles, loaded in bulk, changed
    in memory, written back in one flush."""

    def __init__(self, catalog: Catalog, now: datetime) -> None:
        self.catalog = catalog
        self.now = now
        # Per profile: computed-trait states by name, parsed when an event, a merge or time
        # needs them (`_stored` holds them as stored until then: most loaded rows are only
        # read for their values).
        self.states: dict[str, dict[str, TraitState]] = defaultdict(dict)
        self._stored: dict[str, dict[str, str]] = defaultdict(dict)
        # Decoded current values, by profile then name (what evaluation reads).
        self.values: dict[str, dict[str, Any]] = defaultdict(dict)
        self.members: dict[str, set[str]] = defaultdict(set)
        self.traits: dict[str, dict[str, Any]] = {}  # profile → decoded traits (as needed)
        self.consent: dict[str, dict[str, bool]] = {}
        self._loaded: set[str] = set()
        self._dirty_states: set[tuple[str, str]] = set()
        self._changed_values: dict[str, set[str]] = defaultdict(set)
        self._deleted_profiles: set[str] = set()
        self._entered: list[tuple[str, str, str]] = []  # (audience, profile, cause)
        self._exited: list[tuple[str, str, str]] = []
        self.schedule: dict[tuple[str, str], datetime | None] = {}
        # Schedule rows as loaded (profile → item → moment), so a flush writes only what
        # changed.
        self._scheduled: dict[str, dict[str, datetime]] = defaultdict(dict)

    # -- loading --------------------------------------------------------------------------

    def load(
        self, conn: Connection, profile_ids: Iterable[str], resident: Resident | None = None
    ) -> None:
        """The stored derived state of `profile_ids`: from `resident` where it holds a
        profile (moved out of it: the batch changes it in place), else from the store."""
        wanted = set(profile_ids) - self._loaded
        self._loaded.update(wanted)
        if resident is not None:
            wanted -= resident.lend(self, wanted)
        for chunk in chunked(sorted(wanted)):
            for row in conn.execute(
                sa.select(computed_trait_values).where(
                    computed_trait_values.c.profile_id.in_(chunk)
                )
            ):
                spec = self.catalog.traits.get(row.name)
                if spec is None:
                    continue
                self._stored[row.profile_id][row.name] = row.state
                self.values[row.profile_id][row.name] = (
                    orjson.loads(row.value) if row.value is not None else None
                )
            for row in conn.execute(
                sa.select(audience_members.c.audience_id, audience_members.c.profile_id).where(
                    audience_members.c.profile_id.in_(chunk)
                )
            ):
                self.members[row.profile_id].add(row.audience_id)
            for row in conn.execute(
                sa.select(
                    evaluation_schedule.c.profile_id,
                    evaluation_schedule.c.item,
                    evaluation_schedule.c.due_at,
                ).where(evaluation_schedule.c.profile_id.in_(chunk))
            ):
                self._scheduled[row.profile_id][row.item] = row.due_at

    def load_range(
        self, conn: Connection, low: str, high: str, audience_id: str, *, own: bool = True
    ) -> None:
        """Everything evaluating `audience_id` reads, for profiles with `low < id <= high`:
        range scans on the primary keys instead of long IN lists (a build reads them all).
        `own`: its own memberships too (a build compares with them; a draft has none)."""
        entry = self.catalog.audiences[audience_id]
        needs = entry.definition.dependencies
        audiences_read = needs.audiences | ({audience_id} if own else set())
        in_range = (
            computed_trait_values.c.profile_id > low,
            computed_trait_values.c.profile_id <= high,
        )
        if needs.computed:
            for row in conn.execute(
                sa.select(
                    computed_trait_values.c.profile_id,
                    computed_trait_values.c.name,
                    computed_trait_values.c.value,
                ).where(*in_range, computed_trait_values.c.name.in_(sorted(needs.computed)))
            ):
                self.values[row.profile_id][row.name] = (
                    orjson.loads(row.value) if row.value is not None else None
                )
        if audiences_read:
            for member in conn.execute(
                sa.select(audience_members.c.audience_id, audience_members.c.profile_id).where(
                    audience_members.c.profile_id > low,
                    audience_members.c.profile_id <= high,
                    audience_members.c.audience_id.in_(sorted(audiences_read)),
                )
            ):
                self.members[member.profile_id].add(member.audience_id)
        if needs.traits:
            for row in conn.execute(
                sa.select(
                    profile_traits.c.profile_id, profile_traits.c.name, profile_traits.c.value
                )
                .where(profile_traits.c.profile_id > low, profile_traits.c.profile_id <= high)
                .where(profile_traits.c.name.in_(sorted(needs.traits)))
            ):
                self.traits.setdefault(row.profile_id, {})[row.name] = orjson.loads(row.value)
        if needs.consent:
            for row in conn.execute(
                sa.select(
                    profile_consent.c.profile_id,
                    profile_consent.c.category,
                    profile_consent.c.granted,
                ).where(profile_consent.c.profile_id > low, profile_consent.c.profile_id <= high)
            ):
                self.consent.setdefault(row.profile_id, {})[row.category] = bool(row.granted)

    def load_traits(self, conn: Connection, profile_ids: Iterable[str]) -> None:
        """Profile traits from the store (the batch path passes its in-memory ones)."""
        names = sorted(self._trait_names())
        wanted = sorted(set(profile_ids) - set(self.traits))
        for pid in wanted:
            self.traits[pid] = {}
            self.consent[pid] = {}
        for chunk in chunked(wanted):
            for row in conn.execute(
                sa.select(
                    profile_consent.c.profile_id,
                    profile_consent.c.category,
                    profile_consent.c.granted,
                ).where(profile_consent.c.profile_id.in_(chunk))
            ):
                self.consent[row.profile_id][row.category] = bool(row.granted)
        if not names:
            return
        for chunk in chunked(wanted):
            for row in conn.execute(
                sa.select(
                    profile_traits.c.profile_id, profile_traits.c.name, profile_traits.c.value
                )
                .where(profile_traits.c.profile_id.in_(chunk))
                .where(profile_traits.c.name.in_(names))
            ):
                self.traits[row.profile_id][row.name] = orjson.loads(row.value)

    def _trait_names(self) -> set[str]:
        names: set[str] = set()
        for entry in self.catalog.audiences.values():
            names |= entry.definition.dependencies.traits
        return names

    def set_traits(self, profile_id: str, raw: dict[str, str]) -> None:
        """Traits as the profile batch holds them (name → JSON text); decodes what
        audiences read."""
        self.traits[profile_id] = {
            name: orjson.loads(raw[name]) for name in self._trait_names() if name in raw
        }

    # -- computed traits ------------------------------------------------------------------

    def state(self, profile_id: str, name: str) -> TraitState:
        mine = self.states[profile_id]
        found = mine.get(name)
        if found is None:
            spec = self.catalog.traits[name]
            stored = self._stored[profile_id].pop(name, None)
            found = (
                computed.new_state(spec) if stored is None else computed.load_state(spec, stored)
            )
            mine[name] = found
        return found

    def _has_state(self, profile_id: str, name: str) -> bool:
        return name in self.states[profile_id] or name in self._stored[profile_id]

    def observe(self, profile_id: str, payload: dict[str, Any], *, at: datetime, seq: int) -> None:
        """Feed one event to every ready trait its name may match."""
        name = payload.get("event") if payload.get("type") == "track" else payload.get("name")
        for spec in self.catalog.specs_for(name if isinstance(name, str) else None):
            self.observe_one(profile_id, spec.name, payload, at=at, seq=seq)

    def observe_one(
        self, profile_id: str, name: str, payload: dict[str, Any], *, at: datetime, seq: int
    ) -> None:
        spec = self.catalog.traits[name]
        if spec.matches(payload):
            computed.observe(
                spec, self.state(profile_id, name), at=at, seq=seq, value=spec.value_of(payload)
            )
            self._dirty_states.add((profile_id, name))

    def absorb(self, *, survivor: str, absorbed: str) -> None:
        """Two profiles were one person: fold values, and the absorbed one leaves every
        audience (its id now resolves to the survivor, which is evaluated afresh)."""
        for name in [*self.states[absorbed], *self._stored[absorbed]]:
            spec = self.catalog.traits[name]
            state = self.state(absorbed, name)
            mine = self.state(survivor, name) if self._has_state(survivor, name) else None
            self.states[survivor][name] = (
                state if mine is None else computed.merge_states(spec, mine, state)
            )
            self._dirty_states.add((survivor, name))
            del self.states[absorbed][name]
            self.values[absorbed].pop(name, None)
            self._dirty_states.discard((absorbed, name))
        for audience_id in sorted(self.members.pop(absorbed, set())):
            self._exited.append((audience_id, absorbed, f"merged into {survivor}"))
        self._deleted_profiles.add(absorbed)

    def refresh(self, profile_id: str, names: Iterable[str]) -> None:
        for name in names:
            if name in self.catalog.traits and self._has_state(profile_id, name):
                self._dirty_states.add((profile_id, name))

    def settle_values(self) -> None:
        """Recompute the values of changed states at `now`; note what changed and when
        time will next change each."""
        for key in sorted(self._dirty_states):
            pid, name = key
            spec = self.catalog.traits[name]
            state = self.state(pid, name)
            computed.expire(spec, state, self.now)
            value = computed.current_value(spec, state, self.now)
            mine = self.values[pid]
            if name not in mine or mine[name] != value:
                self._changed_values[pid].add(name)
            mine[name] = value
            self._plan(
                pid,
                TRAIT_ITEM + name,
                computed.next_change(spec, state, self.now) if spec.window is not None else None,
            )

    def _plan(self, profile_id: str, item: str, moment: datetime | None) -> None:
        """Schedule `item` for `profile_id` at `moment` (None: never). Most items never
        have a moment (an audience without date conditions): unless one is stored or
        planned, None is left out rather than planned as a no-op."""
        key = (profile_id, item)
        if moment is not None or key in self.schedule or item in self._scheduled[profile_id]:
            self.schedule[key] = moment

    # -- audiences ------------------------------------------------------------------------

    def affected(
        self, profile_id: str, *, traits: set[str], everything: bool, consent: bool = False
    ) -> set[str]:
        if everything:
            return set(self.catalog.audiences)
        return self.catalog.audiences_affected(
            traits=traits, computed=self._changed_values.get(profile_id, set()), consent=consent
        )

    def evaluate(
        self,
        profile_id: str,
        audience_ids: set[str],
        cause: str,
        *,
        ready_only: bool = True,
        follow: bool = True,
    ) -> None:
        """Re-evaluate `audience_ids` for one profile, then whatever references an audience
        whose membership changed, in dependency order."""
        pending = set(audience_ids)
        mine = self.members[profile_id]  # changed in place as memberships change
        facts = ProfileFacts(
            traits=self.traits.get(profile_id, {}),
            computed=self.values.get(profile_id, {}),
            audiences=mine,
            consent=self.consent.get(profile_id, {}),
        )
        for audience_id in self.catalog.order:
            if audience_id not in pending:
                continue
            entry = self.catalog.audiences[audience_id]
            if ready_only and not entry.live_for(profile_id):
                continue
            result = evaluate(entry.definition, facts, self.now)
            self._plan(profile_id, AUDIENCE_ITEM + audience_id, result.next_change)
            if result.member == (audience_id in mine):
                continue
            if result.member:
                mine.add(audience_id)
                self._entered.append((audience_id, profile_id, cause))
            else:
                mine.discard(audience_id)
                self._exited.append((audience_id, profile_id, cause))
            if follow:
                pending |= dependents_closure(self.catalog, {audience_id})

    def build_one(self, profile_id: str, audience_id: str) -> None:
        """`evaluate` for one profile and one building audience, without the dependency
        walk (its dependents are building too): the build's inner loop. A build starts with
        no schedule rows for the audience (the service clears them), so only a
        time-dependent result is scheduled."""
        mine = self.members.get(profile_id) or _NO_MEMBERSHIPS
        facts = ProfileFacts(
            traits=self.traits.get(profile_id) or _NOTHING,
            computed=self.values.get(profile_id) or _NOTHING,
            audiences=mine,
            consent=self.consent.get(profile_id) or _NOTHING,
        )
        result = evaluate(self.catalog.audiences[audience_id].definition, facts, self.now)
        if result.next_change is not None:
            self.schedule[(profile_id, AUDIENCE_ITEM + audience_id)] = result.next_change
        if result.member != (audience_id in mine):
            if result.member:
                self.members[profile_id].add(audience_id)
                self._entered.append((audience_id, profile_id, "definition"))
            else:
                self.members[profile_id].discard(audience_id)
                self._exited.append((audience_id, profile_id, "definition"))

    # -- writing --------------------------------------------------------------------------

    def flush(self, conn: Connection) -> None:
        now = self.now
        for chunk in chunked(sorted(self._deleted_profiles)):
            conn.execute(
                computed_trait_values.delete().where(computed_trait_values.c.profile_id.in_(chunk))
            )
            conn.execute(audience_members.delete().where(audience_members.c.profile_id.in_(chunk)))
            conn.execute(
                evaluation_schedule.delete().where(evaluation_schedule.c.profile_id.in_(chunk))
            )
        rows = [
            {
                "profile_id": pid,
                "name": name,
                "state": computed.dump_state(self.states[pid][name]),
                "value": orjson.dumps(self.values[pid].get(name)).decode(),
                "updated_at": now,
            }
            for pid, name in sorted(self._dirty_states)
            if pid not in self._deleted_profiles
        ]
        upsert(conn, computed_trait_values, rows, keys=("profile_id", "name"))
        self._flush_memberships(conn)
        self._flush_schedule(conn)

    def _flush_memberships(self, conn: Connection) -> None:
        # Plain tuples to the driver, as the event log's appends do: a batch may write
        # thousands of entries and exits.
        sqlite = conn.dialect.name == "sqlite"
        mark = "?" if sqlite else "%s"
        now = bind_time(conn, self.now)
        exits = list(self._exited)
        entries = [row for row in self._entered if row[1] not in self._deleted_profiles]
        if exits:
            conn.exec_driver_sql(
                f"DELETE FROM audience_members WHERE audience_id = {mark} AND profile_id = {mark}",
                [(aid, pid) for aid, pid, _ in exits],
            )
            conn.exec_driver_sql(
                f"UPDATE audience_history SET exited_at = {mark}, exited_cause = {mark} "
                f"WHERE audience_id = {mark} AND profile_id = {mark} AND exited_at IS NULL",
                [(now, cause[:300], aid, pid) for aid, pid, cause in exits],
            )
        if entries:
            conn.exec_driver_sql(
                "INSERT INTO audience_members (audience_id, profile_id, entered_at) "
                f"VALUES ({mark}, {mark}, {mark})",
                [(aid, pid, now) for aid, pid, _ in entries],
            )
            conn.exec_driver_sql(
                "INSERT INTO audience_history (audience_id, profile_id, entered_at, "
                f"entered_cause) VALUES ({mark}, {mark}, {mark}, {mark})",
                [(aid, pid, now, cause[:300]) for aid, pid, cause in entries],
            )
        changes = [("exited", row) for row in exits] + [("entered", row) for row in entries]
        if changes:
            conn.exec_driver_sql(
                'INSERT INTO audience_changes (audience_id, profile_id, "change", at, cause) '
                f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark})",
                [(aid, pid, change, now, cause[:300]) for change, (aid, pid, cause) in changes],
            )
        count_members(conn, exits=exits, entries=entries, now=self.now)

    def _flush_schedule(self, conn: Connection) -> None:
        keys = sorted(key for key in self.schedule if key[0] not in self._deleted_profiles)
        if not keys:
            return
        # Only rows that exist are deleted, and only moved moments written (a build's
        # profiles have no rows for the audience it builds: the service cleared them).
        gone = [
            {"p": pid, "i": item}
            for pid, item in keys
            if self.schedule[(pid, item)] is None and item in self._scheduled[pid]
        ]
        if gone:
            conn.execute(
                evaluation_schedule.delete().where(
                    evaluation_schedule.c.profile_id == sa.bindparam("p"),
                    evaluation_schedule.c.item == sa.bindparam("i"),
                ),
                gone,
            )
        due = [
            {"profile_id": pid, "item": item, "due_at": moment}
            for pid, item in keys
            if (moment := self.schedule[(pid, item)]) is not None
            and moment != self._scheduled[pid].get(item)
        ]
        upsert(conn, evaluation_schedule, due, keys=("profile_id", "item"))


@dataclass(slots=True)
class _Kept:
    """One profile's derived state as this process last committed it."""

    states: dict[str, TraitState]
    stored: dict[str, str]
    values: dict[str, Any]
    members: set[str]
    scheduled: dict[str, datetime]


class Resident:
    """The derived stage's working set, kept in memory between its transactions: the
    computed-trait states, values, memberships and schedule rows of the profiles it
    touched lately, as this process last committed them. A batch borrows its profiles
    from here instead of loading them (and parsing their states) again; they come back
    when its transaction commits (`commit`).

    Right only while no other writer changed derived state. Every writer holds the
    derived position's row, which bumps its version, so `open` drops everything unless
    the row still shows the version and position this process's last commit left; a
    catalog other than the one the states were kept under drops it too, and so does a
    transaction that fails (`clear`). Bounded: beyond `capacity` profiles, the least
    recently used go.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._mark: tuple[int, int] | None = None  # (version, position) after our commit
        self._catalog: Catalog | None = None
        self._lent: list[DerivedState] = []
        self.hits = 0  # profiles lent instead of loaded, since the start

    def __len__(self) -> int:
        return len(self._kept)

    def open(self, *, version: int, position: int) -> None:
        """A transaction holding the derived position begins, which found the row at
        `version` and `position`."""
        if (version, position) != self._mark:
            self._kept.clear()
        self._lent.clear()

    def lend(self, state: DerivedState, wanted: set[str]) -> set[str]:
        """Move the kept profiles among `wanted` into `state`; return which."""
        if state.catalog is not self._catalog:
            self._kept.clear()
            self._catalog = state.catalog
        if not any(lent is state for lent in self._lent):
            self._lent.append(state)
        found: set[str] = set()
        for pid in wanted:
            kept = self._kept.pop(pid, None)
            if kept is None:
                continue
            state.states[pid] = kept.states
            state._stored[pid] = kept.stored
            state.values[pid] = kept.values
            state.members[pid] = kept.members
            state._scheduled[pid] = kept.scheduled
            found.add(pid)
        self.hits += len(found)
        return found

    def commit(self, *, version: int, position: int, forget: Iterable[str] = ()) -> None:
        """The transaction committed, leaving the row at `version` and `position`: keep
        the profiles its batches loaded, as they wrote them; `forget` what else it
        changed."""
        for state in self._lent:
            self._keep(state)
        self._lent.clear()
        for pid in forget:
            self._kept.pop(pid, None)
        self._mark = (version, position)
        while len(self._kept) > self.capacity:
            self._kept.popitem(last=False)

    def clear(self) -> None:
        self._kept.clear()
        self._lent.clear()
        self._mark = None

    def _keep(self, state: DerivedState) -> None:
        for (pid, item), moment in state.schedule.items():
            if moment is None:
                state._scheduled[pid].pop(item, None)
            else:
                state._scheduled[pid][item] = moment
        touched = {pid for pid, _ in state.schedule} | {pid for pid, _ in state._dirty_states}
        touched |= state._loaded | set(state.states) | set(state.members)
        touched |= state._deleted_profiles
        for pid in touched:
            self._kept.pop(pid, None)
            if pid not in state._loaded or pid in state._deleted_profiles:
                continue  # written without being loaded whole, or gone
            self._kept[pid] = _Kept(
                state.states[pid],
                state._stored[pid],
                state.values[pid],
                state.members[pid],
                state._scheduled[pid],
            )


# -- the paths other than event batches ---------------------------------------------------


def run_due(
    conn: Connection,
    catalog: Catalog,
    now: datetime,
    *,
    limit: int = 5000,
    touched: set[str] | None = None,
    where: sa.ColumnElement[bool] | None = None,
) -> int:
    """Re-evaluate what time has changed: every schedule entry due by `now` (and matching
    `where`: one partition's profiles). The profiles re-evaluated are added to `touched`."""
    rows = list(
        conn.execute(
            sa.select(evaluation_schedule.c.profile_id, evaluation_schedule.c.item)
            .where(evaluation_schedule.c.due_at <= now, *([] if where is None else [where]))
            .order_by(evaluation_schedule.c.due_at)
            .limit(limit)
        )
    )
    if not rows:
        return 0
    items: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        items[row.profile_id].add(row.item)
    if touched is not None:
        touched.update(items)
    state = DerivedState(catalog, now)
    state.load(conn, items)
    state.load_traits(conn, items)
    for pid, due in items.items():
        state.refresh(pid, [item[len(TRAIT_ITEM) :] for item in due if item.startswith(TRAIT_ITEM)])
        for item in due:  # consumed; settle/evaluate write the next moment, if any
            state.schedule.setdefault((pid, item), None)
    state.settle_values()
    for pid, due in items.items():
        direct = {
            item[len(AUDIENCE_ITEM) :]
            for item in due
            if item.startswith(AUDIENCE_ITEM) and item[len(AUDIENCE_ITEM) :] in catalog.audiences
        }
        state.evaluate(pid, direct | state.affected(pid, traits=set(), everything=False), "time")
    state.flush(conn)
    return len(rows)


def next_due(conn: Connection, where: sa.ColumnElement[bool] | None = None) -> datetime | None:
    query = sa.select(sa.func.min(evaluation_schedule.c.due_at))
    return conn.execute(query if where is None else query.where(where)).scalar()


def backfill_step(
    conn: Connection,
    catalog: Catalog,
    names: list[str],
    *,
    position: int,
    now: datetime,
    chunk: int = 20_000,
) -> bool:
    """Replay the next chunk of the log (up to the processor's `position`) into the
    computed traits `names`, which must have been backfilled to the same point (one pass
    over the log serves every trait created together); True when they are ready."""
    through = catalog.backfilled_through[names[0]]
    upto = min(position, through + chunk)
    rows = list(
        conn.execute(
            sa.select(
                events.c.seq, events.c.timestamp, events.c.payload, event_profiles.c.profile_id
            )
            .join(event_profiles, event_profiles.c.seq == events.c.seq)
            .where(events.c.seq > through, events.c.seq <= upto)
            .where(event_profiles.c.profile_id.is_not(None))
            .where(*_may_match(catalog, names))
            .order_by(events.c.seq)
        )
    )
    state = DerivedState(catalog, now)
    state.load(conn, {row.profile_id for row in rows})
    for row in rows:
        payload = orjson.loads(row.payload)
        for name in names:
            state.observe_one(row.profile_id, name, payload, at=row.timestamp, seq=row.seq)
    state.settle_values()
    state.flush(conn)
    done = upto >= position
    conn.execute(
        computed_traits.update()
        .where(computed_traits.c.name.in_(names))
        .values(backfilled_through=upto, **({"status": READY} if done else {}))
    )
    return done


def surviving_profiles(conn: Connection, *, after: str, limit: int) -> tuple[list[str], str | None]:
    """The next `limit` profiles in id order after `after`: the surviving ones' ids, and the
    last id read (None at the end). Absorbed ones are skipped here rather than in SQL: with
    `merged_into IS NULL` in the query, SQLite picks that index and sorts every profile."""
    rows = list(
        conn.execute(
            sa.select(profiles.c.id, profiles.c.merged_into)
            .where(profiles.c.id > after)
            .order_by(profiles.c.id)
            .limit(limit)
        )
    )
    if not rows:
        return [], None
    return [row.id for row in rows if row.merged_into is None], rows[-1].id


def _may_match(catalog: Catalog, names: list[str]) -> list[sa.ColumnElement[bool]]:
    """SQL that leaves out the events none of `names` can match (by the log's `type` and
    `name` columns), so the backfill parses only candidates' payloads."""
    specs = [catalog.traits[name] for name in names]
    conditions: list[sa.ColumnElement[bool]] = []
    if all(spec.event_type is not None for spec in specs):
        conditions.append(events.c.type.in_(sorted({str(spec.event_type) for spec in specs})))
    if all(spec.event_name is not None for spec in specs):
        conditions.append(events.c.name.in_(sorted({str(spec.event_name) for spec in specs})))
    return conditions


def build_step(
    conn: Connection, catalog: Catalog, audience_id: str, *, now: datetime, chunk: int = 10_000
) -> bool:
    """Evaluate the next chunk of profiles (in id order) for a building audience; True when
    every profile has been evaluated and the audience is ready (real time from then on)."""
    entry = catalog.audiences[audience_id]
    needs = entry.definition.dependencies
    if any(catalog.trait_status.get(name) != READY for name in needs.computed):
        return False  # its computed traits are still backfilling
    if any(catalog.audiences[other].status != READY for other in needs.audiences):
        return False
    ids, last = surviving_profiles(conn, after=entry.build_cursor, limit=chunk)
    state = DerivedState(catalog, now)
    if last is not None:
        state.load_range(conn, entry.build_cursor, last, audience_id)
    for pid in ids:
        state.build_one(pid, audience_id)
    state.flush(conn)
    done = last is None
    values: dict[str, Any] = {
        "build_cursor": last or entry.build_cursor,
        "built_profiles": audiences.c.built_profiles + len(ids),
    }
    if not entry.build_cursor:  # the first step: what the progress is a fraction of
        values["build_total"] = conn.execute(
            sa.select(sa.func.count()).where(profiles.c.merged_into.is_(None))
        ).scalar_one()
    if done:
        values["status"] = READY
    conn.execute(audiences.update().where(audiences.c.id == audience_id).values(**values))
    return done


def pending_work(catalog: Catalog) -> tuple[list[str], list[str]]:
    """Computed traits to backfill and audiences to build, in a workable order."""
    traits = sorted(
        (name for name, status in catalog.trait_status.items() if status != READY),
        key=lambda name: (catalog.backfilled_through[name], name),
    )
    if traits:  # the furthest behind, with every trait backfilled to the same point
        traits = [
            name
            for name in traits
            if catalog.backfilled_through[name] == catalog.backfilled_through[traits[0]]
        ]
    building = [aid for aid in catalog.order if catalog.audiences[aid].status == BUILDING]
    return traits, building
