"""The schema batch stage: every applied batch tallied into the catalog (event types; their
property paths with types; trait and context paths) and the events per minute and source.

A batch is aggregated in dictionaries first, then written with one upsert per table, one
row per key, whatever the batch's size. The catalog is bounded: `MAX_EVENT_NAMES` names,
`MAX_FIELDS` paths per event name (and for traits, and context); what the limits leave out
is counted, never silently lost. Which names and paths are already known is remembered
between batches (`KnownFields`), so a batch of known shapes reads nothing.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.processor.events import traits_set_by
from tessera.processor.extensions import AppliedBatch
from tessera.schema.models import (
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
CACHED_GROUPS = 2_000
# The types whose event carries properties, and group's account traits.
PROPERTIES_OF = {"track": "properties", "page": "properties", "screen": "properties"}
TRAITS_OF = {"group": "traits"}

EventKey = tuple[str, str]  # (name, type)
Group = tuple[str, str, str]  # (scope, event name, event type)
FieldKey = tuple[str, str, str, str, str]  # (*group, path, json type)


class Tally:
    """One batch's counts, keyed as the tables are."""

    def __init__(self, *, oldest_minute: datetime) -> None:
        self.oldest_minute = oldest_minute
        self.events: dict[EventKey, list[Any]] = {}  # [count, first, last, dropped paths]
        self.fields: dict[FieldKey, list[Any]] = {}  # [count, last]
        self.minutes: Counter[tuple[datetime, int]] = Counter()
        self.dropped: Counter[str] = Counter()

    def add(
        self, *, kind: str, name: str | None, source_id: int, at: datetime, payload: dict[str, Any]
    ) -> None:
        name = (name or "")[:MAX_TEXT] if kind == "track" else ""
        key = (name, kind)
        entry = self.events.get(key)
        if entry is None:
            entry = self.events[key] = [1, at, at, 0]
        else:
            entry[0] += 1
            entry[1] = min(entry[1], at)
            entry[2] = max(entry[2], at)
        minute = at.replace(second=0, microsecond=0)
        if minute >= self.oldest_minute:
            self.minutes[(minute, source_id)] += 1
        member = PROPERTIES_OF.get(kind) or TRAITS_OF.get(kind)
        body = payload.get(member) if member else None
        if type(body) is dict and body:
            paths, left_out = flatten(body)
            entry[3] += left_out
            self._fields((EVENT, name, kind), paths, at)
        for traits in traits_set_by(payload):
            paths, left_out = flatten(traits)
            self.dropped["trait_paths"] += left_out
            self._fields((TRAIT, "", ""), paths, at)
        context = payload.get("context")
        if type(context) is dict and context:
            paths, left_out = context_paths(context)
            self.dropped["context_paths"] += left_out
            self._fields((CONTEXT, "", ""), paths, at)

    def _fields(self, group: Group, paths: list[tuple[str, str]], at: datetime) -> None:
        fields = self.fields
        for path, kind in paths:
            key = (*group, path, kind)
            entry = fields.get(key)
            if entry is None:
                fields[key] = [1, at]
            else:
                entry[0] += 1
                entry[1] = max(entry[1], at)

    def groups(self) -> dict[Group, list[FieldKey]]:
        """The batch's field keys by group, in order of first appearance."""
        found: dict[Group, list[FieldKey]] = {}
        for key in self.fields:
            found.setdefault(key[:3], []).append(key)
        return found

    def refuse_event(self, key: EventKey, keys: Iterable[FieldKey]) -> None:
        """Leave out an event name past the limit, with its paths; count its events."""
        self.dropped["event_names"] += self.events.pop(key)[0]
        for field_key in keys:
            self.fields.pop(field_key, None)

    def refuse_field(self, key: FieldKey) -> None:
        count = self.fields.pop(key)[0]
        scope, name, kind = key[:3]
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
                for (name, kind), (count, first, last, dropped) in sorted(self.events.items())
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
            [
                {
                    "scope": scope,
                    "event_name": name,
                    "event_type": kind,
                    "path": path,
                    "json_type": json_type,
                    "count": count,
                    "last_seen": last,
                }
                for (scope, name, kind, path, json_type), (count, last) in sorted(
                    self.fields.items()
                )
            ],
            keys=("scope", "event_name", "event_type", "path", "json_type"),
            combine={"count": "add", "last_seen": "max"},
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
        self.fields: OrderedDict[Group, set[tuple[str, str]]] = OrderedDict()

    def admit(self, conn: Connection, tally: Tally) -> None:
        """Take out of `tally` the names and paths past the limits."""
        groups = tally.groups()
        if self.events is None or not self.events.issuperset(tally.events):
            self._admit_events(conn, tally, groups)
        for group, keys in groups.items():
            if group[0] == EVENT and (group[1], group[2]) not in tally.events:
                continue  # its event name was refused
            self._admit_fields(conn, tally, group, keys)

    def _admit_events(
        self, conn: Connection, tally: Tally, groups: dict[Group, list[FieldKey]]
    ) -> None:
        if self.events is None:
            self.events = self._stored_events(conn)
        reread = False
        for key in list(tally.events):
            if key in self.events:
                continue
            if len(self.events) >= MAX_EVENT_NAMES and not reread:
                # What is stored, and what this batch took before (not written yet).
                batch = set(tally.events)
                self.events = self._stored_events(conn) | (batch & self.events)
                reread = True
            if key in self.events or len(self.events) < MAX_EVENT_NAMES or key[1] != "track":
                self.events.add(key)
            else:
                tally.refuse_event(key, groups.get((EVENT, *key), ()))

    def _admit_fields(
        self, conn: Connection, tally: Tally, group: Group, keys: list[FieldKey]
    ) -> None:
        known = self.fields.get(group)
        if known is None:
            known = self.fields[group] = self._stored_fields(conn, group)
            if len(self.fields) > CACHED_GROUPS:
                self.fields.popitem(last=False)
        else:
            self.fields.move_to_end(group)
        limit, reread = MAX_FIELDS[group[0]], False
        for key in keys:
            pair = (key[3], key[4])
            if pair in known:
                continue
            if len(known) >= limit and not reread:
                batch = {(other[3], other[4]) for other in keys if other in tally.fields}
                known = self._stored_fields(conn, group) | (batch & known)
                self.fields[group], reread = known, True
            if pair in known or len(known) < limit:
                known.add(pair)
            else:
                tally.refuse_field(key)

    @staticmethod
    def _stored_events(conn: Connection) -> set[EventKey]:
        table = schema_event_types
        return {(row.name, row.type) for row in conn.execute(sa.select(table.c.name, table.c.type))}

    @staticmethod
    def _stored_fields(conn: Connection, group: Group) -> set[tuple[str, str]]:
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

    def __init__(self, *, minutes_retention: timedelta) -> None:
        self.minutes_retention = minutes_retention
        self.known = KnownFields()

    def apply(self, conn: Connection, batch: AppliedBatch) -> None:
        if batch.replay:
            return  # an unmerge: these events are counted already
        now = batch.now or datetime.now(UTC)
        oldest = (now - self.minutes_retention).replace(second=0, microsecond=0)
        tally = Tally(oldest_minute=oldest)
        for item in batch.events:
            tally.add(
                kind=item.type,
                name=item.name,
                source_id=item.source_id,
                at=item.received_at,
                payload=item.payload,
            )
        self.known.admit(conn, tally)
        tally.write(conn)


def create_stage(settings: Settings) -> SchemaStage:
    """The entry point's factory."""
    return SchemaStage(minutes_retention=timedelta(days=settings.schema_minutes_retention_days))
