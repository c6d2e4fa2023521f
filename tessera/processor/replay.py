"""Replays: forgetting what was derived so a rebuild re-derives it from the log
(`reset_derived_state`), and splitting a wrong merge by replaying its cluster (`unmerge`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.activation import fanout as fanout_stage
from tessera.audiences.catalog import BUILDING, READY
from tessera.audiences.models import audiences, evaluation_schedule
from tessera.errors import NotFound
from tessera.eventlog.models import events
from tessera.identity.graph import ordered_pair
from tessera.identity.models import identities, merge_blocks, profile_merges
from tessera.processor.claims import hold_partitions, lock_position
from tessera.processor.derived_stage import catch_up_derived
from tessera.processor.events import event_columns
from tessera.processor.extensions import BatchStage, forget_everything, forget_profiles
from tessera.processor.models import (
    DERIVED,
    MAIN,
    PARTITION_NAMES,
    processor_state,
)
from tessera.processor.pipeline import Pipeline
from tessera.profiles.models import (
    computed_trait_values,
    computed_traits,
    event_profiles,
    profile_accounts,
    profile_consent,
    profile_traits,
    profiles,
)
from tessera.store.upsert import upsert

log = logging.getLogger(__name__)

DERIVED_TABLES = (
    "profile_consent",
    "computed_trait_values",
    "audience_members",
    "audience_sizes",
    "audience_history",
    "audience_changes",
    "audience_daily_changes",
    "evaluation_schedule",
    "identity_dropped_identifiers",
    "event_profiles",
    "profile_traits",
    "profile_accounts",
    "profile_merges",
    "identities",
    "profiles",
)


def reset_derived_state(conn: Connection, *, stages: Sequence[BatchStage] = ()) -> None:
    """Forget everything derived from the log, the batch `stages`' tables too; both stages
    then re-derive it from seq 0."""
    lock_position(conn, MAIN)
    hold_partitions(conn)
    lock_position(conn, DERIVED)
    forget_everything(conn, stages)
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
    lock_position(conn, MAIN)
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
    forget_profiles(conn, pipeline.stages, cluster)
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
            conn.execute(event_columns().where(events.c.seq.in_(chunk)).order_by(events.c.seq))
        )
        pipeline.apply_batch(conn, rows, evaluate_all=True, replay=True)
        replayed += len(rows)
    pipeline.fan_out_changes(conn)  # entries and exits the split caused
    return Unmerged(
        survivor_id=merge.survivor_id,
        restored_id=merge.absorbed_id,
        identifiers=orjson.loads(merge.identifiers),
        events_replayed=replayed,
    )
