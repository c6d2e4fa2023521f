"""The schema batch stage: every applied batch tallied into the catalog (event types; their
property paths with types; trait and context paths) and the events per minute and source.

A batch is aggregated in dictionaries first (the paths of an object counted by
`Counter.update`, in C), then written with one upsert per table, one row per key, whatever
the batch's size. The catalog is bounded: `MAX_EVENT_NAMES` names, `MAX_FIELDS` paths per
event name (and for traits, and context); what the limits leave out is counted, never
silently lost. Which names and paths are already known is remembered between batches
(`KnownFields`), so a batch of known shapes reads nothing.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.processor.events import traits_set_by
from tessera.processor.extensions import AppliedBatch, BatchEvent
from tessera.schema.models import (
    minute_of,
    schema_dropped,
    schema_event_minutes,
    schema_event_types,
    schema_fields,
)
from tessera.schema.observe import MAX_TEXT, context_paths, flatten
from tessera.store.upsert import upsert

if TYPE_CHECKING:
    from tessera.config import Settings

EVENT, TRAIT, CONTEXT = "event", "trait", "context"
# Distinct (name, type) rows of the catalog; events of further names are counted apart.
MAX_EVENT_NAMES = 10_000
# Distinct (path, type) pairs kept per event name, for traits, and for context.
MAX_FIELDS = {EVENT: 500, TRAIT: 2_000, CONTEXT: 500}
# Event names (and traits, context) whose known paths stay in memory between batches.
CACHED_GROUPS = 500
# Context fields are read from 1 event in this many by default
# (TESSERA_SCHEMA_CONTEXT_SAMPLE), chosen by a hash of its seq so a rebuild picks the same
# ones: SDKs send the same dozen fields with every call, and walking them for each cost as
# much as the rest of the stage.
CONTEXT_SAMPLE = 16
# The types whose event carries properties, and group's account traits.
PROPERTIES_OF = {"track": "properties", "page": "properties", "screen": "properties"}
TRAITS_OF = {"group": "traits"}

EventKey = tuple[str, str]  # (name, type)
Group = tuple[str, str, str]  # (scope, event name, event type)
Pair = tuple[str, str]  # (path, json type)
TRAITS: Group = (TRAIT, "", "")
CONTEXT_GROUP: Group = (CONTEXT, "", "")


def sampled(seq: int, every: int) -> bool:
    """Whether the event at `seq` is one of the 1 in `every` whose context is read: a
    multiplicative hash, so a source's periodic pattern cannot line up with the sample."""
    return (seq * 0x9E3779B1) & 0xFFFFFFFF < (1 << 32) // every


class Tally:
    """One batch's counts, keyed as the tables are."""

    def __init__(self, *, oldest_minute: int, context_sample: int = CONTEXT_SAMPLE) -> None:
        self.oldest_minute = oldest_minute  # `minute_of`; older minutes are not counted
        self.context_sample = context_sample
        # (name, type) -> [count, first, last, dropped paths, its group]
        self.events: dict[EventKey, list[Any]] = {}
        self.fields: dict[Group, Counter[Pair]] = {}
        self.minutes: Counter[tuple[int, int]] = Counter()
        self.dropped: Counter[str] = Counter()
        self._last_at: datetime | None = None
        self._last_minute = oldest_minute

    def add(self, item: BatchEvent) -> None:
        kind, at, payload = item.type, item.received_at, item.payload
        name = (item.name or "")[:MAX_TEXT] if kind == "track" else ""
        key = (name, kind)
        entry = self.events.get(key)
        if entry is None:
            entry = self.events[key] = [1, at, at, 0, (EVENT, name, kind)]
        else:
            entry[0] += 1
            if at < entry[1]:  # noqa: PLR1730 - per event: a comparison, not a call
                entry[1] = at
            if at > entry[2]:  # noqa: PLR1730
                entry[2] = at
        if at != self._last_at:  # a request's events share their arrival time
            self._last_at, self._last_minute = at, minute_of(at)
        if self._last_minute >= self.oldest_minute:
            self.minutes[(self._last_minute, item.source_id)] += 1
        member = PROPERTIES_OF.get(kind) or TRAITS_OF.get(kind)
        body = payload.get(member) if member else None
        if type(body) is dict and body:
            paths, left_out = flatten(body)
            entry[3] += left_out
            self._count(entry[4], paths)
        for traits in traits_set_by(payload):
            paths, left_out = flatten(traits)
            if left_out:
                self.dropped["trait_paths"] += left_out
            self._count(TRAITS, paths)
        context = payload.get("context")
        if type(context) is dict and context and sampled(item.seq, self.context_sample):
            paths, left_out = context_paths(context)
            if left_out:
                self.dropped["context_paths"] += left_out
            self._count(CONTEXT_GROUP, paths)

    def _count(self, group: Group, paths: list[Pair]) -> None:
        counts = self.fields.get(group)
        if counts is None:
            counts = self.fields[group] = Counter()
        counts.update(paths)

    def refuse_event(self, key: EventKey) -> None:
        """Leave out an event name past the limit, with its paths; count its events."""
        self.dropped["event_names"] += self.events.pop(key)[0]
        self.fields.pop((EVENT, *key), None)

    def refuse_field(self, group: Group, pair: Pair) -> None:
        count = self.fields[group].pop(pair)
        scope, name, kind = group
        if scope == EVENT:
            self.events[(name, kind)][3] += count
        else:
            self.dropped[f"{scope}_paths"] += count

    def write(self, conn: Connection) -> None:
        upsert(
            conn,
            schema_event_types,
            [
                {
                    "name": name,
                    "type": kind,
                    "count": count,
                    "first_seen": first,
                    "last_seen": last,
                    "dropped_paths": dropped,
                }
                for (name, kind), (count, first, last, dropped, _) in sorted(self.events.items())
            ],
            keys=("name", "type"),
            combine={
                "count": "add",
                "first_seen": "min",
                "last_seen": "max",
                "dropped_paths": "add",
            },
        )
        upsert(
            conn,
            schema_fields,
            sorted(
                (
                    {
                        "scope": scope,
                        "event_name": name,
                        "event_type": kind,
                        "path": path,
                        "json_type": json_type,
                        "count": count,
                    }
                    for (scope, name, kind), counts in self.fields.items()
                    for (path, json_type), count in counts.items()
                ),
                key=lambda row: (row["scope"], row["event_name"], row["event_type"], row["path"]),
            ),
            keys=("scope", "event_name", "event_type", "path", "json_type"),
            combine={"count": "add"},
        )
        upsert(
            conn,
            schema_event_minutes,
            [
                {"minute": minute, "source_id": source_id, "count": count}
                for (minute, source_id), count in sorted(self.minutes.items())
            ],
            keys=("minute", "source_id"),
            combine={"count": "add"},
        )
        upsert(
            conn,
            schema_dropped,
            [
                {"reason": reason, "count": count}
                for reason, count in sorted(self.dropped.items())
                if count
            ],
            keys=("reason",),
            combine={"count": "add"},
        )


class KnownFields:
    """The catalog's names and paths this process knows are stored, to apply the limits
    without reading the catalog for every batch.

    It may know more than is stored (a batch rolled back after it learnt, or a rebuild in
    another process emptied the catalog): that only matters at a limit, so a name or path
    is refused only after the catalog, read again, confirms the limit is reached.
    """

    def __init__(self) -> None:
        self.events: set[EventKey] | None = None
        self.fields: OrderedDict[Group, set[Pair]] = OrderedDict()

    def admit(self, conn: Connection, tally: Tally) -> None:
        """Take out of `tally` the names and paths past the limits."""
        if self.events is None or not self.events.issuperset(tally.events):
            self._admit_events(conn, tally)
        for group, counts in tally.fields.items():
            self._admit_fields(conn, tally, group, counts)

    def _admit_events(self, conn: Connection, tally: Tally) -> None:
        if self.events is None:
            self.events = self._stored_events(conn)
        reread = False
        for key in list(tally.events):
            if key in self.events:
                continue
            if len(self.events) >= MAX_EVENT_NAMES and not reread:
                # What is stored, and what this batch took before (not written yet).
                self.events = self._stored_events(conn) | (set(tally.events) & self.events)
                reread = True
            if key in self.events or len(self.events) < MAX_EVENT_NAMES or key[1] != "track":
                self.events.add(key)
            else:
                tally.refuse_event(key)

    def _admit_fields(
        self, conn: Connection, tally: Tally, group: Group, counts: Counter[Pair]
    ) -> None:
        known = self.fields.get(group)
        if known is None:
            known = self.fields[group] = self._stored_fields(conn, group)
            if len(self.fields) > CACHED_GROUPS:
                self.fields.popitem(last=False)
        else:
            self.fields.move_to_end(group)
        if known.issuperset(counts):
            return
        limit, reread = MAX_FIELDS[group[0]], False
        for pair in list(counts):
            if pair in known:
                continue
            if len(pair[0]) > MAX_TEXT:
                tally.refuse_field(group, pair)
                continue
            if len(known) >= limit and not reread:
                known = self._stored_fields(conn, group) | (set(counts) & known)
                self.fields[group], reread = known, True
            if pair in known or len(known) < limit:
                known.add(pair)
            else:
                tally.refuse_field(group, pair)

    @staticmethod
    def _stored_events(conn: Connection) -> set[EventKey]:
        table = schema_event_types
        return {(row.name, row.type) for row in conn.execute(sa.select(table.c.name, table.c.type))}

    @staticmethod
    def _stored_fields(conn: Connection, group: Group) -> set[Pair]:
        table = schema_fields
        query = sa.select(table.c.path, table.c.json_type).where(
            table.c.scope == group[0],
            table.c.event_name == group[1],
            table.c.event_type == group[2],
        )
        return {(row.path, row.json_type) for row in conn.execute(query)}


class SchemaStage:
    """The batch stage (`tessera.batch_stages` entry `schema`)."""

    name = "schema"
    # Tallies of the whole log (no `profile_id`): rebuild empties them, unmerge does not.
    tables: Sequence[sa.Table] = (
        schema_event_types,
        schema_fields,
        schema_event_minutes,
        schema_dropped,
    )

    def __init__(
        self, *, minutes_retention: timedelta, context_sample: int = CONTEXT_SAMPLE
    ) -> None:
        self.minutes_retention = minutes_retention
        self.context_sample = context_sample
        self.known = KnownFields()

    def apply(self, conn: Connection, batch: AppliedBatch) -> None:
        if batch.replay:
            return  # an unmerge: these events are counted already
        now = batch.now or datetime.now(UTC)
        oldest = minute_of(now - self.minutes_retention)
        tally = Tally(oldest_minute=oldest, context_sample=self.context_sample)
        for item in batch.events:
            tally.add(item)
        self.known.admit(conn, tally)
        tally.write(conn)


def create_stage(settings: Settings) -> SchemaStage:
    """The entry point's factory."""
    return SchemaStage(
        minutes_retention=timedelta(days=settings.schema_minutes_retention_days),
        context_sample=settings.schema_context_sample,
    )
