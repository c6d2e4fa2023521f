"""The people search's index, kept by a batch stage: each surviving profile's searchable
values (names, emails, phones, identifiers other than anonymous and device ids, a company)
as one `profile_search` row of summary and terms, rewritten when the main stage changes
one of them or merges the profile, and deleted when the profile is absorbed.

The row is derived from the profile's current traits, identifiers and accounts in the
store, not from the events: the main stage has written them by the time the stage runs,
so a merge, an unmerge's replay and `tessera rebuild` all end with the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.identity.models import identities
from tessera.profiles.models import profile_accounts, profile_search, profile_traits, profiles
from tessera.profiles.search_terms import MAX_VALUE, Terms
from tessera.store.chunks import chunked
from tessera.store.upsert import upsert

if TYPE_CHECKING:
    from tessera.config import Settings
    from tessera.processor.extensions import AppliedBatch

# Identifier types that say nothing a person would search for: browser cookies, devices.
UNSEARCHED_TYPES = ("anonymous_id", "device_id", "advertising_id")
# How many identifiers a row holds, of one type and in all (a profile may have 500): the
# oldest, and a row's terms stay well under PostgreSQL's 1 MB for a tsvector.
MAX_PER_TYPE, MAX_IDENTIFIERS = 20, 100
MAX_ACCOUNTS = 20

_WORDS = {
    "name": ("name",),
    "first_name": ("first", "name"),
    "last_name": ("last", "name"),
    "email": ("email",),
    "phone": ("phone",),
    "company": ("company",),
}


def _spellings(words: tuple[str, ...]) -> list[str]:
    camel = words[0] + "".join(word.title() for word in words[1:])
    return sorted(
        {"_".join(words), "-".join(words), "".join(words), camel, camel[0].upper() + camel[1:]}
    )


# Trait name as stored (as the source sent it) -> the search's name for it.
SEARCH_TRAITS = {spelling: key for key, words in _WORDS.items() for spelling in _spellings(words)}
_TRAIT_NAMES = sorted(SEARCH_TRAITS)


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = str(value).strip()
    return text[:MAX_VALUE] if text else None


def build_row(
    traits: dict[str, list[Any]], identifiers: Sequence[tuple[str, str]], accounts: Sequence[Any]
) -> dict[str, Any] | None:
    """A profile's summary and terms, from its search traits (search name -> values),
    identifiers (type, value; oldest first) and accounts' traits (newest first); None when
    it has nothing to be found by."""

    def first(key: str) -> str | None:
        return next((t for t in map(_text, traits.get(key, ())) if t), None)

    companies = [
        text
        for value in [*traits.get("company", ()), *accounts]
        if (text := _text(value.get("name") if isinstance(value, dict) else value))
    ]
    names = [
        t
        for key in ("name", "first_name", "last_name")
        for t in map(_text, traits.get(key, ()))
        if t
    ]
    emails = [t for t in map(_text, traits.get("email", ())) if t]
    phones = [t for t in map(_text, traits.get("phone", ())) if t]
    others: list[str] = []
    for kind, value in identifiers:
        if kind == "email":
            emails.append(value)
        elif kind == "phone":
            phones.append(value)
        else:
            others.append(value)
    terms = Terms()
    terms.words(names, personal=True)
    terms.identifiers(emails, personal=True)
    terms.phones(phones)
    terms.identifiers(others, personal=False)
    terms.words(companies, personal=False)
    if not terms.terms:
        return None
    given = " ".join(part for part in (first("first_name"), first("last_name")) if part)
    return {
        "name": first("name") or given[:MAX_VALUE] or None,
        "email": emails[0] if emails else None,
        "phone": phones[0] if phones else None,
        "company": companies[0] if companies else None,
        "terms": terms.text(),
    }


def load_rows(conn: Connection, profile_ids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """The row each surviving profile of `profile_ids` should have (None: no row); an
    absorbed or unknown id is left out."""
    rows: dict[str, dict[str, Any] | None] = {}
    for chunk in chunked(sorted(set(profile_ids))):
        # Absorbed ids are left out here, not in SQL: SQLite, which keeps no statistics,
        # would rather scan `merged_into IS NULL` (every survivor) than read the ids.
        seqs: dict[str, int] = {
            pid: seq
            for pid, seq, merged_into in conn.execute(
                sa.select(profiles.c.id, profiles.c.created_seq, profiles.c.merged_into).where(
                    profiles.c.id.in_(chunk)
                )
            )
            if merged_into is None
        }
        traits: dict[str, dict[str, list[Any]]] = {pid: {} for pid in seqs}
        for pid, name, value in conn.execute(
            sa.select(profile_traits.c.profile_id, profile_traits.c.name, profile_traits.c.value)
            .where(profile_traits.c.profile_id.in_(chunk), profile_traits.c.name.in_(_TRAIT_NAMES))
            .order_by(profile_traits.c.profile_id, profile_traits.c.name)
        ):
            if pid in traits:
                traits[pid].setdefault(SEARCH_TRAITS[name], []).append(orjson.loads(value))
        found: dict[str, list[tuple[str, str]]] = {pid: [] for pid in seqs}
        per_type: dict[tuple[str, str], int] = {}
        for pid, kind, value in conn.execute(
            sa.select(identities.c.profile_id, identities.c.type, identities.c.value)
            .where(identities.c.profile_id.in_(chunk), identities.c.type.not_in(UNSEARCHED_TYPES))
            .order_by(identities.c.first_seq, identities.c.type, identities.c.value)
        ):
            count = per_type[pid, kind] = per_type.get((pid, kind), 0) + 1
            if pid in found and count <= MAX_PER_TYPE and len(found[pid]) < MAX_IDENTIFIERS:
                found[pid].append((kind, value))
        accounts: dict[str, list[Any]] = {pid: [] for pid in seqs}
        for pid, account in conn.execute(
            sa.select(profile_accounts.c.profile_id, profile_accounts.c.traits)
            .where(profile_accounts.c.profile_id.in_(chunk))
            .order_by(profile_accounts.c.seq.desc(), profile_accounts.c.group_id)
        ):
            if pid in accounts and len(accounts[pid]) < MAX_ACCOUNTS:
                accounts[pid].append(orjson.loads(account))
        for pid, seq in seqs.items():
            row = build_row(traits[pid], found[pid], accounts[pid])
            rows[pid] = None if row is None else {"seq": seq, "profile_id": pid, **row}
    return rows


_COMPARED = ("seq", "name", "email", "phone", "company", "terms")


def refresh(conn: Connection, profile_ids: Iterable[str]) -> int:
    """Bring the rows of `profile_ids` up to date; return how many were written or
    deleted (a row that is already right is left alone, sparing the index a rewrite)."""
    wanted = load_rows(conn, profile_ids)
    current: dict[str, tuple[Any, ...]] = {}
    for chunk in chunked(sorted(wanted)):
        for row in conn.execute(
            sa.select(profile_search).where(profile_search.c.profile_id.in_(chunk))
        ):
            current[row.profile_id] = tuple(getattr(row, column) for column in _COMPARED)
    writes = [
        row
        for pid, row in sorted(wanted.items())
        if row is not None and tuple(row[column] for column in _COMPARED) != current.get(pid)
    ]
    gone = sorted(pid for pid, row in wanted.items() if row is None and pid in current)
    upsert(conn, profile_search, writes, keys=("profile_id",))
    forget(conn, gone)
    return len(writes) + len(gone)


def forget(conn: Connection, profile_ids: Sequence[str]) -> None:
    for chunk in chunked(profile_ids):
        conn.execute(profile_search.delete().where(profile_search.c.profile_id.in_(chunk)))


def index_all_profiles(conn: Connection, *, chunk: int = 2_000) -> int:
    """Index every surviving profile (revision 0010 fills the index of an existing store
    with it); return how many rows were written."""
    written, after = 0, ""
    while True:
        ids = list(
            conn.execute(
                sa.select(profiles.c.id)
                .where(profiles.c.id > after)
                .order_by(profiles.c.id)
                .limit(chunk)
            ).scalars()
        )
        if not ids:
            return written
        written += refresh(conn, ids)
        after = ids[-1]


class ProfileSearchStage:
    """The batch stage (`processor.extensions.BatchStage`) that keeps `profile_search`."""

    name = "profile_search"
    tables: Sequence[sa.Table] = (profile_search,)

    def apply(self, conn: Connection, batch: AppliedBatch) -> None:
        absorbed = {gone for _survivor, gone in batch.merges}
        changes = batch.changes
        touched = {survivor for survivor, _gone in batch.merges}
        touched.update(pid for pid, name in changes.traits if name in SEARCH_TRAITS)
        touched.update(pid for pid, kind in changes.identifiers if kind not in UNSEARCHED_TYPES)
        touched.update(changes.accounts)
        forget(conn, sorted(absorbed))
        if touched - absorbed:
            refresh(conn, touched - absorbed)


def create_stage(settings: Settings) -> ProfileSearchStage:
    """The entry point in `tessera.batch_stages` (pyproject.toml): on by default."""
    return ProfileSearchStage()
