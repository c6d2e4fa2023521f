"""The definitions the processor works with, parsed once and indexed by what can change
them: event names to computed traits, traits and computed traits to audiences, audiences
to the audiences that reference them. Reloaded when a definition changes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.audiences.language import AudienceDefinition, parse_audience
from tessera.audiences.models import audiences
from tessera.profiles.computed import ComputedTraitSpec, parse_computed_trait
from tessera.profiles.models import computed_traits

READY = "ready"
BACKFILLING = "backfilling"
BUILDING = "building"


@dataclass
class AudienceEntry:
    id: str
    name: str
    definition: AudienceDefinition
    status: str
    build_cursor: str

    def live_for(self, profile_id: str) -> bool:
        """Maintained in real time for this profile: ready, or building and past it (the
        build evaluated it already, so what changes it since must be evaluated as it
        happens: the build will not come back to it)."""
        if self.status == READY:
            return True
        return self.status == BUILDING and profile_id <= self.build_cursor


@dataclass
class Catalog:
    traits: dict[str, ComputedTraitSpec] = field(default_factory=dict)
    trait_status: dict[str, str] = field(default_factory=dict)
    backfilled_through: dict[str, int] = field(default_factory=dict)
    audiences: dict[str, AudienceEntry] = field(default_factory=dict)
    # Live maintenance: which ready traits an event of this name may feed (None: any name).
    traits_by_event: dict[str | None, list[ComputedTraitSpec]] = field(default_factory=dict)
    # The event names (None: any name) whose ready traits read more than type and name.
    payload_events: set[str | None] = field(default_factory=set)
    audiences_by_trait: dict[str, set[str]] = field(default_factory=dict)
    audiences_by_computed: dict[str, set[str]] = field(default_factory=dict)
    audiences_by_audience: dict[str, set[str]] = field(default_factory=dict)
    consent_audiences: set[str] = field(default_factory=set)
    order: list[str] = field(default_factory=list)  # referenced audiences first
    version: tuple[Any, ...] = ()

    def specs_for(self, event_name: str | None) -> list[ComputedTraitSpec]:
        found = self.traits_by_event.get(None, [])
        if event_name is not None:
            found = found + self.traits_by_event.get(event_name, [])
        return found

    def audiences_affected(
        self, *, traits: set[str], computed: set[str], consent: bool
    ) -> set[str]:
        affected: set[str] = set()
        for name in traits:
            affected |= self.audiences_by_trait.get(name, set())
        for name in computed:
            affected |= self.audiences_by_computed.get(name, set())
        if consent:
            affected |= self.consent_audiences
        return affected


def parse_stored_trait(name: str, definition: str) -> ComputedTraitSpec:
    """A stored definition; implicit names ("_evt_...") are not valid user names, so the
    document is parsed under a placeholder and renamed."""
    document = orjson.loads(definition)
    document["name"] = "stored"
    return dataclasses.replace(parse_computed_trait(document), name=name)


def catalog_version(conn: Connection) -> tuple[Any, ...]:
    """Cheap to read every batch; changes whenever a definition or its status does."""
    traits_row = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.max(computed_traits.c.updated_at),
            sa.func.sum(computed_traits.c.backfilled_through),
            sa.func.sum(sa.case((computed_traits.c.status == READY, 1), else_=0)),
        )
    ).one()
    audiences_row = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.max(audiences.c.updated_at),
            sa.func.sum(audiences.c.built_profiles),
            sa.func.sum(sa.case((audiences.c.status == READY, 1), else_=0)),
            # A build step's chunk may hold no surviving profile: the cursor moves anyway.
            sa.func.max(sa.case((audiences.c.status == BUILDING, audiences.c.build_cursor))),
        )
    ).one()
    return (*traits_row, *audiences_row)


def load_catalog(conn: Connection) -> Catalog:
    catalog = Catalog(version=catalog_version(conn))
    for row in conn.execute(sa.select(computed_traits).order_by(computed_traits.c.name)):
        spec = parse_stored_trait(row.name, row.definition)
        catalog.traits[row.name] = spec
        catalog.trait_status[row.name] = row.status
        catalog.backfilled_through[row.name] = int(row.backfilled_through)
        if row.status == READY:
            catalog.traits_by_event.setdefault(spec.event_name, []).append(spec)
            if spec.reads_payload:
                catalog.payload_events.add(spec.event_name)
    kinds = {name: spec.kind for name, spec in catalog.traits.items()}
    rows = list(conn.execute(sa.select(audiences).order_by(audiences.c.id)))
    referred = {row.id: frozenset(references(orjson.loads(row.definition))) for row in rows}
    for row in rows:
        definition = parse_audience(
            orjson.loads(row.definition),
            computed_kinds=kinds,
            audience_references=referred.get,
            audience_id=row.id,
        )
        catalog.audiences[row.id] = AudienceEntry(
            row.id, row.name, definition, row.status, row.build_cursor
        )
        deps = definition.dependencies
        for name in deps.traits:
            catalog.audiences_by_trait.setdefault(name, set()).add(row.id)
        for name in deps.computed:
            catalog.audiences_by_computed.setdefault(name, set()).add(row.id)
        for other in deps.audiences:
            catalog.audiences_by_audience.setdefault(other, set()).add(row.id)
        if deps.consent:
            catalog.consent_audiences.add(row.id)
    catalog.order = _topological(
        {aid: entry.definition.dependencies.audiences for aid, entry in catalog.audiences.items()}
    )
    return catalog


def references(doc: Any, key: str = "audience") -> set[str]:
    """What a stored definition names under `key` anywhere in its tree: the audiences
    (`"audience"`) or the computed traits (`"computed"`) it reads."""
    found: set[str] = set()
    if isinstance(doc, dict):
        if isinstance(doc.get(key), str):
            found.add(doc[key])
        for value in doc.values():
            found |= references(value, key)
    elif isinstance(doc, list):
        for item in doc:
            found |= references(item, key)
    return found


def _topological(depends_on: dict[str, frozenset[str]]) -> list[str]:
    order: list[str] = []
    seen: set[str] = set()

    def visit(aid: str) -> None:
        if aid in seen:
            return
        seen.add(aid)
        for other in sorted(depends_on.get(aid, frozenset())):
            if other in depends_on:
                visit(other)
        order.append(aid)

    for aid in sorted(depends_on):
        visit(aid)
    return order


def dependents_closure(catalog: Catalog, changed: set[str]) -> set[str]:
    """Audiences whose result may change because membership of `changed` did."""
    result: set[str] = set()
    frontier = list(changed)
    while frontier:
        for dependent in catalog.audiences_by_audience.get(frontier.pop(), set()):
            if dependent not in result:
                result.add(dependent)
                frontier.append(dependent)
    return result
