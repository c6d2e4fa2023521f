"""Group commit for the event log: many concurrent requests share one transaction.

Request handlers call `await writer.append(rows)`. A single writer thread drains the queue,
inserts everything waiting (up to `max_commit_events`) with one executemany in one
transaction, and only then resolves each caller's future, so the HTTP 200 goes out after
the commit. When more than `max_queue_events` wait, `append` raises `TooManyRequests`
instead of queueing, so memory stays bounded under overload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tessera.errors import ServiceUnavailable, TooManyRequests
from tessera.eventlog.service import NewEvent, append_events
from tessera.logs import event

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    rows: Sequence[NewEvent]
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


@dataclass(slots=True)
class WriterStats:
    committed_events: int = 0
    new_events: int = 0
    commits: int = 0
    failed_commits: int = 0
    rejected_overload: int = 0
    last_commit_seconds: float = 0.0
    queued_events: int = 0


class EventLogWriter:
    def __init__(
        self,
        engine: Engine,
        *,
        max_queue_events: int = 50_000,
        max_commit_events: int = 5_000,
        commit_timeout_seconds: float = 10.0,
    ) -> None:
        self._engine = engine
        self._max_queue_events = max_queue_events
        self._max_commit_events = max_commit_events
        self._commit_timeout = commit_timeout_seconds
        self._queue: deque[_Pending] = deque()
        self._queued_events = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None
        self.stats = WriterStats()
        # Called in the writer thread after each commit (the processor's wake-up).
        self.on_commit: Callable[[], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="eventlog-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def queued_events(self) -> int:
        return self._queued_events

    # -- the request side ----------------------------------------------------------------

    async def append(self, rows: Sequence[NewEvent]) -> None:
        """Return once `rows` are committed; raise TooManyRequests or ServiceUnavailable."""
        if not rows:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._stopping or self._thread is None:
                raise ServiceUnavailable("the event log is shutting down; retry shortly")
            if self._queued_events and self._queued_events + len(rows) > self._max_queue_events:
                self.stats.rejected_overload += len(rows)
                raise TooManyRequests(
                    f"{self._queued_events} events are waiting to be written, the limit is "
                    f"{self._max_queue_events}; retry after the Retry-After delay",
                    retry_after=1,
                )
            self._queued_events += len(rows)
            self._queue.append(_Pending(rows, future, loop))
            self._cond.notify()
        timer = loop.call_later(self._commit_timeout, self._expire, future)
        try:
            await future
        finally:
            timer.cancel()

    def _expire(self, future: asyncio.Future[None]) -> None:
        # The rows stay queued and may still commit; the client's retry is deduplicated.
        if not future.done():
            future.set_exception(
                ServiceUnavailable(
                    f"the event log did not commit within {self._commit_timeout:g}s; retry "
                    "(a retried message is deduplicated by its messageId)"
                )
            )

    # -- the writer thread -----------------------------------------------------------------

    def _take(self) -> list[_Pending] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            taken: list[_Pending] = []
            count = 0
            while self._queue and (
                not taken or count + len(self._queue[0].rows) <= self._max_commit_events
            ):
                item = self._queue.popleft()
                taken.append(item)
                count += len(item.rows)
            return taken

    def _run(self) -> None:
        while (group := self._take()) is not None:
            try:
                self._commit(group)
            except Exception:  # pragma: no cover - the loop must survive anything
                log.exception("eventlog.writer_crashed")
                _settle(group, ServiceUnavailable("the event log writer failed; retry"))
            finally:
                with self._cond:
                    self._queued_events -= sum(len(item.rows) for item in group)
                    self.stats.queued_events = self._queued_events
        self._drop_connection()

    def _commit(self, group: list[_Pending]) -> None:
        rows = [row for item in group for row in item.rows]
        started = time.perf_counter()
        try:
            # One connection, held by this thread: no pool checkout per commit.
            if self._conn is None:
                self._conn = self._engine.connect()
            with self._conn.begin():
                new = append_events(self._conn, rows)
        except sa.exc.SQLAlchemyError as exc:
            self.stats.failed_commits += 1
            self._drop_connection()
            if len(group) > 1:
                # Isolate the failing request so one bad write cannot fail its neighbours.
                for item in group:
                    self._commit([item])
                return
            error = str(getattr(exc, "orig", None) or exc)[:300]
            event(log, logging.ERROR, "eventlog.commit_failed", events=len(rows), error=error)
            _settle(group, ServiceUnavailable("the event log could not be written; retry shortly"))
            return
        self.stats.commits += 1
        self.stats.committed_events += len(rows)
        if new >= 0:
            self.stats.new_events += new
        self.stats.last_commit_seconds = time.perf_counter() - started
        _settle(group, None)
        if self.on_commit is not None:
            self.on_commit()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self._conn.close()
            self._conn = None


def _settle(group: list[_Pending], error: BaseException | None) -> None:
    """Resolve the futures of `group`, with one cross-thread call per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for item in group:
        by_loop.setdefault(item.loop, []).append(item.future)

    def settle(futures: list[asyncio.Future[None]]) -> None:
        for future in futures:
            if future.done():  # timed out or cancelled meanwhile
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    for loop, futures in by_loop.items():
        # The request's loop may be gone (server shutting down): nobody is waiting then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, futures)
