"""The profiles one processor batch touches: rows, traits and accounts loaded in bulk,
changed in memory event by event, written back with executemany at the end.

Trait values keep their provenance; which value wins is the policy's decision
(`policy.TraitPolicies`), made from provenance alone so arrival order does not matter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.profiles.models import (
    event_profiles,
    profile_accounts,
    profile_consent,
    profile_traits,
    profiles,
)
from tessera.profiles.policy import Provenance, TraitPolicies
from tessera.store.chunks import chunked
from tessera.store.upsert import upsert

MAX_TRAIT_NAME = 255


@dataclass(slots=True)
class ProfileRow:
    id: str
    created_seq: int
    created_at: datetime
    updated_at: datetime
    event_count: int
    merged_into: str | None = None


@dataclass(slots=True)
class TraitValue:
    value: str  # JSON
    provenance: Provenance


@dataclass(slots=True)
class Consent:
    granted: bool
    provenance: Provenance


MAX_CONSENT_CATEGORY = 64


@dataclass(slots=True)
class AccountLink:
    traits: str  # JSON
    seq: int
    timestamp: datetime


class ProfileBatch:
    def __init__(self, policies: TraitPolicies) -> None:
        self.policies = policies
        self.rows: dict[str, ProfileRow] = {}
        self.traits: dict[str, dict[str, TraitValue]] = {}
        self.accounts: dict[str, dict[str, AccountLink]] = {}
        self.consent: dict[str, dict[str, Consent]] = {}
        self._new: set[str] = set()
        self._dirty_consent: set[tuple[str, str]] = set()
        self._dirty_rows: set[str] = set()
        self._dirty_traits: set[tuple[str, str]] = set()
        self._new_values: set[tuple[str, str]] = set()
        self._dirty_accounts: set[tuple[str, str]] = set()
        self._absorbed: list[tuple[str, str]] = []
        self.attribution: list[tuple[int, str | None]] = []

    def load(self, conn: Connection, profile_ids: Iterable[str]) -> None:
        wanted = sorted(set(profile_ids) - set(self.rows))
        for chunk in chunked(wanted):
            for row in conn.execute(sa.select(profiles).where(profiles.c.id.in_(chunk))):
                self.rows[row.id] = ProfileRow(
                    row.id,
                    row.created_seq,
                    row.created_at,
                    row.updated_at,
                    row.event_count,
                    row.merged_into,
                )
                self.traits.setdefault(row.id, {})
                self.accounts.setdefault(row.id, {})
                self.consent.setdefault(row.id, {})
            for row in conn.execute(
                sa.select(profile_traits).where(profile_traits.c.profile_id.in_(chunk))
            ):
                provenance = Provenance(row.source_id, row.seq, row.message_id, row.timestamp)
                self.traits[row.profile_id][row.name] = TraitValue(row.value, provenance)
            for row in conn.execute(
                sa.select(profile_consent).where(profile_consent.c.profile_id.in_(chunk))
            ):
                self.consent[row.profile_id][row.category] = Consent(
                    row.granted, Provenance(row.source_id, row.seq, "", row.timestamp)
                )
            for row in conn.execute(
                sa.select(profile_accounts).where(profile_accounts.c.profile_id.in_(chunk))
            ):
                self.accounts[row.profile_id][row.group_id] = AccountLink(
                    row.traits, row.seq, row.timestamp
                )

    @property
    def created(self) -> set[str]:
        """Profiles this batch created."""
        return self._new

    @property
    def changed_consent(self) -> set[tuple[str, str]]:
        return self._dirty_consent

    @property
    def changed_traits(self) -> set[tuple[str, str]]:
        """(profile, trait name) pairs whose winning value this batch changed."""
        return self._dirty_traits

    @property
    def changed_values(self) -> set[tuple[str, str]]:
        """The `changed_traits` whose value differs from the one it replaced (a repeated
        identify wins again with the same value: written, for its provenance, not changed)."""
        return self._new_values

    @property
    def changed_accounts(self) -> set[tuple[str, str]]:
        """(profile, group id) pairs whose account link this batch wrote."""
        return self._dirty_accounts

    # -- changes ---------------------------------------------------------------------------

    def create(self, profile_id: str, *, seq: int, at: datetime) -> None:
        self.rows[profile_id] = ProfileRow(profile_id, seq, at, at, 0)
        self.traits[profile_id] = {}
        self.accounts[profile_id] = {}
        self.consent[profile_id] = {}
        self._new.add(profile_id)

    def touch(self, profile_id: str, *, at: datetime) -> None:
        row = self.rows[profile_id]
        row.event_count += 1
        row.updated_at = max(row.updated_at, at)
        self._dirty_rows.add(profile_id)

    def attribute(self, seq: int, profile_id: str | None) -> None:
        self.attribution.append((seq, profile_id))

    def _offer(self, profile_id: str, name: str, offered: TraitValue) -> None:
        current = self.traits[profile_id].get(name)
        if current is None or self.policies.wins(name, offered.provenance, current.provenance):
            self.traits[profile_id][name] = offered
            self._dirty_traits.add((profile_id, name))
            if current is None or current.value != offered.value:
                self._new_values.add((profile_id, name))

    def apply_traits(self, profile_id: str, traits: dict[str, Any], provenance: Provenance) -> None:
        for name, value in traits.items():
            if 0 < len(name) <= MAX_TRAIT_NAME and "\x00" not in name:
                self._offer(profile_id, name, TraitValue(orjson.dumps(value).decode(), provenance))

    def apply_consent(
        self, profile_id: str, preferences: dict[str, Any], provenance: Provenance
    ) -> None:
        """Segment's `categoryPreferences`: the latest stated choice per category wins."""
        for category, granted in preferences.items():
            if isinstance(granted, bool) and 0 < len(category) <= MAX_CONSENT_CATEGORY:
                self._consent(profile_id, category, Consent(granted, provenance))

    def _consent(self, profile_id: str, category: str, offered: Consent) -> None:
        current = self.consent[profile_id].get(category)
        if current is None or (offered.provenance.timestamp, offered.provenance.seq) >= (
            current.provenance.timestamp,
            current.provenance.seq,
        ):
            self.consent[profile_id][category] = offered
            self._dirty_consent.add((profile_id, category))

    def link_account(
        self, profile_id: str, *, group_id: str, traits: dict[str, Any], seq: int, at: datetime
    ) -> None:
        self._link(profile_id, group_id, AccountLink(orjson.dumps(traits).decode(), seq, at))

    def _link(self, profile_id: str, group_id: str, link: AccountLink) -> None:
        current = self.accounts[profile_id].get(group_id)
        if current is None or (link.timestamp, link.seq) >= (current.timestamp, current.seq):
            self.accounts[profile_id][group_id] = link
            self._dirty_accounts.add((profile_id, group_id))

    def absorb(self, *, survivor: str, absorbed: str) -> None:
        """Fold `absorbed` into `survivor`: traits by policy, accounts, counters."""
        for name, value in self.traits.pop(absorbed, {}).items():
            self._offer(survivor, name, value)
        for group, link in self.accounts.pop(absorbed, {}).items():
            self._link(survivor, group, link)
        for category, choice in self.consent.pop(absorbed, {}).items():
            self._consent(survivor, category, choice)
        gone, kept = self.rows[absorbed], self.rows[survivor]
        kept.event_count += gone.event_count
        kept.updated_at = max(kept.updated_at, gone.updated_at)
        kept.created_at = min(kept.created_at, gone.created_at)
        gone.merged_into = survivor
        for row in self.rows.values():
            if row.merged_into == absorbed:
                row.merged_into = survivor
        self._dirty_rows.update((survivor, absorbed))
        self._absorbed.append((absorbed, survivor))

    # -- writing ---------------------------------------------------------------------------

    def flush(self, conn: Connection, resolve: Callable[[str], str]) -> None:
        for absorbed, survivor in self._absorbed:
            # Rows written before this batch: traits and accounts were folded in memory.
            conn.execute(profile_traits.delete().where(profile_traits.c.profile_id == absorbed))
            conn.execute(profile_accounts.delete().where(profile_accounts.c.profile_id == absorbed))
            conn.execute(profile_consent.delete().where(profile_consent.c.profile_id == absorbed))
            conn.execute(
                event_profiles.update()
                .where(event_profiles.c.profile_id == absorbed)
                .values(profile_id=survivor)
            )
            conn.execute(
                profiles.update()
                .where(profiles.c.merged_into == absorbed)
                .values(merged_into=survivor)
            )
        new_rows = [self._row(pid) for pid in sorted(self._new)]
        if new_rows:
            conn.execute(profiles.insert(), new_rows)
        changed = [self._row(pid) for pid in sorted(self._dirty_rows - self._new)]
        if changed:
            conn.execute(
                profiles.update()
                .where(profiles.c.id == sa.bindparam("b_id"))
                .values(
                    updated_at=sa.bindparam("b_updated_at"),
                    created_at=sa.bindparam("b_created_at"),
                    event_count=sa.bindparam("b_event_count"),
                    merged_into=sa.bindparam("b_merged_into"),
                ),
                [
                    {
                        "b_id": row["id"],
                        "b_updated_at": row["updated_at"],
                        "b_created_at": row["created_at"],
                        "b_event_count": row["event_count"],
                        "b_merged_into": row["merged_into"],
                    }
                    for row in changed
                ],
            )
        trait_rows = [
            {
                "profile_id": pid,
                "name": name,
                "value": value.value,
                "source_id": value.provenance.source_id,
                "seq": value.provenance.seq,
                "message_id": value.provenance.message_id,
                "timestamp": value.provenance.timestamp,
            }
            for pid, name in sorted(self._dirty_traits)
            if (value := self.traits.get(pid, {}).get(name)) is not None
        ]
        upsert(conn, profile_traits, trait_rows, keys=("profile_id", "name"))
        account_rows = [
            {
                "profile_id": pid,
                "group_id": group,
                "traits": link.traits,
                "seq": link.seq,
                "timestamp": link.timestamp,
            }
            for pid, group in sorted(self._dirty_accounts)
            if (link := self.accounts.get(pid, {}).get(group)) is not None
        ]
        upsert(conn, profile_accounts, account_rows, keys=("profile_id", "group_id"))
        consent_rows = [
            {
                "profile_id": pid,
                "category": category,
                "granted": choice.granted,
                "source_id": choice.provenance.source_id,
                "seq": choice.provenance.seq,
                "timestamp": choice.provenance.timestamp,
            }
            for pid, category in sorted(self._dirty_consent)
            if (choice := self.consent.get(pid, {}).get(category)) is not None
        ]
        upsert(conn, profile_consent, consent_rows, keys=("profile_id", "category"))
        if self.attribution:
            # One row per event: plain tuples to the driver, as the event log's appends do.
            marker = "?" if conn.dialect.name == "sqlite" else "%s"
            conn.exec_driver_sql(
                "INSERT INTO event_profiles (seq, profile_id, applied_to) "
                f"VALUES ({marker}, {marker}, {marker})",
                [(seq, resolve(pid) if pid else None, pid) for seq, pid in self.attribution],
            )

    def _row(self, profile_id: str) -> dict[str, Any]:
        row = self.rows[profile_id]
        return {
            "id": row.id,
            "created_seq": row.created_seq,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "event_count": row.event_count,
            "merged_into": row.merged_into,
        }
