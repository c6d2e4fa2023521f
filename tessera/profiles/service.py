"""Profiles: create, apply traits with provenance, fold one profile into another on merge,
and attribute events. The processor calls these inside its transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.profiles.models import event_profiles, profile_accounts, profile_traits, profiles
from tessera.profiles.policy import Provenance, TraitPolicies
from tessera.store.upsert import upsert

MAX_TRAIT_NAME = 255


def create_profile(conn: Connection, *, profile_id: str, seq: int, at: datetime) -> None:
    conn.execute(
        profiles.insert().values(
            id=profile_id, created_seq=seq, created_at=at, updated_at=at, event_count=0
        )
    )


def touch(conn: Connection, profile_id: str, *, at: datetime, events: int = 1) -> None:
    conn.execute(
        profiles.update()
        .where(profiles.c.id == profile_id)
        .values(
            updated_at=sa.case((profiles.c.updated_at < at, at), else_=profiles.c.updated_at),
            event_count=profiles.c.event_count + events,
        )
    )


def attribute(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Record which profile each event belongs to (`seq`, `profile_id`)."""
    if rows:
        conn.execute(event_profiles.insert(), rows)


def _provenance(row: Any) -> Provenance:
    return Provenance(row.source_id, row.seq, row.message_id, row.timestamp)


def apply_traits(
    conn: Connection,
    profile_id: str,
    traits: dict[str, Any],
    provenance: Provenance,
    policies: TraitPolicies,
) -> None:
    """Offer each trait's value to the profile; it is kept where its policy says it wins."""
    names = [name for name in traits if 0 < len(name) <= MAX_TRAIT_NAME and "\x00" not in name]
    if not names:
        return
    existing = {
        row.name: _provenance(row)
        for row in conn.execute(
            sa.select(profile_traits).where(
                profile_traits.c.profile_id == profile_id, profile_traits.c.name.in_(names)
            )
        )
    }
    winners = [
        {
            "profile_id": profile_id,
            "name": name,
            "value": orjson.dumps(traits[name]).decode(),
            "source_id": provenance.source_id,
            "seq": provenance.seq,
            "message_id": provenance.message_id,
            "timestamp": provenance.timestamp,
        }
        for name in names
        if name not in existing or policies.wins(name, provenance, existing[name])
    ]
    upsert(conn, profile_traits, winners, keys=("profile_id", "name"))


def link_account(
    conn: Connection,
    profile_id: str,
    *,
    group_id: str,
    traits: dict[str, Any],
    seq: int,
    at: datetime,
) -> None:
    row = conn.execute(
        sa.select(profile_accounts.c.timestamp, profile_accounts.c.seq).where(
            profile_accounts.c.profile_id == profile_id, profile_accounts.c.group_id == group_id
        )
    ).first()
    if row is not None and (row.timestamp, row.seq) > (at, seq):
        return
    upsert(
        conn,
        profile_accounts,
        [
            {
                "profile_id": profile_id,
                "group_id": group_id,
                "traits": orjson.dumps(traits).decode(),
                "seq": seq,
                "timestamp": at,
            }
        ],
        keys=("profile_id", "group_id"),
    )


def absorb(conn: Connection, *, survivor: str, absorbed: str, policies: TraitPolicies) -> None:
    """Fold `absorbed` into `survivor`: traits by policy, accounts, events, counters."""
    theirs = list(
        conn.execute(sa.select(profile_traits).where(profile_traits.c.profile_id == absorbed))
    )
    if theirs:
        ours = {
            row.name: _provenance(row)
            for row in conn.execute(
                sa.select(profile_traits).where(
                    profile_traits.c.profile_id == survivor,
                    profile_traits.c.name.in_([row.name for row in theirs]),
                )
            )
        }
        winners = [
            {**row._asdict(), "profile_id": survivor}
            for row in theirs
            if row.name not in ours or policies.wins(row.name, _provenance(row), ours[row.name])
        ]
        upsert(conn, profile_traits, winners, keys=("profile_id", "name"))
        conn.execute(profile_traits.delete().where(profile_traits.c.profile_id == absorbed))
    accounts = list(
        conn.execute(sa.select(profile_accounts).where(profile_accounts.c.profile_id == absorbed))
    )
    for account in accounts:
        link_account(
            conn,
            survivor,
            group_id=account.group_id,
            traits=orjson.loads(account.traits),
            seq=account.seq,
            at=account.timestamp,
        )
    conn.execute(profile_accounts.delete().where(profile_accounts.c.profile_id == absorbed))
    conn.execute(
        event_profiles.update()
        .where(event_profiles.c.profile_id == absorbed)
        .values(profile_id=survivor)
    )
    gone = conn.execute(
        sa.select(profiles.c.event_count, profiles.c.updated_at, profiles.c.created_at).where(
            profiles.c.id == absorbed
        )
    ).one()
    conn.execute(
        profiles.update()
        .where(profiles.c.id == survivor)
        .values(
            event_count=profiles.c.event_count + gone.event_count,
            updated_at=sa.case(
                (profiles.c.updated_at < gone.updated_at, gone.updated_at),
                else_=profiles.c.updated_at,
            ),
            created_at=sa.case(
                (profiles.c.created_at > gone.created_at, gone.created_at),
                else_=profiles.c.created_at,
            ),
        )
    )
    # One hop from any absorbed id to its survivor, however many merges deep.
    conn.execute(
        profiles.update()
        .where(sa.or_(profiles.c.id == absorbed, profiles.c.merged_into == absorbed))
        .values(merged_into=survivor)
    )
