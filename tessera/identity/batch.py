"""The slice of the identity graph one processor batch touches: loaded in a few bulk
queries, changed in memory while the batch's events are resolved, written back at once.

Implements `graph.GraphState`. Merges re-point identifiers in memory and are replayed as
one UPDATE each at flush (merges are rare; new identifiers are one executemany).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.identity.extract import Identifier
from tessera.identity.graph import ordered_pair
from tessera.identity.models import identities, merge_blocks, profile_merges
from tessera.store.chunks import chunked

_NO_COUNTS: Mapping[str, int] = {}


@dataclass(slots=True)
class Merge:
    survivor: str
    absorbed: str
    rule: str
    identifiers: list[Identifier]
    seq: int
    message_id: str
    at: datetime


class IdentityBatch:
    def __init__(self) -> None:
        self._owner: dict[Identifier, str] = {}
        self._counts: dict[str, Counter[str]] = {}
        self._merge_counts: dict[str, int] = {}
        self._blocks: set[tuple[str, str]] = set()
        self._redirect: dict[str, str] = {}
        self._any_blocks: bool | None = None
        self.new_links: list[tuple[Identifier, str, int]] = []
        self.merges: list[Merge] = []

    # -- loading ---------------------------------------------------------------------------

    def load(
        self, conn: Connection, idents: Iterable[Identifier], may_create: Iterable[str] = ()
    ) -> set[str]:
        """Load owners of `idents` and what resolution needs of those owners; return them.

        `may_create` names the profiles the batch's events would create: ids derive from
        events, so a block from an unmerge can name a profile a replay is about to re-create.
        """
        by_type: dict[str, list[str]] = {}
        for ident in set(idents):
            if ident not in self._owner:
                by_type.setdefault(ident.type, []).append(ident.value)
        for kind, values in by_type.items():
            for chunk in chunked(values):
                query = sa.select(identities.c.value, identities.c.profile_id).where(
                    identities.c.type == kind, identities.c.value.in_(chunk)
                )
                for value, owner in conn.execute(query):
                    self._owner[Identifier(kind, value)] = owner
        owners = set(self._owner.values()) - set(self._counts)
        self._load_profiles(conn, sorted(owners))
        self._load_blocks(conn, sorted(set(may_create) - owners))
        return owners

    def _load_profiles(self, conn: Connection, profile_ids: list[str]) -> None:
        for pid in profile_ids:
            self._counts[pid] = Counter()
            self._merge_counts[pid] = 0
        for chunk in chunked(profile_ids):
            counts = (
                sa.select(identities.c.profile_id, identities.c.type, sa.func.count())
                .where(identities.c.profile_id.in_(chunk))
                .group_by(identities.c.profile_id, identities.c.type)
            )
            for pid, kind, count in conn.execute(counts):
                self._counts[pid][kind] = int(count)
            merges = (
                sa.select(profile_merges.c.survivor_id, sa.func.count())
                .where(profile_merges.c.survivor_id.in_(chunk))
                .group_by(profile_merges.c.survivor_id)
            )
            for pid, count in conn.execute(merges):
                self._merge_counts[pid] = int(count)
        self._load_blocks(conn, profile_ids)

    def _load_blocks(self, conn: Connection, profile_ids: list[str]) -> None:
        if self._any_blocks is None:
            # Most stores have no unmerge blocks at all: one cheap probe saves big IN lists.
            self._any_blocks = (
                conn.execute(sa.select(merge_blocks.c.profile_a).limit(1)).first() is not None
            )
        if not self._any_blocks:
            return
        for chunk in chunked(profile_ids):
            blocks = sa.select(merge_blocks.c.profile_a, merge_blocks.c.profile_b).where(
                sa.or_(merge_blocks.c.profile_a.in_(chunk), merge_blocks.c.profile_b.in_(chunk))
            )
            self._blocks.update((a, b) for a, b in conn.execute(blocks))

    # -- GraphState ------------------------------------------------------------------------

    def resolve_id(self, profile_id: str) -> str:
        while profile_id in self._redirect:
            profile_id = self._redirect[profile_id]
        return profile_id

    def owner(self, ident: Identifier) -> str | None:
        owner = self._owner.get(ident)
        return None if owner is None else self.resolve_id(owner)

    def counts(self, profile_id: str) -> Mapping[str, int]:
        return self._counts.get(profile_id, _NO_COUNTS)

    def merge_count(self, profile_id: str) -> int:
        return self._merge_counts.get(profile_id, 0)

    def blocked(self, a: str, b: str) -> bool:
        return ordered_pair(a, b) in self._blocks

    # -- changes ---------------------------------------------------------------------------

    def create(self, profile_id: str) -> None:
        self._counts[profile_id] = Counter()
        self._merge_counts[profile_id] = 0

    def link(self, profile_id: str, idents: list[Identifier], seq: int) -> None:
        counts = self._counts.setdefault(profile_id, Counter())
        for ident in idents:
            self._owner[ident] = profile_id
            counts[ident.type] += 1
            self.new_links.append((ident, profile_id, seq))

    def merge(self, merge: Merge) -> None:
        survivor, absorbed = merge.survivor, merge.absorbed
        self._redirect[absorbed] = survivor
        self._counts[survivor] = self._counts.get(survivor, Counter()) + self._counts.pop(
            absorbed, Counter()
        )
        self._merge_counts[survivor] = self._merge_counts.get(survivor, 0) + 1
        self._blocks = {
            ordered_pair(survivor if a == absorbed else a, survivor if b == absorbed else b)
            for a, b in self._blocks
        }
        self.merges.append(merge)

    # -- writing ---------------------------------------------------------------------------

    def flush(self, conn: Connection) -> None:
        for merge in self.merges:
            conn.execute(
                profile_merges.insert().values(
                    survivor_id=merge.survivor,
                    absorbed_id=merge.absorbed,
                    rule=merge.rule,
                    identifiers=orjson.dumps([str(i) for i in merge.identifiers]).decode(),
                    seq=merge.seq,
                    message_id=merge.message_id,
                    merged_at=merge.at,
                )
            )
            conn.execute(
                identities.update()
                .where(identities.c.profile_id == merge.absorbed)
                .values(profile_id=merge.survivor)
            )
        if self.new_links:
            conn.execute(
                identities.insert(),
                [
                    {
                        "type": i.type,
                        "value": i.value,
                        "profile_id": self.resolve_id(p),
                        "first_seq": s,
                    }
                    for i, p, s in self.new_links
                ],
            )
