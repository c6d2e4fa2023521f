"""Audience exports: an audience's whole member list with identities and traits, read a page
at a time (`audience_snapshot`, shared with the file destination), and the export jobs people
ask for (`create_export`, `get_export`, `list_exports`); `exports_worker` runs them."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.activation.files import FORMATS
from tessera.activation.models import export_jobs
from tessera.activation.plugins import AudienceSnapshot
from tessera.audiences.models import audience_members, audiences
from tessera.audit.service import record
from tessera.errors import BadRequest, NotFound
from tessera.identity.models import identities
from tessera.profiles.models import profile_traits
from tessera.store.chunks import chunked

SNAPSHOT_COLUMNS = ["profile_id", "entered_at", "identities", "traits"]
PAGE_SIZE = 5_000
# A job's life: queued, running (again, when its worker stopped), then done or failed; a
# done job's file is deleted after the retention, and the job is then expired.
QUEUED, RUNNING, DONE, FAILED, EXPIRED = "queued", "running", "done", "failed", "expired"


# -- the member list --------------------------------------------------------------------


def audience_snapshot(conn: Connection, *, audience_id: str, now: datetime) -> AudienceSnapshot:
    """The audience's members (`profile_id, entered_at, identities, traits`), read lazily in
    profile-id order while `rows` is iterated, so `conn` must stay open until then.

    Each page is read on its own (keyset on the profile id): members who enter or leave
    while a long list is read are in it or not, but no one is listed twice.
    Raises NotFound for an unknown audience.
    """
    name = _audience_name(conn, audience_id)
    return AudienceSnapshot(
        audience_id=audience_id,
        audience_name=name,
        taken_at=now,
        columns=list(SNAPSHOT_COLUMNS),
        rows=_rows(member_pages(conn, audience_id=audience_id)),
    )


def member_pages(
    conn: Connection, *, audience_id: str, page_size: int | None = None
) -> Iterator[list[dict[str, Any]]]:
    """The members a page at a time (`PAGE_SIZE`), each page with its profiles' identities
    and traits loaded in bulk (a few queries a page, never one per member)."""
    page_size = page_size or PAGE_SIZE
    after = ""
    while True:
        members = conn.execute(
            sa.select(audience_members.c.profile_id, audience_members.c.entered_at)
            .where(
                audience_members.c.audience_id == audience_id,
                audience_members.c.profile_id > after,
            )
            .order_by(audience_members.c.profile_id)
            .limit(page_size)
        ).all()
        if not members:
            return
        ids = [member.profile_id for member in members]
        found_identities = _identities_of(conn, ids)
        found_traits = _traits_of(conn, ids)
        yield [
            {
                "profile_id": member.profile_id,
                "entered_at": member.entered_at,
                "identities": found_identities.get(member.profile_id, {}),
                "traits": found_traits.get(member.profile_id, {}),
            }
            for member in members
        ]
        if len(members) < page_size:
            return
        after = ids[-1]


def _rows(pages: Iterable[list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    for page in pages:
        yield from page


def _audience_name(conn: Connection, audience_id: str) -> str:
    name = conn.execute(
        sa.select(audiences.c.name).where(audiences.c.id == audience_id)
    ).scalar_one_or_none()
    if name is None:
        raise NotFound(f"there is no audience {audience_id!r}; GET /api/v1/audiences lists them")
    return str(name)


def _identities_of(conn: Connection, ids: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    found: dict[str, dict[str, list[str]]] = {}
    for part in chunked(ids):
        rows = conn.execute(
            sa.select(identities.c.profile_id, identities.c.type, identities.c.value)
            .where(identities.c.profile_id.in_(part))
            # Oldest first: the identifier a person was first known by leads its list.
            .order_by(identities.c.profile_id, identities.c.first_seq, identities.c.value)
        )
        for profile_id, kind, value in rows:
            found.setdefault(profile_id, {}).setdefault(kind, []).append(value)
    return found


def _traits_of(conn: Connection, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for part in chunked(ids):
        rows = conn.execute(
            sa.select(profile_traits.c.profile_id, profile_traits.c.name, profile_traits.c.value)
            .where(profile_traits.c.profile_id.in_(part))
            .order_by(profile_traits.c.profile_id, profile_traits.c.name)
        )
        for profile_id, name, value in rows:
            found.setdefault(profile_id, {})[name] = orjson.loads(value)
    return found


def count_members(conn: Connection, *, audience_id: str) -> int:
    """How many members the audience has now; NotFound for an unknown audience."""
    _audience_name(conn, audience_id)
    return int(
        conn.execute(
            sa.select(sa.func.count()).where(audience_members.c.audience_id == audience_id)
        ).scalar_one()
    )


# -- export jobs ------------------------------------------------------------------------


def _view(row: Any) -> dict[str, Any]:
    total = None if row.total is None else int(row.total)
    done = int(row.done or 0)
    if row.status == DONE:
        progress: float | None = 1.0
    elif total is None:
        progress = None  # not started: the size is counted when the job starts
    else:
        progress = round(min(1.0, done / total), 4) if total else 0.0
    return {
        "id": row.id,
        "audience_id": row.audience_id,
        "format": row.format,
        "status": row.status,
        "total": total,
        "done": done,
        "progress": progress,
        "attempts": int(row.attempts),
        "path": row.path,
        "error": row.error,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "finished_at": row.finished_at,
        "download_url": f"/api/v1/exports/{row.id}/download" if row.status == DONE else None,
    }


def create_export(
    conn: Connection, *, audience_id: str, fmt: str, actor: str | None
) -> dict[str, Any]:
    """Queue an export of the audience's members; a worker runs it
    (`exports_worker.run_next_export`)."""
    if fmt not in FORMATS:
        raise BadRequest(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    _audience_name(conn, audience_id)
    export_id = f"exp_{secrets.token_hex(12)}"
    conn.execute(
        export_jobs.insert().values(
            id=export_id,
            audience_id=audience_id,
            format=fmt,
            status=QUEUED,
            total=None,
            done=0,
            created_by=actor,
            created_at=datetime.now(UTC),
        )
    )
    return get_export(conn, export_id=export_id)


def request_export(
    conn: Connection, *, audience_id: str, fmt: str, actor: str, ip: str | None
) -> dict[str, Any]:
    """`create_export` as a person asks for it, audited in the same transaction (the API's
    route and the audience page both call this)."""
    job = create_export(conn, audience_id=audience_id, fmt=fmt, actor=actor)
    record(
        conn,
        actor=actor,
        action="export.create",
        target=f"export:{job['id']}",
        ip=ip,
        details={"audience_id": audience_id, "format": fmt},
    )
    return job


def get_export(conn: Connection, *, export_id: str) -> dict[str, Any]:
    row = conn.execute(sa.select(export_jobs).where(export_jobs.c.id == export_id)).first()
    if row is None:
        raise NotFound(f"there is no export {export_id!r}; GET /api/v1/exports lists them")
    return _view(row)


def list_exports(
    conn: Connection, *, audience_id: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Newest first."""
    query = (
        sa.select(export_jobs)
        .order_by(export_jobs.c.created_at.desc(), export_jobs.c.id.desc())
        .limit(limit)
    )
    if audience_id is not None:
        query = query.where(export_jobs.c.audience_id == audience_id)
    return [_view(row) for row in conn.execute(query)]
