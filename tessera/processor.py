"""The processor: reads the event log in order and moves each event through two stages,
each with its own position in the log:

- **main** (`run_once`): identity, then profiles (traits, consent, accounts), and the
  events and trait changes destinations subscribe to;
- **derived** (`run_derived_once`, `run_maintenance`): computed traits and audiences, the
  audience changes destinations subscribe to, backfills, builds and time's re-evaluations.

Each stage's state and its position commit in one transaction, so a crash or an injected
failure never leaves an event half applied, applied twice, or skipped.

With `processor_derived = "inline"` (the default) `run_once` applies both stages in its
transaction while the derived position keeps step with the main one, so one processor
does everything. With `"separate"`, `run_once` applies only the main stage and a second
worker (`tessera worker --stage derived`) follows it, on its own core: the derived stage
reads the events the main stage has attributed (`event_profiles`, `profile_merges`) and
the profiles' current traits. Switching mode is safe at any time: an inline `run_once`
derives only while the positions are equal, and `run_derived_once` catches up first.

One processor applies a stage at a time: the stage's position row is locked for the
transaction (on PostgreSQL extra `tessera worker` processes wait their turn and take over
if one dies). Locks are always taken main first, then derived.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from tessera.activation import fanout as fanout_stage
from tessera.audiences.catalog import BUILDING, READY, Catalog, catalog_version, load_catalog
from tessera.audiences.models import audiences, evaluation_schedule
from tessera.audiences.stage import (
    DerivedState,
    Resident,
    backfill_step,
    build_step,
    next_due,
    pending_work,
    run_due,
)
from tessera.config import Settings
from tessera.errors import NotFound, TesseraError
from tessera.eventlog.models import events
from tessera.identity import graph
from tessera.identity.batch import IdentityBatch, Merge
from tessera.identity.config import IdentityRules
from tessera.identity.extract import Identifier, alias_previous, extract_identifiers, group_id
from tessera.identity.graph import ordered_pair
from tessera.identity.models import dropped_identifiers, identities, merge_blocks, profile_merges
from tessera.ingest.models import sources
from tessera.logs import event
from tessera.processor_models import (
    DERIVED,
    MAIN,
    PARTITION_NAMES,
    partition_name,
    partition_of,
    partition_sql,
    processor_state,
)
from tessera.profiles.batch import ProfileBatch
from tessera.profiles.models import (
    computed_trait_values,
    computed_traits,
    event_profiles,
    profile_accounts,
    profile_consent,
    profile_traits,
    profiles,
)
from tessera.profiles.policy import Provenance, TraitPolicies
from tessera.store.chunks import chunked
from tessera.store.upsert import upsert

log = logging.getLogger(__name__)


@dataclass
class ProcessorConfig:
    rules: IdentityRules
    trait_policies: dict[str, str]
    batch_events: int = 2000
    # "inline": `run_once` applies computed traits and audiences in its transaction;
    # "separate": `run_derived_once` does, in a worker of its own.
    derived: Literal["inline", "separate"] = "inline"
    # Partitions the derived stage runs in, by profile (1: none; more needs "separate").
    partitions: int = 1
    # Profiles whose derived state the stage keeps in memory between batches (0: none).
    resident_profiles: int = 50_000
    # Messages queued for destinations are retried this long before they turn dead letters.
    delivery_max_age_seconds: float = 4 * 3600


@dataclass
class Lag:
    events: int
    oldest_age_seconds: float | None
    position: int


@dataclass(slots=True)
class _Event:
    row: Any
    payload: dict[str, Any]
    idents: list[Identifier]


class Pipeline:
    """Applies a batch of events to derived state on a connection; knows nothing of threads.

    The stages work on a per-batch working set (`IdentityBatch`, `ProfileBatch`): the state
    the batch touches is loaded in a few bulk queries, changed in memory event by event, and
    written back with executemany, instead of several statements per event.
    """

    @classmethod
    def from_settings(cls, settings: Settings, *, activate: bool = True) -> Pipeline:
        """The pipeline `tessera serve`, `worker`, `rebuild` and the benchmarks all run;
        raises ConfigurationError for bad identity rules or trait policies."""
        TraitPolicies.parse(settings.trait_policies, {})  # refuse bad policies up front
        return cls(
            ProcessorConfig(
                rules=IdentityRules.from_settings(settings),
                trait_policies=settings.trait_policies,
                batch_events=settings.processor_batch_events,
                derived=settings.processor_derived,
                partitions=settings.processor_partitions,
                resident_profiles=settings.processor_resident_profiles,
                delivery_max_age_seconds=settings.delivery_max_age_seconds,
            ),
            activate=activate,
        )

    def __init__(
        self,
        config: ProcessorConfig,
        *,
        clock: Callable[[], datetime] | None = None,
        activate: bool = True,
    ) -> None:
        self.config = config
        # Off for `tessera rebuild`: re-deriving state must not send anything again.
        self.activate = activate
        self._activation: fanout_stage.ActivationCatalog | None = None
        self.rules = config.rules
        # The time windows and date conditions are judged by; tests fix it.
        self.clock = clock or (lambda: datetime.now(UTC))
        self._policies: TraitPolicies | None = None
        self._catalog: Catalog | None = None
        self._merges: list[tuple[str, str]] = []
        # The derived stage's working set between batches; only the processor's own loop
        # (`run_once`, `run_derived_once`, `run_maintenance`) uses it.
        self.resident = Resident(config.resident_profiles) if config.resident_profiles else None
        # One per partition of the derived stage this process applied (each partition's
        # row has its own version), sharing the capacity.
        self._partition_residents: dict[int, Resident] = {}
        # The version each partition's row was left at by this process's last claim.
        self.partition_marks: dict[int, int] = {}
        # Identifiers the rules left unlinked in the current batch, by reason; written
        # with the batch (`run_once`), so a rolled-back batch counts nothing.
        self.batch_drops: Counter[str] = Counter()

    def partition_resident(self, partition: int) -> Resident | None:
        """The resident working set of one partition of the derived stage."""
        if not self.config.resident_profiles:
            return None
        if partition not in self._partition_residents:
            share = max(1, self.config.resident_profiles // self.config.partitions)
            self._partition_residents[partition] = Resident(share)
        return self._partition_residents[partition]

    def policies(self, conn: Connection, source_ids: set[int]) -> TraitPolicies:
        if self._policies is None or not source_ids <= set(self._policies.source_names):
            names = {
                row.id: row.name for row in conn.execute(sa.select(sources.c.id, sources.c.name))
            }
            self._policies = TraitPolicies.parse(self.config.trait_policies, names)
        return self._policies

    def catalog(self, conn: Connection) -> Catalog:
        """Computed-trait and audience definitions, reparsed only when one changed."""
        version = catalog_version(conn)
        if self._catalog is None or self._catalog.version != version:
            self._catalog = load_catalog(conn)
        return self._catalog

    def activation(self, conn: Connection) -> fanout_stage.ActivationCatalog:
        """Enabled destinations' subscriptions, reparsed only when a destination changed."""
        version = fanout_stage.catalog_version(conn)
        if self._activation is None or self._activation.version != version:
            self._activation = fanout_stage.load_catalog(conn)
        return self._activation

    def fanout(self, conn: Connection) -> fanout_stage.Fanout | None:
        """Where this transaction's messages for destinations go (None: nowhere)."""
        if not self.activate:
            return None
        catalog = self.activation(conn)
        if not catalog.subscriptions:
            return None
        max_age = timedelta(seconds=self.config.delivery_max_age_seconds)
        return fanout_stage.Fanout(catalog, now=self.clock(), max_age=max_age)

    def fan_out_changes(self, conn: Connection) -> int:
        """Queue the audience changes committed since the last call (or skip them)."""
        fanout = self.fanout(conn)
        found = fanout_stage.fan_out_changes(conn, fanout)
        if fanout is not None:
            fanout.flush(conn)
        return found

    def apply_batch(
        self,
        conn: Connection,
        rows: list[Any],
        *,
        before_write: Callable[[], None] | None = None,
        evaluate_all: bool = False,
        fan_out: bool = False,
        derive: bool = True,
        resident: Resident | None = None,
    ) -> list[tuple[int, str | None]]:
        """Apply `rows` (events in log order); return each event's final profile.

        Everything is read and decided before the first write; `before_write` runs then
        (on SQLite it takes the write lock, so ingest waits only for the flush). With
        `fan_out`, the events, trait changes and audience changes go to the outbox too
        (not when an unmerge replays events that were sent already). Without `derive`,
        only the main stage: computed traits and audiences are left to `derive_rows`.
        `resident` lends the derived stage what it kept (the caller opened it)."""
        self.batch_drops = Counter()
        batch = [self._parse(row) for row in rows]
        graph_state = IdentityBatch()
        wanted = [ident for item in batch for ident in item.idents]
        for item in batch:
            previous = alias_previous(item.payload, self.rules)
            if previous is not None:
                wanted += [Identifier("user_id", previous), Identifier("anonymous_id", previous)]
        owners = graph_state.load(
            conn, wanted, may_create=[graph.profile_id_for(row.seq) for row in rows]
        )
        profile_state = ProfileBatch(self.policies(conn, {row.source_id for row in rows}))
        profile_state.load(conn, owners)
        self._merges = []
        for item in batch:
            self._apply(item, graph_state, profile_state)
        derived = (
            self._derive(
                conn,
                batch,
                graph_state,
                profile_state,
                evaluate_all=evaluate_all,
                resident=resident,
            )
            if derive
            else None
        )
        if before_write is not None:
            before_write()
        graph_state.flush(conn)
        profile_state.flush(conn, graph_state.resolve_id)
        if derived is not None:
            derived.flush(conn)
        attributed = [
            (seq, graph_state.resolve_id(pid) if pid else None)
            for seq, pid in profile_state.attribution
        ]
        if fan_out:
            self._fan_out(conn, batch, attributed, graph_state, profile_state, changes=derive)
        return attributed

    def _fan_out(
        self,
        conn: Connection,
        batch: list[_Event],
        attributed: list[tuple[int, str | None]],
        graph_state: IdentityBatch,
        profile_state: ProfileBatch,
        *,
        changes: bool,
    ) -> None:
        """Queue the batch's events and trait changes; with `changes` (the transaction
        holds the derived stage's position, the writer of audience changes), the audience
        changes committed since the last call too."""
        fanout = self.fanout(conn)
        if fanout is not None:
            if fanout.catalog.wants_events:
                owners = dict(attributed)
                for item in batch:
                    raw = item.row.payload
                    fanout.event(
                        person=owners.get(item.row.seq),
                        message_id=item.row.message_id,
                        payload=item.payload,
                        raw=raw if isinstance(raw, str) else bytes(raw).decode(),
                    )
            if fanout.catalog.wants_traits and profile_state.changed_traits:
                changed: dict[str, dict[str, Any]] = {}
                for pid, name in sorted(profile_state.changed_traits):
                    final = graph_state.resolve_id(pid)
                    value = profile_state.traits.get(final, {}).get(name)
                    if value is not None:
                        changed.setdefault(final, {})[name] = orjson.loads(value.value)
                last = batch[-1].row.seq
                for pid, traits in changed.items():
                    fanout.traits(person=pid, message_id=f"traits-{last}-{pid}", changed=traits)
        if changes:
            fanout_stage.fan_out_changes(conn, fanout)
        if fanout is not None:
            fanout.flush(conn)

    def _derive(
        self,
        conn: Connection,
        batch: list[_Event],
        graph_state: IdentityBatch,
        profile_state: ProfileBatch,
        *,
        evaluate_all: bool,
        resident: Resident | None,
    ) -> DerivedState | None:
        """Computed traits and audiences for the profiles this batch touched, from the
        main stage's working set (the inline mode)."""
        catalog = self.catalog(conn)
        if not catalog.traits and not catalog.audiences:
            return None
        final = graph_state.resolve_id
        owners = {seq: final(pid) for seq, pid in profile_state.attribution if pid is not None}
        merges = [(final(survivor), absorbed) for survivor, absorbed in self._merges]
        changed: dict[str, set[str]] = {}
        for pid, name in profile_state.changed_traits:
            changed.setdefault(final(pid), set()).add(name)

        def facts(derived: DerivedState, touched: set[str]) -> None:
            for pid in touched:
                derived.set_traits(
                    pid, {name: value.value for name, value in profile_state.traits[pid].items()}
                )
                derived.consent[pid] = {
                    category: choice.granted
                    for category, choice in profile_state.consent[pid].items()
                }

        return self._derive_events(
            conn,
            catalog,
            batch,
            owners=owners,
            merges=merges,
            fresh={final(pid) for pid in profile_state.created},
            changed=changed,
            consent_changed={final(pid) for pid, _ in profile_state.changed_consent},
            facts=facts,
            evaluate_all=evaluate_all,
            resident=resident,
        )

    def _derive_events(
        self,
        conn: Connection,
        catalog: Catalog,
        batch: list[_Event],
        *,
        owners: dict[int, str],
        merges: list[tuple[str, str]],
        fresh: set[str],
        changed: dict[str, set[str]],
        consent_changed: set[str],
        facts: Callable[[DerivedState, set[str]], None],
        evaluate_all: bool,
        resident: Resident | None,
        not_evaluated: set[str] | None = None,
    ) -> DerivedState:
        """The derived stage proper, whichever stage feeds it: `owners` maps each event's
        seq to its final profile, `merges` are (final survivor, absorbed) in log order,
        `fresh` profiles are evaluated for every audience, `changed` names the traits
        that may have changed per profile, and `facts` loads the touched profiles' traits
        and consent into the state."""
        derived = DerivedState(catalog, self.clock())
        touched: dict[str, str] = {}  # final profile → the message id of its last event
        for item in batch:
            pid = owners.get(item.row.seq)
            if pid is not None:
                touched[pid] = item.row.message_id
        derived.load(conn, set(touched) | {absorbed for _, absorbed in merges}, resident)
        fresh = set(fresh)
        for survivor, absorbed in merges:
            derived.absorb(survivor=survivor, absorbed=absorbed)
            fresh.add(survivor)
        for item in batch:
            pid = owners.get(item.row.seq)
            if pid is not None:
                derived.observe(pid, item.payload, at=item.row.timestamp, seq=item.row.seq)
        derived.settle_values()
        facts(derived, set(touched))
        for pid, message_id in touched.items():
            if not_evaluated and pid in not_evaluated:
                continue
            affected = derived.affected(
                pid,
                traits=changed.get(pid, set()),
                consent=pid in consent_changed,
                everything=evaluate_all or pid in fresh,
            )
            if affected:
                derived.evaluate(pid, affected, f"event:{message_id}")
        return derived

    def derive_rows(
        self, conn: Connection, rows: list[Any], resident: Resident | None = None
    ) -> DerivedState | None:
        """The derived stage for `rows` (events in log order) that the main stage applied
        already (the separate mode): attribution, merges and traits come from the store,
        as the main stage committed them. A profile is resolved to its current survivor,
        so events the main stage has since merged go straight to the merged profile.

        Traits are the profile's current ones, which may be ahead of `rows`; the traits an
        event names count as changed (a superset of what changed, which is always safe to
        re-evaluate), so every state converges to what the inline mode reaches."""
        catalog = self.catalog(conn)
        if not catalog.traits and not catalog.audiences:
            return None
        first, last = rows[0].seq, rows[-1].seq
        owners = {
            int(seq): str(pid)
            for seq, pid in conn.execute(
                sa.select(event_profiles.c.seq, event_profiles.c.profile_id).where(
                    event_profiles.c.seq >= first,
                    event_profiles.c.seq <= last,
                    event_profiles.c.profile_id.is_not(None),
                )
            )
        }
        merged = list(
            conn.execute(
                sa.select(
                    profile_merges.c.seq,
                    profile_merges.c.survivor_id,
                    profile_merges.c.absorbed_id,
                )
                .where(profile_merges.c.seq >= first, profile_merges.c.seq <= last)
                .order_by(profile_merges.c.seq, profile_merges.c.id)
            )
        )
        # The main stage keeps `event_profiles` pointing at survivors (a merge repoints the
        # absorbed profile's events in its transaction): the owners are final already.
        final = _current_survivors(conn, {row.survivor_id for row in merged}) if merged else {}
        return self._derive_logged(
            conn,
            catalog,
            rows,
            owners=owners,
            merges=[
                (final.get(row.survivor_id, row.survivor_id), row.absorbed_id) for row in merged
            ],
            merging={row.seq for row in merged},
            fresh={pid for seq, pid in owners.items() if pid == graph.profile_id_for(seq)},
            resident=resident,
        )

    def derive_partition_rows(
        self,
        conn: Connection,
        rows: list[Any],
        *,
        applied: dict[int, str],
        merged: list[Any],
        resident: Resident | None = None,
    ) -> DerivedState | None:
        """The derived stage for one partition's events `rows` (log order), each owned by
        the profile the main stage attributed it to when it applied it (`applied`, from
        `applied_to`, which a later merge does not move), and `merged`, the range's merges
        whose survivor is the partition's (the caller checked that each absorbed profile's
        partition has passed the merge). A merge within the range resolves the absorbed
        profile's events to its survivor, as the inline mode does; one after it leaves
        them with the absorbed profile, whose state its survivor's partition takes when it
        gets there."""
        catalog = self.catalog(conn)
        if not catalog.traits and not catalog.audiences:
            return None
        survivor_of = {row.absorbed_id: row.survivor_id for row in merged}

        def final(pid: str) -> str:
            while pid in survivor_of:
                pid = survivor_of[pid]
            return pid

        owners: dict[int, str] = {}
        fresh: set[str] = set()
        for seq, pid in applied.items():
            owners[seq] = final(pid)
            if pid == graph.profile_id_for(seq):
                fresh.add(final(pid))
        # A profile the main stage has merged since is not evaluated: its survivor's
        # partition takes its state and evaluates the survivor afresh.
        absorbed_later: set[str] = set()
        for chunk in chunked(sorted(set(owners.values()))):
            absorbed_later.update(
                conn.execute(
                    sa.select(profiles.c.id).where(
                        profiles.c.id.in_(chunk), profiles.c.merged_into.is_not(None)
                    )
                ).scalars()
            )
        return self._derive_logged(
            conn,
            catalog,
            rows,
            owners=owners,
            merges=[(final(row.survivor_id), row.absorbed_id) for row in merged],
            merging={row.seq for row in merged},
            fresh=fresh,
            resident=resident,
            not_evaluated=absorbed_later,
        )

    def _derive_logged(
        self,
        conn: Connection,
        catalog: Catalog,
        rows: list[Any],
        *,
        owners: dict[int, str],
        merges: list[tuple[str, str]],
        merging: set[int],
        fresh: set[str],
        resident: Resident | None,
        not_evaluated: set[str] | None = None,
    ) -> DerivedState:
        """The derived stage over events the main stage applied (separate mode, or a
        partition): `owners` maps the seqs to derive to their profiles, `merges` are
        (survivor, absorbed) in log order and `merging` their seqs."""
        changed: dict[str, set[str]] = {}
        consent_changed: set[str] = set()
        batch: list[_Event] = []
        any_name = None in catalog.traits_by_event
        any_payload = None in catalog.payload_events
        for row in rows:
            pid = owners.get(row.seq)
            if pid is None:
                continue
            # Most events feed no computed trait and carry no trait or consent: those are
            # neither parsed nor loaded, unless they created their profile or merged one
            # into it (the survivor must be loaded to absorb, and evaluated after). Those
            # whose traits read only their type and name are not parsed either.
            carries = row.type == "identify" or _may_carry_traits(row.payload)
            kept = any_name or row.name in catalog.traits_by_event
            if not (carries or kept or pid in fresh or row.seq in merging):
                continue
            if not (carries or any_payload or row.name in catalog.payload_events):
                name_field = "event" if row.type == "track" else "name"
                batch.append(_Event(row, {"type": row.type, name_field: row.name}, []))
                continue
            payload = orjson.loads(row.payload)
            batch.append(_Event(row, payload, []))
            if not carries:
                continue
            for traits in _traits_set_by(payload):
                changed.setdefault(pid, set()).update(traits)
            if _consent_stated_by(payload) is not None:
                consent_changed.add(pid)

        def facts(derived: DerivedState, touched: set[str]) -> None:
            derived.load_traits(conn, touched)

        return self._derive_events(
            conn,
            catalog,
            batch,
            owners=owners,
            merges=merges,
            fresh=fresh,
            changed=changed,
            consent_changed=consent_changed,
            facts=facts,
            evaluate_all=False,
            resident=resident,
            not_evaluated=not_evaluated,
        )

    def _parse(self, row: Any) -> _Event:
        payload = orjson.loads(row.payload)
        return _Event(row, payload, extract_identifiers(payload, self.rules))

    def _alias_identifier(self, state: IdentityBatch, payload: dict[str, Any]) -> Identifier | None:
        previous = alias_previous(payload, self.rules)
        if previous is None:
            return None
        as_user = Identifier("user_id", previous)
        return as_user if state.owner(as_user) is not None else Identifier("anonymous_id", previous)

    def _apply(self, item: _Event, graph_state: IdentityBatch, profile_state: ProfileBatch) -> None:
        row, payload = item.row, item.payload
        alias_of = self._alias_identifier(graph_state, payload)
        resolution = graph.resolve(
            graph_state, seq=row.seq, idents=item.idents, rules=self.rules, alias_of=alias_of
        )
        for dropped in resolution.dropped:
            self.batch_drops[dropped.reason] += 1
        profile_id = resolution.profile_id
        if profile_id is None:
            profile_state.attribute(row.seq, None)
            return
        if resolution.created:
            graph_state.create(profile_id)
            profile_state.create(profile_id, seq=row.seq, at=row.timestamp)
        for absorbed, ident, rule in resolution.merged:
            graph_state.merge(
                Merge(profile_id, absorbed, rule, [ident], row.seq, row.message_id, row.received_at)
            )
            self._merges.append((profile_id, absorbed))
            profile_state.absorb(survivor=profile_id, absorbed=absorbed)
        graph_state.link(profile_id, resolution.new_identifiers, row.seq)

        provenance = Provenance(row.source_id, row.seq, row.message_id, row.timestamp)
        for set_traits in _traits_set_by(payload):
            profile_state.apply_traits(profile_id, set_traits, provenance)
        preferences = _consent_stated_by(payload)
        if preferences is not None:
            profile_state.apply_consent(profile_id, preferences, provenance)
        account = group_id(payload, self.rules)
        if account is not None:
            raw_traits = payload.get("traits")
            traits: dict[str, Any] = raw_traits if isinstance(raw_traits, dict) else {}
            profile_state.link_account(
                profile_id, group_id=account, traits=traits, seq=row.seq, at=row.timestamp
            )
        profile_state.touch(profile_id, at=row.timestamp)
        profile_state.attribute(row.seq, profile_id)


def _traits_set_by(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The trait objects an event sets on its profile: identify's `traits`, then
    `context.traits` (any call)."""
    found: list[dict[str, Any]] = []
    traits = payload.get("traits")
    if payload.get("type") == "identify" and isinstance(traits, dict):
        found.append(traits)
    context = payload.get("context")
    context_traits = context.get("traits") if isinstance(context, dict) else None
    if isinstance(context_traits, dict) and context_traits:
        found.append(context_traits)
    return found


def _consent_stated_by(payload: dict[str, Any]) -> dict[str, Any] | None:
    """Segment's `context.consent.categoryPreferences`, when the event states them."""
    context = payload.get("context")
    consent = context.get("consent") if isinstance(context, dict) else None
    preferences = consent.get("categoryPreferences") if isinstance(consent, dict) else None
    return preferences if isinstance(preferences, dict) else None


def _may_carry_traits(raw: str | bytes) -> bool:
    """False when a raw payload certainly has no `traits` and no `consent` key."""
    if isinstance(raw, str):
        return '"traits"' in raw or '"consent"' in raw
    data = bytes(raw)
    return b'"traits"' in data or b'"consent"' in data


def _current_survivors(conn: Connection, profile_ids: set[str]) -> dict[str, str]:
    """Each profile's current survivor (`merged_into` is kept pointing at the last one)."""
    final: dict[str, str] = {}
    for chunk in chunked(sorted(profile_ids)):
        query = sa.select(profiles.c.id, profiles.c.merged_into).where(profiles.c.id.in_(chunk))
        for row in conn.execute(query):
            final[row.id] = row.merged_into or row.id
    return final


class _LogRow(NamedTuple):
    """An event as the stages read it (`_next_events`)."""

    seq: int
    source_id: int
    message_id: str
    timestamp: datetime
    received_at: datetime
    type: str
    name: str | None
    payload: str


_NEXT_EVENTS_SQLITE = (
    "SELECT seq, source_id, message_id, timestamp, received_at, type, name, payload "
    "FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
)


def _next_events(conn: Connection, *, after: int, upto: int, limit: int) -> list[_LogRow]:
    """Up to `limit` events in log order with `after < seq <= upto`. On SQLite the query
    goes to the driver as it is, and the two times are parsed here: SQLAlchemy's row and
    type processing took half of the read (~3.5 µs an event)."""
    if conn.dialect.name == "sqlite":
        fetched = conn.exec_driver_sql(_NEXT_EVENTS_SQLITE, (after, upto, limit)).fetchall()
        parse = datetime.fromisoformat
        return [
            _LogRow(
                seq,
                source_id,
                message_id,
                parse(timestamp).replace(tzinfo=UTC),
                parse(received_at).replace(tzinfo=UTC),
                kind,
                name,
                payload,
            )
            for seq, source_id, message_id, timestamp, received_at, kind, name, payload in fetched
        ]
    query = (
        sa.select(*(events.c[field] for field in _LogRow._fields))
        .where(events.c.seq > after, events.c.seq <= upto)
        .order_by(events.c.seq)
        .limit(limit)
    )
    return [_LogRow(*row) for row in conn.execute(query)]


def _event_columns() -> sa.Select[Any]:
    return sa.select(
        events.c.seq,
        events.c.source_id,
        events.c.message_id,
        events.c.timestamp,
        events.c.received_at,
        events.c.payload,
    )


_NO_END = 2**63 - 1  # the largest seq either backend holds


class PositionMoved(TesseraError):
    """Another processor applied the batch first (SQLite's optimistic claim); retry."""


class LayoutChanged(PositionMoved):
    """The derived stage runs in another number of partitions than this process's
    setting: `ensure_layout` levels them and lays out this process's."""


@dataclass
class _Claim:
    name: str
    position: int
    unattributed: int
    version: int  # the row's version; once `locked`, the one this transaction leaves
    locked: bool
    partitions: int = 1  # on the derived row: the partitions the stage runs in

    @property
    def seen(self) -> int:
        """The version the row had before this transaction bumped it."""
        return self.version - 1 if self.locked else self.version


def _claim(conn: Connection, name: str, *, lock: bool) -> _Claim:
    """Read this processor's position; with `lock`, hold its row for the transaction.

    PostgreSQL locks at once: processors take turns, and row locks do not block ingest.
    SQLite has one write lock for the whole file, and holding it while a batch is parsed
    and resolved stalls every ingest commit behind it; there the claim is optimistic: the
    position is read without a lock, and `_confirm` takes the lock just before the flush,
    refusing the batch if another processor moved the position meanwhile.
    """
    now = datetime.now(UTC)
    if lock:
        hold = (
            sa.update(processor_state)
            .where(processor_state.c.name == name)
            .values(updated_at=now, version=processor_state.c.version + 1)
        )
        if conn.execute(hold).rowcount == 0:
            # A new store: another process may be creating the row at this moment too
            # (a plain INSERT then failed on the key), so create it if absent, then hold.
            module: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
            conn.execute(
                module.insert(processor_state)
                .values(name=name, position=0, unattributed_events=0, version=0, updated_at=now)
                .on_conflict_do_nothing()
            )
            conn.execute(hold)
    row = conn.execute(
        sa.select(
            processor_state.c.position,
            processor_state.c.unattributed_events,
            processor_state.c.version,
            processor_state.c.partitions,
        ).where(processor_state.c.name == name)
    ).first()
    if row is None:
        return _Claim(name, 0, 0, -1, locked=False)
    return _Claim(
        name,
        int(row.position),
        int(row.unattributed_events),
        int(row.version),
        lock,
        int(row.partitions),
    )


def _confirm(conn: Connection, claim: _Claim, *, bump: bool = True) -> None:
    """Take the position's row (SQLite: the write lock) unless already held; raise
    PositionMoved if another processor changed it since `claim` was read. Without `bump`
    the row is left as it was (a partition held for a merge: see `_try_partition`)."""
    if claim.locked:
        return
    now = datetime.now(UTC)
    if claim.version < 0:
        inserted = conn.execute(
            sqlite.insert(processor_state)
            .values(name=claim.name, position=0, unattributed_events=0, version=0, updated_at=now)
            .on_conflict_do_nothing()
        )
        moved = inserted.rowcount != 1
    else:
        updated = conn.execute(
            sa.update(processor_state)
            .where(
                processor_state.c.name == claim.name,
                processor_state.c.version == claim.version,
            )
            .values(
                {"updated_at": now, "version": claim.version + 1}
                if bump
                else {"version": claim.version}
            )
        )
        moved = updated.rowcount != 1
    if moved:
        raise PositionMoved(f"processor {claim.name!r} moved on; the batch is retried")
    if bump:
        claim.version += 1
    claim.locked = True


def _lock_position(conn: Connection, name: str) -> _Claim:
    """Hold this processor's position for the transaction (unmerge, rebuild, failures)."""
    return _claim(conn, name, lock=True)


def run_once(
    engine: Engine, pipeline: Pipeline, *, name: str = MAIN, limit: int | None = None
) -> int:
    """Apply the next batch of events through the main stage in one transaction, and
    through the derived stage too when it is inline and in step; return how many were
    applied."""
    limit = limit or pipeline.config.batch_events
    resident = pipeline.resident if name == MAIN else None
    with _dropped_on_failure(resident):
        applied, derived = _apply_next(engine, pipeline, name=name, limit=limit, resident=resident)
    if resident is not None and derived is not None:
        resident.commit(version=derived.version, position=derived.position)
    return applied


def _apply_next(
    engine: Engine, pipeline: Pipeline, *, name: str, limit: int, resident: Resident | None
) -> tuple[int, _Claim | None]:
    """`run_once`'s transaction: the events applied, and the derived position's claim
    when the derived stage went with them (inline and level)."""
    with engine.begin() as conn:
        lock = conn.dialect.name == "postgresql"
        claim = _claim(conn, name, lock=lock)
        rows = _next_events(conn, after=claim.position, upto=_NO_END, limit=limit)
        if not rows:
            return 0, None
        derived: _Claim | None = None
        if pipeline.config.derived == "inline" and name == MAIN:
            derived = _claim(conn, DERIVED, lock=lock)
            if derived.position != claim.position or derived.partitions != 1:
                # Behind (it ran separately; `run_derived_once` catches up), or left in
                # partitions (`ensure_layout` levels them first).
                derived = None
        if derived is None:
            resident = None
        elif resident is not None:
            resident.open(version=derived.seen, position=derived.position)

        def before_write() -> None:
            _confirm(conn, claim)
            if derived is not None:
                _confirm(conn, derived)

        attributed = pipeline.apply_batch(
            conn,
            rows,
            before_write=before_write,
            fan_out=True,
            derive=derived is not None,
            resident=resident,
        )
        missing = sum(1 for _, pid in attributed if pid is None)
        _count_drops(conn, pipeline.batch_drops)
        conn.execute(
            sa.update(processor_state)
            .where(processor_state.c.name == name)
            .values(position=rows[-1].seq, unattributed_events=claim.unattributed + missing)
        )
        if derived is not None:
            _set_position(conn, DERIVED, rows[-1].seq)
            derived.position = rows[-1].seq
        return len(rows), derived


@contextlib.contextmanager
def _dropped_on_failure(resident: Resident | None) -> Iterator[None]:
    """A transaction that fails (or is refused: `PositionMoved`) leaves the resident
    working set empty: what it lent may have been changed in memory."""
    try:
        yield
    except BaseException:
        if resident is not None:
            resident.clear()
        raise


def _set_position(conn: Connection, name: str, position: int) -> None:
    conn.execute(
        sa.update(processor_state).where(processor_state.c.name == name).values(position=position)
    )


def _position(conn: Connection, name: str) -> int:
    found = conn.execute(
        sa.select(processor_state.c.position).where(processor_state.c.name == name)
    ).scalar()
    return int(found or 0)


def run_derived_once(engine: Engine, pipeline: Pipeline, *, limit: int | None = None) -> int:
    """Apply the derived stage (computed traits, audiences, audience changes for
    destinations) to the next batch of events the main stage has applied; return how
    many events it moved past (0: it is level with the main stage)."""
    limit = limit or pipeline.config.batch_events
    resident = pipeline.resident
    with _dropped_on_failure(resident), engine.begin() as conn:
        claim = _claim(conn, DERIVED, lock=conn.dialect.name == "postgresql")
        if claim.partitions != 1:
            raise LayoutChanged("the derived stage runs in partitions; levelling them")
        before = claim.position
        if resident is not None:
            resident.open(version=claim.seen, position=claim.position)
        head = _position(conn, MAIN)
        if claim.position < head:
            _derive_range(conn, pipeline, claim, head=head, limit=limit, resident=resident)
    if resident is not None and claim.locked:  # PostgreSQL locks (and bumps) even when level
        resident.commit(version=claim.version, position=claim.position)
    return claim.position - before


def _derive_range(
    conn: Connection,
    pipeline: Pipeline,
    claim: _Claim,
    *,
    head: int,
    limit: int,
    resident: Resident | None = None,
) -> None:
    """Derive up to `limit` events after `claim`'s position (no further than `head`),
    commit nothing, and move `claim.position` on (the caller's transaction holds it)."""
    rows = _next_events(conn, after=claim.position, upto=head, limit=limit)
    derived = pipeline.derive_rows(conn, rows, resident) if rows else None
    _confirm(conn, claim)
    if derived is not None:
        derived.flush(conn)
    pipeline.fan_out_changes(conn)
    # No rows: the events up to `head` are gone (retention), nothing is left to derive.
    claim.position = rows[-1].seq if len(rows) == limit else head
    _set_position(conn, DERIVED, claim.position)


def catch_up_derived(conn: Connection, pipeline: Pipeline) -> int:
    """In the caller's transaction, which holds the main position: hold the derived one
    (and its partitions') and derive every event the main stage has applied (an unmerge
    needs both stages level before it re-derives a cluster). Returns the events derived."""
    head = _position(conn, MAIN)
    _hold_partitions(conn)
    claim = _lock_position(conn, DERIVED)
    if claim.partitions > 1:
        _level_partitions(conn, pipeline, claim.partitions, head)
        _set_position(conn, DERIVED, head)
        return head - claim.position
    derived = 0
    while claim.position < head:
        before = claim.position
        _derive_range(conn, pipeline, claim, head=head, limit=pipeline.config.batch_events)
        derived += claim.position - before
    return derived


def run_maintenance(engine: Engine, pipeline: Pipeline) -> int:
    """One step of the work that is not a batch of events, holding the derived position
    like a batch: a chunk of a computed trait's backfill (up to that position), or of an
    audience's build, and the re-evaluations time has made due. Returns how much was done
    (0: nothing waits).

    The stage's resident working set stays right across it: a backfill or a build drops
    it, and time's re-evaluations drop the profiles they touched."""
    if pipeline.config.partitions > 1:
        return _maintain_partitioned(engine, pipeline)
    resident = pipeline.resident
    touched: set[str] = set()
    with _dropped_on_failure(resident), engine.begin() as conn:
        claim = _claim(conn, DERIVED, lock=conn.dialect.name == "postgresql")
        if claim.partitions != 1:
            raise LayoutChanged("the derived stage runs in partitions; levelling them")
        if resident is not None:
            resident.open(version=claim.seen, position=claim.position)
        done, stepped = _maintain(conn, pipeline, claim, touched)
    if resident is not None and claim.locked:
        if stepped:
            resident.clear()
        else:
            resident.commit(version=claim.version, position=claim.position, forget=touched)
    return done


def _maintain(
    conn: Connection, pipeline: Pipeline, claim: _Claim, touched: set[str]
) -> tuple[int, bool]:
    """`run_maintenance`'s transaction: the work done, and whether it took a backfill or
    build step (which change profiles without listing them); time's re-evaluations add
    the profiles they touched to `touched`."""
    catalog = pipeline.catalog(conn)
    now = pipeline.clock()
    backfilling, building = pending_work(catalog)
    due = next_due(conn)
    changes = fanout_stage.changes_waiting(conn)
    if not backfilling and not building and (due is None or due > now) and not changes:
        return 0, False
    _confirm(conn, claim)
    done = 0
    if backfilling:
        backfill_step(conn, catalog, backfilling, position=claim.position, now=now)
        done += 1
    elif building:  # in dependency order; its computed traits are ready by now
        build_step(conn, catalog, building[0], now=now)
        done += 1
    # Reloaded: a backfill made traits ready and a build moved its cursor, and the
    # re-evaluations below must see a building audience as live for the profiles the
    # build has passed (`AudienceEntry.live_for`).
    stepped = done > 0
    done += run_due(conn, pipeline.catalog(conn), now, touched=touched)
    pipeline.fan_out_changes(conn)
    return done + (1 if changes else 0), stepped


# -- the derived stage in partitions ------------------------------------------------------
#
# With `partitions` > 1 the derived stage runs in that many partitions by profile
# (`partition_of`), each with its own position row ("derived.0", …) that one worker at a
# time holds. A partition derives the events the main stage attributed to its profiles
# when it applied them (`event_profiles.applied_to`, which merges leave alone), in log
# order, so one profile's events are applied in order, by one worker at a time.
#
# - **Merges across partitions.** A merge at seq `s` is the survivor's partition's to
#   apply: it takes the absorbed profile's state as that profile's partition committed
#   it, so it waits until that partition has passed `s - 1` (it derives up to the merge,
#   commits, and looks again), and holds that partition's row while it absorbs (nothing
#   there can write the absorbed profile meanwhile). Whichever partition waits on
#   another, the one waiting at the smallest seq can always go on, so none waits for ever.
# - **One writer of the change stream at a time.** A partition computes without the
#   stage's row ("derived") and holds it from its flush to its commit, so audience
#   changes commit in seq order, as the activation cursor needs. The stage row's
#   position is the smallest partition's (lag, readiness).
# - **Work over every profile** (a backfill, a build, an unmerge, a rebuild, a new
#   layout) holds every partition's row, then the stage's; a backfill and a new layout
#   first level the partitions (derive the ones behind up to the one furthest ahead).
#
# Lock order: main; partitions (a whole-stage holder takes them all, in name order, and
# waits; a partition takes its own and the ones it absorbs from without waiting); derived.


def _hold_partitions(conn: Connection) -> list[_Claim]:
    """Wait for and hold every partition's row (for work over the whole stage)."""
    names = list(
        conn.execute(
            sa.select(processor_state.c.name)
            .where(processor_state.c.name.like(PARTITION_NAMES))
            .order_by(processor_state.c.name)
        ).scalars()
    )
    return [_lock_position(conn, name) for name in names]


def _partition_positions(conn: Connection) -> dict[int, int]:
    return {
        int(name.rsplit(".", 1)[1]): int(position)
        for name, position in conn.execute(
            sa.select(processor_state.c.name, processor_state.c.position).where(
                processor_state.c.name.like(PARTITION_NAMES)
            )
        )
    }


def _try_partition(conn: Connection, partition: int, *, bump: bool = True) -> _Claim | None:
    """Hold one partition's row without waiting; None when another worker holds it (or
    it does not exist). SQLite: an optimistic claim, confirmed before the flush. Without
    `bump` (a merge holding the absorbed profile's partition) the row's version is left
    alone, so that partition keeps its resident working set: the profile absorbed has no
    events after the merge, and will not be lent again."""
    name = partition_name(partition)
    if conn.dialect.name != "postgresql":
        claim = _claim(conn, name, lock=False)
        return claim if claim.version >= 0 else None
    row = conn.execute(
        sa.select(processor_state.c.position, processor_state.c.version)
        .where(processor_state.c.name == name)
        .with_for_update(skip_locked=True)
    ).first()
    if row is None:
        return None
    if not bump:
        return _Claim(name, int(row.position), 0, int(row.version), locked=True)
    conn.execute(
        sa.update(processor_state)
        .where(processor_state.c.name == name)
        .values(updated_at=datetime.now(UTC), version=processor_state.c.version + 1)
    )
    return _Claim(name, int(row.position), 0, int(row.version) + 1, locked=True)


def _derive_partition(
    conn: Connection,
    pipeline: Pipeline,
    claim: _Claim,
    *,
    partitions: int,
    head: int,
    limit: int,
    resident: Resident | None,
    held: dict[int, _Claim] | None,
) -> DerivedState | None:
    """Derive the next events of `claim`'s partition (no further than `head`, and not
    past a merge whose absorbed profile's partition is behind it); move `claim.position`
    on. `held` collects the other partitions' rows taken for merges (None: the caller
    holds every partition already)."""
    partition = int(claim.name.rsplit(".", 1)[1])
    # The range: about `limit` of the partition's own events (every partition's share of
    # `limit` times as many), read by seq alone; only the partition's own are read whole.
    last = conn.execute(
        sa.select(events.c.seq)
        .where(events.c.seq > claim.position, events.c.seq <= head)
        .order_by(events.c.seq)
        .offset(limit * partitions - 1)
        .limit(1)
    ).scalar()
    end = head if last is None else int(last)
    mine: list[Any] = []
    positions = _partition_positions(conn) if held is None else {}
    for merge in conn.execute(
        sa.select(profile_merges.c.seq, profile_merges.c.survivor_id, profile_merges.c.absorbed_id)
        .where(profile_merges.c.seq > claim.position, profile_merges.c.seq <= end)
        .order_by(profile_merges.c.seq, profile_merges.c.id)
    ):
        if partition_of(merge.survivor_id, partitions) != partition:
            continue
        other = partition_of(merge.absorbed_id, partitions)
        if other != partition:
            if held is None:
                passed = positions.get(other, 0)
            else:
                if other not in held:
                    taken = _try_partition(conn, other, bump=False)
                    if taken is None:
                        end = merge.seq - 1
                        break
                    held[other] = taken
                passed = held[other].position
            if passed < merge.seq - 1:
                end = merge.seq - 1  # derive up to the merge; absorb once it has passed
                break
        mine.append(merge)
    if end <= claim.position:
        return None
    applied = sa.func.coalesce(event_profiles.c.applied_to, event_profiles.c.profile_id)
    found = conn.execute(
        sa.select(*(events.c[field] for field in _LogRow._fields), applied.label("owner"))
        .join(event_profiles, event_profiles.c.seq == events.c.seq)
        .where(
            events.c.seq > claim.position,
            events.c.seq <= end,
            event_profiles.c.profile_id.is_not(None),
            partition_sql(applied, partitions) == partition,
        )
        .order_by(events.c.seq)
    )
    rows: list[_LogRow] = []
    owners: dict[int, str] = {}
    for row in found:
        rows.append(_LogRow(*row[:-1]))
        owners[row.seq] = row.owner
    derived = (
        pipeline.derive_partition_rows(conn, rows, applied=owners, merged=mine, resident=resident)
        if rows
        else None
    )
    claim.position = end
    return derived


def _commit_partition(
    conn: Connection,
    pipeline: Pipeline,
    claim: _Claim,
    held: dict[int, _Claim],
    derived: DerivedState | None,
) -> None:
    """Write a partition's batch: confirm its rows, hold the stage's, refuse the batch if
    the layout or a definition changed meanwhile, then flush, fan out, and move the
    partition's position and the stage's."""
    _confirm(conn, claim)
    for other in held.values():
        _confirm(conn, other, bump=False)
    _hold_stage(conn, pipeline.config.partitions)
    if derived is not None:
        if catalog_version(conn) != derived.catalog.version:
            raise PositionMoved("a computed trait or audience changed; the batch is retried")
        derived.flush(conn)
    pipeline.fan_out_changes(conn)
    _set_position(conn, claim.name, claim.position)
    _set_stage_position(conn)


def _hold_stage(conn: Connection, partitions: int) -> _Claim:
    stage = _lock_position(conn, DERIVED)
    if stage.partitions != partitions:
        raise LayoutChanged(
            f"the derived stage runs in {stage.partitions} partitions, not {partitions}"
        )
    return stage


def _set_stage_position(conn: Connection) -> None:
    """The stage's position: the smallest partition's (every event up to it is derived)."""
    lowest = (
        sa.select(sa.func.min(processor_state.c.position))
        .where(processor_state.c.name.like(PARTITION_NAMES))
        .scalar_subquery()
    )
    conn.execute(
        sa.update(processor_state).where(processor_state.c.name == DERIVED).values(position=lowest)
    )


def _level_partitions(conn: Connection, pipeline: Pipeline, partitions: int, target: int) -> None:
    """Derive every partition up to `target`; the caller holds every partition's row."""
    while True:
        behind = {k: at for k, at in _partition_positions(conn).items() if at < target}
        if not behind:
            return
        moved = False
        for partition, at in sorted(behind.items()):
            claim = _Claim(partition_name(partition), at, 0, 0, locked=True)
            derived = _derive_partition(
                conn,
                pipeline,
                claim,
                partitions=partitions,
                head=target,
                limit=pipeline.config.batch_events,
                resident=None,
                held=None,
            )
            if claim.position > at:
                if derived is not None:
                    derived.flush(conn)
                _set_position(conn, claim.name, claim.position)
                moved = True
        if not moved:  # cannot happen: the partition waiting at the smallest seq can go on
            raise RuntimeError(f"the derived stage's partitions cannot reach {target}")


def run_partition_once(
    engine: Engine,
    pipeline: Pipeline,
    partition: int,
    *,
    limit: int | None = None,
    unless_claimed_within: float | None = None,
) -> int:
    """Apply one partition of the derived stage to its next batch of events, unless
    another worker holds it; return how many events it moved past (0: level with the
    main stage, held elsewhere, or waiting for another partition to pass a merge).

    With `unless_claimed_within` (seconds), a partition another worker claimed that
    recently is left to it: a worker keeps to its own partitions, whose resident working
    sets it has, and takes another's over only once that one has stopped."""
    limit = limit or pipeline.config.batch_events
    partitions = pipeline.config.partitions
    resident = pipeline.partition_resident(partition)
    name = partition_name(partition)
    with engine.connect() as conn:  # a cheap look first: an idle partition takes no lock
        marks = {
            row.name: row
            for row in conn.execute(
                sa.select(
                    processor_state.c.name,
                    processor_state.c.position,
                    processor_state.c.version,
                    processor_state.c.updated_at,
                ).where(processor_state.c.name.in_([MAIN, name]))
            )
        }
    if name not in marks:
        raise LayoutChanged(f"the derived stage has no partition {partition}")
    head = marks[MAIN].position if MAIN in marks else 0
    if marks[name].position >= head:
        return 0
    if (
        unless_claimed_within is not None
        and pipeline.partition_marks.get(partition) != marks[name].version
    ):
        claimed = marks[name].updated_at
        if claimed.tzinfo is None:
            claimed = claimed.replace(tzinfo=UTC)
        if (datetime.now(UTC) - claimed).total_seconds() < unless_claimed_within:
            return 0
    held: dict[int, _Claim] = {}
    with _dropped_on_failure(resident), engine.begin() as conn:
        claim = _try_partition(conn, partition)
        if claim is None:
            return 0
        before = claim.position
        if resident is not None:
            resident.open(version=claim.seen, position=claim.position)
        head = _position(conn, MAIN)
        if claim.position < head:
            derived = _derive_partition(
                conn,
                pipeline,
                claim,
                partitions=partitions,
                head=head,
                limit=limit,
                resident=resident,
                held=held,
            )
            if claim.position > before:
                _commit_partition(conn, pipeline, claim, held, derived)
    if claim.locked:
        pipeline.partition_marks[partition] = claim.version
        if resident is not None:
            resident.commit(version=claim.version, position=claim.position)
    return claim.position - before


def run_partition_due(engine: Engine, pipeline: Pipeline, partition: int) -> int:
    """Time's re-evaluations of one partition's profiles, holding its row like a batch
    (skipped while another worker holds it); returns how many were due."""
    partitions = pipeline.config.partitions
    resident = pipeline.partition_resident(partition)
    now = pipeline.clock()
    mine = partition_sql(evaluation_schedule.c.profile_id, partitions) == partition
    with engine.connect() as conn:
        due = next_due(conn, mine)
    if due is None or due > now:
        return 0
    touched: set[str] = set()
    with _dropped_on_failure(resident), engine.begin() as conn:
        claim = _try_partition(conn, partition)
        if claim is None:
            return 0
        if resident is not None:
            resident.open(version=claim.seen, position=claim.position)
        _confirm(conn, claim)
        _hold_stage(conn, partitions)
        done = run_due(conn, pipeline.catalog(conn), now, touched=touched, where=mine)
        pipeline.fan_out_changes(conn)
    if resident is not None:
        resident.commit(version=claim.version, position=claim.position, forget=touched)
    return done


def _maintain_partitioned(engine: Engine, pipeline: Pipeline) -> int:
    """`run_maintenance` for a stage in partitions: a backfill or build step holding every
    partition (a backfill levels them first, so it ends where every partition is), and
    audience changes other writers left for the fan-out. Time's re-evaluations are each
    partition's (`run_partition_due`)."""
    partitions = pipeline.config.partitions
    with engine.connect() as conn:
        backfilling, building = pending_work(pipeline.catalog(conn))
        changes = fanout_stage.changes_waiting(conn)
    if not backfilling and not building and not changes:
        return 0
    done = 0
    with engine.begin() as conn:
        if backfilling or building:
            _hold_partitions(conn)
        _hold_stage(conn, partitions)
        catalog = pipeline.catalog(conn)
        backfilling, building = pending_work(catalog)
        now = pipeline.clock()
        if backfilling:
            top = max(_partition_positions(conn).values())
            _level_partitions(conn, pipeline, partitions, top)
            _set_position(conn, DERIVED, top)
            backfill_step(conn, catalog, backfilling, position=top, now=now)
            done += 1
        elif building:
            build_step(conn, catalog, building[0], now=now)
            done += 1
        pipeline.fan_out_changes(conn)
    return done + (1 if changes else 0)


def ensure_layout(engine: Engine, pipeline: Pipeline) -> bool:
    """Lay the derived stage out in this process's number of partitions, if it runs in
    another: level the partitions it has (none behind the one furthest ahead), then
    replace them by this setting's, all at that position. True when it changed."""
    want = pipeline.config.partitions

    def laid_out(conn: Connection) -> bool:
        stage = conn.execute(
            sa.select(processor_state.c.partitions).where(processor_state.c.name == DERIVED)
        ).scalar()
        have = set(_partition_positions(conn))
        return (stage or 1) == want and have == (set(range(want)) if want > 1 else set())

    with engine.connect() as conn:
        if laid_out(conn):
            return False
    with engine.begin() as conn:
        _hold_partitions(conn)
        stage = _lock_position(conn, DERIVED)
        if laid_out(conn):
            return False
        positions = _partition_positions(conn)
        if stage.partitions > 1 and positions:
            position = max(positions.values())
            _level_partitions(conn, pipeline, stage.partitions, position)
        else:
            position = stage.position
        conn.execute(processor_state.delete().where(processor_state.c.name.like(PARTITION_NAMES)))
        now = datetime.now(UTC)
        if want > 1:
            conn.execute(
                processor_state.insert(),
                [
                    {
                        "name": partition_name(k),
                        "position": position,
                        "unattributed_events": 0,
                        "version": 0,
                        "updated_at": now,
                    }
                    for k in range(want)
                ],
            )
        conn.execute(
            sa.update(processor_state)
            .where(processor_state.c.name == DERIVED)
            .values(partitions=want, position=position)
        )
        event(log, logging.INFO, "processor.partitions", partitions=want, position=position)
    return True


def _count_drops(conn: Connection, drops: Counter[str]) -> None:
    if not drops:
        return
    module: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = module.insert(dropped_identifiers)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["reason"],
            set_={"count": dropped_identifiers.c.count + statement.excluded["count"]},
        ),
        [{"reason": reason[:64], "count": count} for reason, count in sorted(drops.items())],
    )


def dropped_counts(conn: Connection) -> dict[str, int]:
    """Identifiers the rules left unlinked since the last rebuild, by reason."""
    table = dropped_identifiers
    query = sa.select(table.c.reason, table.c["count"]).order_by(table.c.reason)
    return {reason: int(count) for reason, count in conn.execute(query)}


@dataclass
class Health:
    failed_batches: int
    last_error: str | None
    last_error_at: datetime | None


def health(conn: Connection, *, name: str = MAIN) -> Health:
    row = conn.execute(
        sa.select(
            processor_state.c.failed_batches,
            processor_state.c.last_error,
            processor_state.c.last_error_at,
        ).where(processor_state.c.name == name)
    ).first()
    if row is None:
        return Health(0, None, None)
    return Health(int(row.failed_batches), row.last_error, row.last_error_at)


def record_failure(engine: Engine, error: BaseException, *, name: str = MAIN) -> None:
    """Count a failed batch and keep its reason, in a transaction of its own (the batch's
    was rolled back). Best effort: when the store itself is down, the log line remains."""
    try:
        with engine.begin() as conn:
            _lock_position(conn, name)
            conn.execute(
                sa.update(processor_state)
                .where(processor_state.c.name == name)
                .values(
                    failed_batches=processor_state.c.failed_batches + 1,
                    last_error=repr(error)[:2000],
                    last_error_at=datetime.now(UTC),
                )
            )
    except sa.exc.SQLAlchemyError:
        pass


def lag(conn: Connection, *, name: str = MAIN) -> Lag:
    position = _position(conn, name)
    waiting = conn.execute(
        sa.select(sa.func.count(), sa.func.min(events.c.received_at)).where(events.c.seq > position)
    ).one()
    oldest = waiting[1]
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else None
    return Lag(events=int(waiting[0]), oldest_age_seconds=age, position=position)


DERIVED_TABLES = (
    "profile_consent",
    "computed_trait_values",
    "audience_members",
    "audience_history",
    "audience_changes",
    "evaluation_schedule",
    "identity_dropped_identifiers",
    "event_profiles",
    "profile_traits",
    "profile_accounts",
    "profile_merges",
    "identities",
    "profiles",
)


def reset_derived_state(conn: Connection) -> None:
    """Forget everything derived from the log; both stages then re-derive it from seq 0."""
    _lock_position(conn, MAIN)
    _hold_partitions(conn)
    _lock_position(conn, DERIVED)
    for table in DERIVED_TABLES:
        conn.execute(sa.text(f"DELETE FROM {table}"))
    conn.execute(
        sa.update(processor_state)
        .where(
            sa.or_(
                processor_state.c.name.in_([MAIN, DERIVED]),
                processor_state.c.name.like(PARTITION_NAMES),
            )
        )
        .values(position=0, unattributed_events=0)
    )
    fanout_stage.set_changes_position(conn, 0)  # the change stream starts again from 1
    # Computed traits follow the replay from the first event; audiences are evaluated over
    # every profile once it is done, as when they were created.
    conn.execute(computed_traits.update().values(status=READY, backfilled_through=0))
    conn.execute(audiences.update().values(status=BUILDING, build_cursor="", built_profiles=0))


STAGES = (MAIN, DERIVED)

# The cyclic collector's thresholds in a process that runs the processor. A batch
# allocates hundreds of thousands of objects that live until its transaction ends; with
# Python's default (700, 10, 10) they outlive a few young collections, are promoted, and
# set off full collections over everything every few batches: ~20% of either stage's CPU
# (benchmarks/RESULTS.md, 2026-11-22). Almost none of them are in cycles, so reference
# counting frees them when the batch ends and a rarer young collection loses nothing.
PROCESSING_GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc_for_processing() -> None:
    """Set up the collector for a process whose work is the processor's loop (`tessera
    worker`): what exists at start lives as long as the process and is frozen out of
    collections, and young collections run at `PROCESSING_GC_THRESHOLDS`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*PROCESSING_GC_THRESHOLDS)


# A worker keeping to its own partitions of the derived stage takes another's over once
# nobody has claimed it for this long (its worker died, or stopped).
TAKEOVER_SECONDS = 2.0


class Processor:
    """Runs the processor's stages in a background thread until stopped: `run_once` for
    the main stage, `run_derived_once` and `run_maintenance` for the derived one; `wake()`
    says events arrived."""

    def __init__(
        self,
        engine: Engine,
        pipeline: Pipeline,
        *,
        poll_seconds: float = 0.2,
        on_applied: Callable[[], None] | None = None,
        stages: tuple[str, ...] = STAGES,
        partitions: tuple[int, ...] = (),
    ) -> None:
        unknown = set(stages) - set(STAGES)
        if unknown or not stages:
            raise ValueError(f"stages must be some of {STAGES}, not {stages}")
        self._engine = engine
        # Called after every transaction that did something (the delivery worker in the
        # same process then looks at the outbox at once).
        self._on_applied = on_applied
        self._pipeline = pipeline
        self._stages = stages
        # A worker running only the derived stage is not woken by the main stage's
        # commits (another process): it looks more often.
        self._poll = poll_seconds if MAIN in stages else min(poll_seconds, 0.05)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.applied = 0
        self.failures = 0
        # Where this worker starts its round of the derived stage's partitions: workers
        # starting at different ones spread over them from the first round.
        self._first_partition = random.randrange(max(1, pipeline.config.partitions))
        # The derived stage's partitions this worker keeps to (none: any free one); it
        # takes another's only once no worker has claimed it for `TAKEOVER_SECONDS`.
        self._own = set(partitions)

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="processor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _steps(self) -> list[tuple[str, str, Callable[[], int]]]:
        engine, pipeline = self._engine, self._pipeline
        steps: list[tuple[str, str, Callable[[], int]]] = []
        if MAIN in self._stages:
            steps.append((MAIN, "processor.batch_failed", lambda: run_once(engine, pipeline)))
        partitions = pipeline.config.partitions
        if DERIVED in self._stages and partitions > 1:
            # Every partition in turn: those another worker holds are skipped, so workers
            # share the partitions and one takes over a dead one's at once.
            start = self._first_partition
            for k in [*range(start, partitions), *range(start)]:
                takeover = TAKEOVER_SECONDS if self._own and k not in self._own else None
                batch = functools.partial(
                    run_partition_once, engine, pipeline, k, unless_claimed_within=takeover
                )
                due = functools.partial(run_partition_due, engine, pipeline, k)
                steps.append((DERIVED, "processor.batch_failed", batch))
                steps.append((DERIVED, "processor.maintenance_failed", due))
            steps.append(
                (DERIVED, "processor.maintenance_failed", lambda: run_maintenance(engine, pipeline))
            )
        elif DERIVED in self._stages:
            steps.append(
                (DERIVED, "processor.batch_failed", lambda: run_derived_once(engine, pipeline))
            )
            steps.append(
                (
                    DERIVED,
                    "processor.maintenance_failed",
                    lambda: run_maintenance(engine, pipeline),
                )
            )
        return steps

    def _run(self) -> None:
        backoff = self._poll
        steps = self._steps()
        while not self._stop.is_set():
            done = 0
            failed = False
            for stage, failure, step in steps:
                try:
                    applied = step()
                except LayoutChanged:
                    done += 1  # another layout: this process's setting takes over
                    try:
                        ensure_layout(self._engine, self._pipeline)
                    except Exception as exc:
                        self.failures += 1
                        event(log, logging.ERROR, failure, stage=stage, error=repr(exc)[:500])
                        failed = True
                        break
                    continue
                except PositionMoved:
                    done += 1  # another processor moved on: look again at once
                    continue
                except Exception as exc:
                    self.failures += 1
                    event(log, logging.ERROR, failure, stage=stage, error=repr(exc)[:500])
                    record_failure(self._engine, exc, name=stage)
                    failed = True
                    break
                if stage == MAIN:
                    self.applied += applied
                done += applied
            if failed:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = self._poll
            if done and self._on_applied is not None:
                self._on_applied()
            if not done:
                self._wake.wait(self._poll)
                self._wake.clear()


def wait_until_caught_up(engine: Engine, *, timeout: float = 30.0) -> None:
    """Block until both stages have applied every event in the log (tests, demo)."""
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            if lag(conn).events == 0 and lag(conn, name=DERIVED).events == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError("the processor did not catch up")
        time.sleep(0.02)


@dataclass
class Unmerged:
    survivor_id: str
    restored_id: str
    identifiers: list[str]
    events_replayed: int


def unmerge(
    conn: Connection, pipeline: Pipeline, *, profile_id: str, merge_id: int, actor: str
) -> Unmerged:
    """Split a wrong merge: block the pair, then re-derive the cluster from its events.

    Runs in the caller's transaction, holding both stages' positions so no batch runs
    meanwhile (a derived stage running separately is first brought level with the main
    one, so the replay below derives each event once). The cluster's derived state is
    deleted and its events replayed in log order through the same pipeline; the block
    keeps the pair apart, so the absorbed profile comes back under its old id (ids derive
    from the events that created them). `tessera rebuild` keeps blocks, so it reaches the
    same split.
    """
    _lock_position(conn, MAIN)
    catch_up_derived(conn, pipeline)
    merge = conn.execute(sa.select(profile_merges).where(profile_merges.c.id == merge_id)).first()
    cluster = [profile_id] + [
        pid
        for (pid,) in conn.execute(
            sa.select(profiles.c.id).where(profiles.c.merged_into == profile_id)
        )
    ]
    if merge is None or merge.survivor_id not in cluster or merge.absorbed_id not in cluster:
        raise NotFound(f"profile {profile_id!r} has no merge {merge_id}; GET its /merges")
    pair = ordered_pair(merge.survivor_id, merge.absorbed_id)
    upsert(
        conn,
        merge_blocks,
        [
            {
                "profile_a": pair[0],
                "profile_b": pair[1],
                "identifier": ", ".join(orjson.loads(merge.identifiers)),
                "created_by": actor,
                "created_at": datetime.now(UTC),
            }
        ],
        keys=("profile_a", "profile_b"),
    )
    seqs = [
        seq
        for (seq,) in conn.execute(
            sa.select(event_profiles.c.seq)
            .where(event_profiles.c.profile_id == profile_id)
            .order_by(event_profiles.c.seq)
        )
    ]
    conn.execute(identities.delete().where(identities.c.profile_id == profile_id))
    for table in (
        profile_traits,
        profile_accounts,
        profile_consent,
        computed_trait_values,
        evaluation_schedule,
    ):
        conn.execute(table.delete().where(table.c.profile_id.in_(cluster)))
    conn.execute(
        profile_merges.delete().where(
            sa.or_(
                profile_merges.c.survivor_id.in_(cluster), profile_merges.c.absorbed_id.in_(cluster)
            )
        )
    )
    conn.execute(profiles.delete().where(profiles.c.id.in_(cluster)))
    conn.execute(event_profiles.delete().where(event_profiles.c.profile_id == profile_id))
    replayed = 0
    for start in range(0, len(seqs), pipeline.config.batch_events):
        chunk = seqs[start : start + pipeline.config.batch_events]
        rows = list(
            conn.execute(_event_columns().where(events.c.seq.in_(chunk)).order_by(events.c.seq))
        )
        pipeline.apply_batch(conn, rows, evaluate_all=True)
        replayed += len(rows)
    pipeline.fan_out_changes(conn)  # entries and exits the split caused
    return Unmerged(
        survivor_id=merge.survivor_id,
        restored_id=merge.absorbed_id,
        identifiers=orjson.loads(merge.identifiers),
        events_replayed=replayed,
    )
