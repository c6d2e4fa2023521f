"""How workers run audience export jobs: one at a time under a lease renewed with every
page, a stopped worker's job taken over and started again (a few times at most), and old
files deleted after the retention (`run_next_export`, `expire_exports`)."""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tessera.activation.exports import (
    DONE,
    EXPIRED,
    FAILED,
    QUEUED,
    RUNNING,
    SNAPSHOT_COLUMNS,
    count_members,
    member_pages,
)
from tessera.activation.files import Format, remove_temporary_files, write_table
from tessera.activation.models import export_jobs
from tessera.errors import TesseraError

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
MAX_ATTEMPTS = 3
MAX_ERROR = 4_000

# -- running a job under a lease --------------------------------------------------------
#
# A worker holds the job it runs under a lease, renewed with every page it writes. A job
# still `running` once its lease has run out lost its worker (killed, out of memory, its
# machine gone): the next worker that looks for work starts it again from the beginning,
# into a fresh temporary file, and removes the temporary files of the attempts before. A
# job whose workers stopped MAX_ATTEMPTS times fails instead: one that stops every worker
# that runs it (an audience too large for their memory) must not stop them all in turn.


class _LeaseLost(Exception):
    """Another worker took this worker's job over: it did not renew its lease in time."""


@dataclass
class _Held:
    """A job this worker claimed, and the lease it holds on it."""

    engine: Engine
    id: str
    audience_id: str
    format: Format
    attempt: int
    owner: str
    clock: Callable[[], datetime]
    lease: timedelta

    @property
    def file_name(self) -> str:
        return f"audience-{self.audience_id}-{self.id}.{self.format}"

    def renew(self, **values: Any) -> None:
        """Write `values` (progress) and extend the lease, in a short transaction of its own
        so that readers see progress while the file grows. _LeaseLost if the job is not
        this worker's any more."""
        if not self._update(lease_until=self.clock() + self.lease, **values):
            raise _LeaseLost(f"export {self.id!r} was taken over from worker {self.owner!r}")

    def finish(self, status: str, **values: Any) -> bool:
        """Record the outcome; False (nothing written) if the job is not this worker's."""
        return self._update(status=status, finished_at=self.clock(), **values)

    def _update(self, **values: Any) -> bool:
        jobs = export_jobs.c
        with self.engine.begin() as conn:
            updated = conn.execute(
                export_jobs.update()
                .where(jobs.id == self.id, jobs.status == RUNNING, jobs.lease_owner == self.owner)
                .values(**values)
            )
        return updated.rowcount == 1


def _free(now: datetime) -> sa.ColumnElement[bool]:
    """Jobs a worker may start: queued ones, and running ones whose worker stopped renewing
    its lease (rows from before leases have none)."""
    jobs = export_jobs.c
    return sa.or_(
        jobs.status == QUEUED,
        sa.and_(jobs.status == RUNNING, sa.or_(jobs.lease_until.is_(None), jobs.lease_until < now)),
    )


def claim_export(
    conn: Connection,
    *,
    export_id: str,
    owner: str,
    now: datetime,
    lease: timedelta = timedelta(seconds=LEASE_SECONDS),
) -> bool:
    """Take a job for the worker `owner` until `now + lease`: a queued one, or a running one
    whose lease ran out, which then starts again from nothing. Optimistic: the update only
    matches while the job is free, so of two workers that picked the same job, exactly one
    gets it (the other finds the lease it just took)."""
    jobs = export_jobs.c
    claimed = conn.execute(
        export_jobs.update()
        .where(jobs.id == export_id, _free(now))
        .values(
            status=RUNNING,
            lease_owner=owner,
            lease_until=now + lease,
            attempts=jobs.attempts + 1,
            total=None,
            done=0,
        )
    )
    return claimed.rowcount == 1


def _claim_next(
    engine: Engine,
    *,
    export_dir: Path,
    owner: str,
    clock: Callable[[], datetime],
    lease: timedelta,
) -> _Held | None:
    """The oldest free job, claimed for `owner`; None when there is none. A stopped
    worker's job that used up its attempts is failed on the way."""
    while True:
        now = clock()
        claimed = gave_up = False
        with engine.begin() as conn:
            row = conn.execute(
                sa.select(export_jobs)
                .where(_free(now))
                .order_by(export_jobs.c.created_at, export_jobs.c.id)
                .limit(1)
            ).first()
            if row is None:
                return None
            if row.status == RUNNING and row.attempts >= MAX_ATTEMPTS:
                gave_up = _give_up(conn, row, now)
            else:
                claimed = claim_export(conn, export_id=row.id, owner=owner, now=now, lease=lease)
        held = _Held(
            engine=engine,
            id=row.id,
            audience_id=row.audience_id,
            format=row.format,
            attempt=row.attempts + 1,
            owner=owner,
            clock=clock,
            lease=lease,
        )
        # Its worker stopped mid-file: what it wrote is of no use to anyone. Only the worker
        # that moved the job on removes it; one that lost the race for the job might
        # otherwise remove the winner's new temporary file.
        if row.status == RUNNING and (claimed or gave_up):
            remove_temporary_files(str(export_dir), held.file_name)
        if claimed:
            if row.status == RUNNING:
                fields = {"export_id": row.id, "stopped": row.lease_owner, "attempt": held.attempt}
                log.warning("export.taken_over", extra={"fields": fields})
            return held
        # Another worker took it between our read and our update, or it failed for good:
        # try the next one.


def _give_up(conn: Connection, row: Any, now: datetime) -> bool:
    until = "" if row.lease_until is None else f" at {row.lease_until:%Y-%m-%dT%H:%M:%SZ}"
    error = (
        f"the worker running it stopped {row.attempts} times without finishing (the last, "
        f"{row.lease_owner!r}, stopped renewing its lease{until}); its log may say why, "
        "such as running out of memory; export again"
    )
    failed = conn.execute(
        export_jobs.update()
        .where(export_jobs.c.id == row.id, _free(now))
        .values(status=FAILED, error=error, finished_at=now)
    )
    if failed.rowcount != 1:
        return False
    fields = {"export_id": row.id, "audience_id": row.audience_id, "error": error}
    log.warning("export.failed", extra={"fields": fields})
    return True


def run_next_export(
    engine: Engine,
    *,
    export_dir: Path,
    clock: Callable[[], datetime] | None = None,
    owner: str | None = None,
    lease_seconds: float = LEASE_SECONDS,
) -> bool:
    """Run the oldest job a worker may start to the end (a queued one, or one whose worker
    stopped, from the beginning); False when there was none.

    The file is `audience-{audience_id}-{export_id}.{format}` in `export_dir`. `done` is
    committed after every page, renewing the worker's lease on the job, so the API shows
    progress while the job runs. Any error fails the job with its text; it is never lost,
    and never raised to the caller's loop. A worker whose job was taken over (it did not
    renew its lease for `lease_seconds`) leaves the job alone. `owner` names this worker in
    the job (a random name otherwise); `clock` gives the lease's times and `finished_at`
    (tests pin it), UTC now otherwise.
    """
    held = _claim_next(
        engine,
        export_dir=export_dir,
        owner=owner or f"export-{secrets.token_hex(6)}",
        clock=clock or (lambda: datetime.now(UTC)),
        lease=timedelta(seconds=lease_seconds),
    )
    if held is None:
        return False
    fields: dict[str, Any] = {"export_id": held.id, "audience_id": held.audience_id}
    try:
        with engine.connect() as conn:
            # Deleted since the job was queued: NotFound, before any file is begun.
            total = count_members(conn, audience_id=held.audience_id)
        held.renew(total=total)
        path, rows = _write_export(held, export_dir)
    except _LeaseLost:
        log.warning("export.lease_lost", extra={"fields": fields})
        return True
    except Exception as exc:
        fields["error"] = str(exc)
        if isinstance(exc, TesseraError | OSError):  # expected: the error says it all
            log.warning("export.failed", extra={"fields": fields})
        else:
            log.exception("export.failed", extra={"fields": fields})
        held.finish(FAILED, error=f"{type(exc).__name__}: {exc}"[:MAX_ERROR])
        return True
    # Members may enter or leave while a large audience is read: `total` becomes what the
    # file holds, so a finished job's numbers describe its file.
    if not held.finish(DONE, path=path, total=rows, done=rows):
        # The file is whole (another worker writing the same name renames a whole file).
        log.warning("export.lease_lost", extra={"fields": fields})
    return True


def _write_export(held: _Held, export_dir: Path) -> tuple[str, int]:
    written = 0

    def with_progress(pages: Iterator[list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        nonlocal written
        for page in pages:
            yield from page
            written += len(page)
            held.renew(done=written)

    with held.engine.connect() as conn:
        path = write_table(
            str(export_dir),
            held.file_name,
            held.format,
            list(SNAPSHOT_COLUMNS),
            with_progress(member_pages(conn, audience_id=held.audience_id)),
        )
    return path, written


# -- retention --------------------------------------------------------------------------


def expire_exports(
    engine: Engine, *, export_dir: Path, now: datetime, retention: timedelta
) -> list[str]:
    """Delete the files of jobs that finished more than `retention` before `now`, and mark
    the jobs `expired`; delete temporary files that stopped workers left as long ago (the
    next worker removes its job's at once, but a job may not come back). Returns the
    expired jobs' ids."""
    before = now - retention
    with engine.connect() as conn:
        old = conn.execute(
            sa.select(export_jobs.c.id, export_jobs.c.path).where(
                export_jobs.c.status == DONE, export_jobs.c.finished_at < before
            )
        ).all()
    expired = []
    for export_id, path in old:
        # The file first: a worker stopped in between leaves the job `done` without its
        # file (a download says it is gone), and the next pass marks it.
        with contextlib.suppress(FileNotFoundError):
            (Path(export_dir) / Path(path).name).unlink()
        with engine.begin() as conn:
            marked = conn.execute(
                export_jobs.update()
                .where(export_jobs.c.id == export_id, export_jobs.c.status == DONE)
                .values(status=EXPIRED)
            )
        if marked.rowcount == 1:
            expired.append(export_id)
    remove_temporary_files(str(export_dir), "audience-*", older_than=before)
    if expired:
        log.info("export.expired", extra={"fields": {"exports": len(expired)}})
    return expired
