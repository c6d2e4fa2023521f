"""What the tracking API did for each source, kept for people: messages accepted and refused
by day, and the newest refused messages with the reason each client was told.

The request side only touches memory: `accepted` adds to a counter, `refused` appends to a
short per-source queue. A thread (`IngestActivity`) writes what gathered to the store every
`flush_seconds`, in one transaction: an upsert per source and day, one executemany of
refusals, and a trim that keeps the newest `keep` refusals of each source it wrote to. So
the accepted path never waits for it, a refused message costs no write on the request's
thread, and a client that sends nothing but bad messages costs at most
`max_refusals_per_flush` rows per source per flush.

Refusals are kept only for known sources. A request with no usable write key is counted,
by status, in this process (`unattributed`), never stored: anyone may send those, and
storing them would let anyone fill the table.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from tessera.ingest.models import source_activity, source_refusals
from tessera.logs import event

log = logging.getLogger(__name__)

EXCERPT_CHARS = 1_000
REASON_CHARS = 500
# Days of counts kept: the sources page shows today and the last time a source was heard.
ACTIVITY_DAYS = 35


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refused message (or request) of a known source."""

    source_id: int
    received_at: datetime
    status: int
    code: str
    reason: str
    message_id: str | None = None
    excerpt: str | None = None


@dataclass(slots=True)
class _Tally:
    accepted: int = 0
    refused: int = 0
    last_accepted_at: datetime | None = None
    last_refused_at: datetime | None = None


@dataclass(slots=True)
class ActivityStats:
    """This process's figures, for /metrics."""

    refusals_written: int = 0
    refusals_not_kept: int = 0  # past `max_refusals_per_flush`, or lost to a failed flush
    failed_flushes: int = 0
    unattributed: Counter[int] = field(default_factory=Counter)  # refused, no known source


class IngestActivity:
    def __init__(
        self,
        engine: Engine,
        *,
        keep: int = 1_000,
        flush_seconds: float = 0.5,
        max_refusals_per_flush: int = 100,
    ) -> None:
        self._engine = engine
        self.keep = keep
        self.flush_seconds = flush_seconds
        self.max_refusals_per_flush = max_refusals_per_flush
        self._lock = threading.Lock()
        self._tallies: dict[tuple[int, date], _Tally] = {}
        self._refusals: dict[int, deque[Refusal]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._trimmed_days_on: date | None = None
        self.stats = ActivityStats()

    # -- the request side (the event loop's thread) ------------------------------------------

    def accepted(self, source_id: int, count: int, at: datetime) -> None:
        with self._lock:
            tally = self._tallies.get((source_id, at.date()))
            if tally is None:
                tally = self._tallies[(source_id, at.date())] = _Tally()
            tally.accepted += count
            tally.last_accepted_at = at

    def refused(self, refusal: Refusal) -> None:
        with self._lock:
            key = (refusal.source_id, refusal.received_at.date())
            tally = self._tallies.get(key)
            if tally is None:
                tally = self._tallies[key] = _Tally()
            tally.refused += 1
            tally.last_refused_at = refusal.received_at
            queue = self._refusals.get(refusal.source_id)
            if queue is None:
                queue = self._refusals[refusal.source_id] = deque(
                    maxlen=self.max_refusals_per_flush
                )
            if len(queue) == queue.maxlen:
                self.stats.refusals_not_kept += 1  # the oldest waiting one makes room
            queue.append(refusal)

    def unattributed(self, status: int) -> None:
        self.stats.unattributed[status] += 1

    # -- the writer thread -------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="ingest-activity", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is gathered, then stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # pragma: no cover - the loop must survive anything
                log.exception("ingest.activity_flush_crashed")

    def flush(self) -> int:
        """Write what gathered since the last flush; return how many refusals were written."""
        with self._lock:
            tallies, self._tallies = self._tallies, {}
            queues, self._refusals = self._refusals, {}
        refusals = [refusal for queue in queues.values() for refusal in queue]
        if not tallies and not refusals:
            return 0
        today = datetime.now(UTC).date()
        try:
            with self._engine.begin() as conn:
                _add_tallies(conn, tallies)
                if refusals:
                    conn.execute(source_refusals.insert(), [_row(r) for r in refusals])
                    for source_id in queues:
                        _trim(conn, source_id=source_id, keep=self.keep)
                if self._trimmed_days_on != today:
                    cutoff = today - timedelta(days=ACTIVITY_DAYS)
                    conn.execute(source_activity.delete().where(source_activity.c.day < cutoff))
        except sa.exc.SQLAlchemyError as exc:
            # Counts go back to be written next time; refusals are dropped (and counted):
            # holding them could grow without bound while the store is away.
            self.stats.failed_flushes += 1
            self.stats.refusals_not_kept += len(refusals)
            with self._lock:
                for key, tally in tallies.items():
                    self._merge_back(key, tally)
            error = str(getattr(exc, "orig", None) or exc)[:300]
            event(log, logging.WARNING, "ingest.activity_flush_failed", error=error)
            return 0
        self._trimmed_days_on = today
        self.stats.refusals_written += len(refusals)
        return len(refusals)

    def _merge_back(self, key: tuple[int, date], tally: _Tally) -> None:
        into = self._tallies.setdefault(key, _Tally())
        into.accepted += tally.accepted
        into.refused += tally.refused
        into.last_accepted_at = into.last_accepted_at or tally.last_accepted_at
        into.last_refused_at = into.last_refused_at or tally.last_refused_at


# The closing quote is optional: the key may be cut off where the excerpt ends.
_BODY_WRITE_KEY = re.compile(rb'"writeKey"\s*:\s*"[^"]*"?')
HIDDEN = "[write key]"


def excerpt_of_message(message: object, write_key: str | None) -> str:
    """The start of one message as JSON, without its `writeKey`."""
    if isinstance(message, dict) and "writeKey" in message:
        message = {name: value for name, value in message.items() if name != "writeKey"}
    try:
        text = orjson.dumps(message)
    except (TypeError, orjson.JSONEncodeError):
        text = repr(message)[: EXCERPT_CHARS * 4].encode()
    return _cut(text, write_key)


def excerpt_of_body(body: bytes | None, write_key: str | None) -> str | None:
    """The start of a request body as read (decompressed), any write key in it hidden."""
    if not body:
        return None
    return _cut(_BODY_WRITE_KEY.sub(b'"writeKey":"' + HIDDEN.encode() + b'"', body), write_key)


def _cut(text: bytes, write_key: str | None) -> str:
    """The first `EXCERPT_CHARS` characters of `text`, the key hidden before the cut (so
    that no part of it is left where the cut falls)."""
    window = text[: EXCERPT_CHARS * 4 + 64]
    if write_key:
        window = window.replace(write_key.encode(), HIDDEN.encode())
    return window.decode("utf-8", "replace")[:EXCERPT_CHARS]


def _row(refusal: Refusal) -> dict[str, Any]:
    return {
        "source_id": refusal.source_id,
        "received_at": refusal.received_at,
        "status": refusal.status,
        "code": refusal.code[:32],
        "reason": refusal.reason[:REASON_CHARS],
        "message_id": None if refusal.message_id is None else refusal.message_id[:255],
        "excerpt": None if refusal.excerpt is None else refusal.excerpt[:EXCERPT_CHARS],
    }


def _add_tallies(conn: Connection, tallies: dict[tuple[int, date], _Tally]) -> None:
    """Add to each (source, day) row, creating it: several processes add to the same rows."""
    if not tallies:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    insert = dialect.insert(source_activity)
    current, new = source_activity.c, insert.excluded
    statement = insert.on_conflict_do_update(
        index_elements=["source_id", "day"],
        set_={
            "accepted": current.accepted + new.accepted,
            "refused": current.refused + new.refused,
            # The latest flush's moment wins; processes differ by at most a flush.
            "last_accepted_at": sa.func.coalesce(new.last_accepted_at, current.last_accepted_at),
            "last_refused_at": sa.func.coalesce(new.last_refused_at, current.last_refused_at),
        },
    )
    conn.execute(
        statement,
        [
            {
                "source_id": source_id,
                "day": day,
                "accepted": tally.accepted,
                "refused": tally.refused,
                "last_accepted_at": tally.last_accepted_at,
                "last_refused_at": tally.last_refused_at,
            }
            for (source_id, day), tally in tallies.items()
        ],
    )


def _trim(conn: Connection, *, source_id: int, keep: int) -> None:
    """Delete the source's refusals older than its newest `keep`: a walk of `keep` entries
    down the (source_id, id) index, then the few rows past it."""
    table = source_refusals
    oldest_kept = (
        sa.select(table.c.id)
        .where(table.c.source_id == source_id)
        .order_by(table.c.id.desc())
        .limit(1)
        .offset(keep - 1)
        .scalar_subquery()
    )
    conn.execute(table.delete().where(table.c.source_id == source_id, table.c.id < oldest_kept))


# -- reading ---------------------------------------------------------------------------------


def list_refusals(
    conn: Connection, *, source_id: int, after_id: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The source's refused messages in the order they came: those after `after_id` (the
    oldest first, for a reader following along), or else the newest `limit`."""
    table = source_refusals
    query = sa.select(table).where(table.c.source_id == source_id)
    if after_id is not None:
        rows = conn.execute(query.where(table.c.id > after_id).order_by(table.c.id).limit(limit))
        return [dict(row) for row in rows.mappings()]
    rows = conn.execute(query.order_by(table.c.id.desc()).limit(limit))
    return [dict(row) for row in reversed(rows.mappings().all())]


def last_refusal_id(conn: Connection, *, source_id: int) -> int:
    """The id of the source's newest refusal (0 when none): where a live view starts."""
    value = conn.execute(
        sa.select(sa.func.max(source_refusals.c.id)).where(source_refusals.c.source_id == source_id)
    ).scalar_one()
    return int(value or 0)


@dataclass(frozen=True, slots=True)
class SourceActivity:
    accepted_today: int = 0
    refused_today: int = 0
    last_accepted_at: datetime | None = None
    last_refused_at: datetime | None = None


def activity_by_source(
    conn: Connection, *, source_id: int | None = None, today: date | None = None
) -> dict[int, SourceActivity]:
    """Today's counts (UTC) and the last moments heard, per source (or for one) that sent
    anything in the last `ACTIVITY_DAYS`: at most one row per source and day is read."""
    today = today or datetime.now(UTC).date()
    table = source_activity
    is_today = table.c.day == today
    query = sa.select(
        table.c.source_id,
        sa.func.sum(sa.case((is_today, table.c.accepted), else_=0)),
        sa.func.sum(sa.case((is_today, table.c.refused), else_=0)),
        sa.func.max(table.c.last_accepted_at),
        sa.func.max(table.c.last_refused_at),
    ).group_by(table.c.source_id)
    if source_id is not None:
        query = query.where(table.c.source_id == source_id)
    found = {}
    for row_source, accepted, refused, last_accepted, last_refused in conn.execute(query):
        found[row_source] = SourceActivity(
            int(accepted or 0), int(refused or 0), _aware(last_accepted), _aware(last_refused)
        )
    return found


def _aware(moment: Any) -> datetime | None:
    """max() over a UtcDateTime column loses the type on SQLite: it comes back as text."""
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    assert isinstance(moment, datetime)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
