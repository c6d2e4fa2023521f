"""The derived stage's computation (computed traits and audiences) over a batch of events,
whichever stage feeds it: the main stage's working set (inline), the events the main stage
committed (separate), or one partition's events. Writes nothing: the caller flushes the
`DerivedState` in the transaction that holds the stage's position."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.audiences.catalog import Catalog
from tessera.audiences.stage import (
    DerivedState,
    Resident,
)
from tessera.identity import graph
from tessera.identity.batch import IdentityBatch
from tessera.identity.models import profile_merges
from tessera.processor.events import (
    ParsedEvent,
    consent_stated_by,
    current_survivors,
    may_carry_traits,
    traits_set_by,
)
from tessera.profiles.batch import ProfileBatch
from tessera.profiles.models import (
    event_profiles,
    profiles,
)
from tessera.store.chunks import chunked

if TYPE_CHECKING:
    from tessera.processor.pipeline import Pipeline


def derive_batch(
    pipeline: Pipeline,
    conn: Connection,
    batch: list[ParsedEvent],
    graph_state: IdentityBatch,
    profile_state: ProfileBatch,
    *,
    merged: list[tuple[str, str]],
    evaluate_all: bool,
    resident: Resident | None,
) -> DerivedState | None:
    """Computed traits and audiences for the profiles this batch touched, from the
    main stage's working set (the inline mode); `merged` are the batch's merges
    (survivor, absorbed) in log order."""
    catalog = pipeline.catalog(conn)
    if not catalog.traits and not catalog.audiences:
        return None
    final = graph_state.resolve_id
    owners = {seq: final(pid) for seq, pid in profile_state.attribution if pid is not None}
    merges = [(final(survivor), absorbed) for survivor, absorbed in merged]
    changed: dict[str, set[str]] = {}
    for pid, name in profile_state.changed_traits:
        changed.setdefault(final(pid), set()).add(name)

    def facts(derived: DerivedState, touched: set[str]) -> None:
        for pid in touched:
            derived.set_traits(
                pid, {name: value.value for name, value in profile_state.traits[pid].items()}
            )
            derived.consent[pid] = {
                category: choice.granted for category, choice in profile_state.consent[pid].items()
            }

    return _derive_events(
        pipeline,
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
    pipeline: Pipeline,
    conn: Connection,
    catalog: Catalog,
    batch: list[ParsedEvent],
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
    derived = DerivedState(catalog, pipeline.clock())
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
    pipeline: Pipeline, conn: Connection, rows: list[Any], resident: Resident | None = None
) -> DerivedState | None:
    """The derived stage for `rows` (events in log order) that the main stage applied
    already (the separate mode): attribution, merges and traits come from the store,
    as the main stage committed them. A profile is resolved to its current survivor,
    so events the main stage has since merged go straight to the merged profile.

    Traits are the profile's current ones, which may be ahead of `rows`; the traits an
    event names count as changed (a superset of what changed, which is always safe to
    re-evaluate), so every state converges to what the inline mode reaches."""
    catalog = pipeline.catalog(conn)
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
    final = current_survivors(conn, {row.survivor_id for row in merged}) if merged else {}
    return _derive_logged(
        pipeline,
        conn,
        catalog,
        rows,
        owners=owners,
        merges=[(final.get(row.survivor_id, row.survivor_id), row.absorbed_id) for row in merged],
        merging={row.seq for row in merged},
        fresh={pid for seq, pid in owners.items() if pid == graph.profile_id_for(seq)},
        resident=resident,
    )


def derive_partition_rows(
    pipeline: Pipeline,
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
    catalog = pipeline.catalog(conn)
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
    return _derive_logged(
        pipeline,
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
    pipeline: Pipeline,
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
    batch: list[ParsedEvent] = []
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
        carries = row.type == "identify" or may_carry_traits(row.payload)
        kept = any_name or row.name in catalog.traits_by_event
        if not (carries or kept or pid in fresh or row.seq in merging):
            continue
        if not (carries or any_payload or row.name in catalog.payload_events):
            name_field = "event" if row.type == "track" else "name"
            batch.append(ParsedEvent(row, {"type": row.type, name_field: row.name}, []))
            continue
        payload = orjson.loads(row.payload)
        batch.append(ParsedEvent(row, payload, []))
        if not carries:
            continue
        for traits in traits_set_by(payload):
            changed.setdefault(pid, set()).update(traits)
        if consent_stated_by(payload) is not None:
            consent_changed.add(pid)

    def facts(derived: DerivedState, touched: set[str]) -> None:
        derived.load_traits(conn, touched)

    return _derive_events(
        pipeline,
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
