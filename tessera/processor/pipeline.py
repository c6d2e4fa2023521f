"""The pipeline: applies a batch of events, in log order, through identity and profiles
(the main stage), and hands them on to the derived stage (`derive`), the batch stages
(`extensions`) and the outbox (`activation.fanout`), all on the caller's connection."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.activation import fanout as fanout_stage
from tessera.audiences.catalog import Catalog, catalog_version, load_catalog
from tessera.audiences.stage import (
    Resident,
)
from tessera.config import Settings
from tessera.identity import graph
from tessera.identity.batch import IdentityBatch, Merge
from tessera.identity.config import IdentityRules
from tessera.identity.extract import Identifier, alias_previous, extract_identifiers, group_id
from tessera.ingest.models import sources
from tessera.processor.derive import derive_batch
from tessera.processor.events import ParsedEvent, consent_stated_by, traits_set_by
from tessera.processor.extensions import AppliedBatch, BatchEvent, BatchStage, batch_stages
from tessera.profiles.batch import ProfileBatch
from tessera.profiles.policy import Provenance, TraitPolicies

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


class Pipeline:
    """Applies a batch of events to derived state on a connection; knows nothing of threads.

    The stages work on a per-batch working set (`IdentityBatch`, `ProfileBatch`): the state
    the batch touches is loaded in a few bulk queries, changed in memory event by event, and
    written back with executemany, instead of several statements per event.
    """

    @classmethod
    def from_settings(cls, settings: Settings, *, activate: bool = True) -> Pipeline:
        """The pipeline `tessera serve`, `worker`, `rebuild` and the benchmarks all run;
        raises ConfigurationError for bad identity rules or trait policies, or a batch
        stage that cannot start."""
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
            stages=batch_stages(settings),
        )

    def __init__(
        self,
        config: ProcessorConfig,
        *,
        clock: Callable[[], datetime] | None = None,
        activate: bool = True,
        stages: Sequence[BatchStage] = (),
    ) -> None:
        self.config = config
        # Capabilities' own state derived from each batch (`extensions.BatchStage`).
        self.stages = list(stages)
        # Off for `tessera rebuild`: re-deriving state must not send anything again.
        self.activate = activate
        self._activation: fanout_stage.ActivationCatalog | None = None
        self.rules = config.rules
        # The time windows and date conditions are judged by; tests fix it.
        self.clock = clock or (lambda: datetime.now(UTC))
        self._policies: TraitPolicies | None = None
        self._catalog: Catalog | None = None
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
        replay: bool = False,
    ) -> list[tuple[int, str | None]]:
        """Apply `rows` (events in log order); return each event's final profile.

        Everything is read and decided before the first write; `before_write` runs then
        (on SQLite it takes the write lock, so ingest waits only for the flush). With
        `fan_out`, the events, trait changes and audience changes go to the outbox too
        (not when an unmerge replays events that were sent already). Without `derive`,
        only the main stage: computed traits and audiences are left to `derive_rows`.
        `resident` lends the derived stage what it kept (the caller opened it). `replay`:
        the events were applied before (an unmerge), which the batch stages are told."""
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
        merged: list[tuple[str, str]] = []
        for item in batch:
            self._apply(item, graph_state, profile_state, merged)
        derived = (
            derive_batch(
                self,
                conn,
                batch,
                graph_state,
                profile_state,
                merged=merged,
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
        if self.stages:
            self._apply_stages(conn, batch, attributed, merged, graph_state, replay=replay)
        if fan_out:
            self._fan_out(conn, batch, attributed, graph_state, profile_state, changes=derive)
        return attributed

    def _apply_stages(
        self,
        conn: Connection,
        batch: list[ParsedEvent],
        attributed: list[tuple[int, str | None]],
        merged: list[tuple[str, str]],
        graph_state: IdentityBatch,
        *,
        replay: bool,
    ) -> None:
        """Hand the applied batch to the batch stages (`extensions`), in this transaction."""
        owners = dict(attributed)
        applied = AppliedBatch(
            events=[
                BatchEvent(
                    seq=item.row.seq,
                    message_id=item.row.message_id,
                    source_id=item.row.source_id,
                    type=item.payload.get("type", ""),
                    name=item.payload.get(
                        "event" if item.payload.get("type") == "track" else "name"
                    ),
                    timestamp=item.row.timestamp,
                    received_at=item.row.received_at,
                    payload=item.payload,
                    profile_id=owners.get(item.row.seq),
                )
                for item in batch
            ],
            merges=[(graph_state.resolve_id(survivor), absorbed) for survivor, absorbed in merged],
            now=self.clock(),
            replay=replay,
        )
        for stage in self.stages:
            stage.apply(conn, applied)

    def _fan_out(
        self,
        conn: Connection,
        batch: list[ParsedEvent],
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

    def _parse(self, row: Any) -> ParsedEvent:
        payload = orjson.loads(row.payload)
        return ParsedEvent(row, payload, extract_identifiers(payload, self.rules))

    def _alias_identifier(self, state: IdentityBatch, payload: dict[str, Any]) -> Identifier | None:
        previous = alias_previous(payload, self.rules)
        if previous is None:
            return None
        as_user = Identifier("user_id", previous)
        return as_user if state.owner(as_user) is not None else Identifier("anonymous_id", previous)

    def _apply(
        self,
        item: ParsedEvent,
        graph_state: IdentityBatch,
        profile_state: ProfileBatch,
        merged: list[tuple[str, str]],
    ) -> None:
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
            merged.append((profile_id, absorbed))
            profile_state.absorb(survivor=profile_id, absorbed=absorbed)
        graph_state.link(profile_id, resolution.new_identifiers, row.seq)

        provenance = Provenance(row.source_id, row.seq, row.message_id, row.timestamp)
        for set_traits in traits_set_by(payload):
            profile_state.apply_traits(profile_id, set_traits, provenance)
        preferences = consent_stated_by(payload)
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
