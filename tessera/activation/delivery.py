"""The delivery worker: takes each enabled destination's outbox in order and sends it through
the destination's plugin, at least once, keeping each person's order.

One asyncio task per destination leased by this worker (a lease row, so several workers on
PostgreSQL share destinations and a dead worker's are taken over when its lease runs out).
A cycle reads the messages that may go, splits them into lanes by person (a person's
messages always share a lane, and a lane sends in order), runs the lanes concurrently, and
writes every outcome back in one transaction. A failed call holds its people back until
their retry (exponential backoff with jitter, or the destination's `Retry-After`); past the
maximum age a message becomes a dead letter. A run of failed calls pauses the destination:
then only one probe call goes now and then, until one works or someone resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from tessera.activation import delivery_store as store
from tessera.activation.mapping import FieldMapping, parse_mapping
from tessera.activation.plugins import (
    DeliveryFailed,
    Destination,
    Message,
    destination_types,
    instantiate,
)
from tessera.config import Settings
from tessera.logs import event
from tessera.store.secrets import Keyring, load_keyring

log = logging.getLogger(__name__)
MAX_MESSAGES_PER_CYCLE = 2000
HOUSEKEEPING_SECONDS = 10.0


def backoff_seconds(attempts: int, *, base: float, cap: float) -> float:
    """The delay before retry number `attempts + 1`: doubling from `base`, at most `cap`,
    with jitter so that many failed messages do not come back at the same instant."""
    delay = min(cap, base * (2 ** min(attempts, 30)))
    jitter: float = random.uniform(0.5, 1.0)  # not a secret: spreads retries out
    return float(delay * jitter)


def tessera_message(pending: store.Pending, profile: store.Profile | None) -> dict[str, Any]:
    """Tessera's message for a destination, before its field mapping."""
    body: dict[str, Any] = {
        "messageId": pending.message_id,
        "kind": pending.kind,
        "timestamp": pending.created_at.isoformat(),
        "profile": {
            "id": profile.id if profile else None,
            "identities": profile.identities if profile else {},
            "traits": profile.traits if profile else {},
        },
    }
    payload = orjson.loads(pending.payload)
    if pending.kind == "event":
        body["event"] = payload
        if isinstance(payload.get("timestamp"), str):
            body["timestamp"] = payload["timestamp"]
    else:
        at = payload.pop("at", None)
        body.update(payload)
        if isinstance(at, str):
            body["timestamp"] = at
    return body


class _Active:
    """A leased destination's plugin, rebuilt when its configuration changes."""

    def __init__(self, lease: store.Lease, plugin: Destination, mapping: FieldMapping) -> None:
        self.version = lease.updated_at
        self.plugin = plugin
        self.mapping = mapping


class Deliverer:
    """Runs delivery for every enabled destination in a thread with its own event loop."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        clock: Callable[[], datetime] | None = None,
        housekeeping: Callable[[], None] | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        # Decrypts each destination's secrets when its plugin starts; one no key opens
        # leaves that destination unstarted, with the reason in its health.
        self._keyring = keyring or load_keyring(
            secret_key=settings.secret_key, database_url=settings.database_url
        )
        self._clock = clock or (lambda: datetime.now(UTC))
        self._housekeeping = housekeeping
        self.owner = f"{uuid.uuid4().hex[:12]}"
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Every idle wait in the loop registers an event here; a wake sets them all.
        self._waiters: set[asyncio.Event] = set()
        self._stopping = threading.Event()
        self._active: dict[str, _Active] = {}
        self.cycles = 0
        self.failures = 0

    # -- thread control ----------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="delivery", daemon=True
        )
        self._thread.start()
        ready.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        """New messages are in the outbox (thread-safe)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep up to `seconds`, or until `wake()`; each wait has its own event, so one
        wake reaches every waiting task and none stays set to spin a loop."""
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), seconds)
        finally:
            self._waiters.discard(waiter)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready.set()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    # -- the loop ----------------------------------------------------------------------

    async def _main(self) -> None:
        tasks: dict[str, asyncio.Task[None]] = {}
        exports = asyncio.create_task(self._exports())
        housekept = 0.0
        while not self._stopping.is_set():
            try:
                ids = await asyncio.to_thread(self._enabled)
            except Exception as exc:
                event(log, logging.ERROR, "delivery.store_failed", error=repr(exc)[:500])
                ids = list(tasks)
            for destination_id in ids:
                task = tasks.get(destination_id)
                if task is None or task.done():
                    tasks[destination_id] = asyncio.create_task(self._follow(destination_id))
            for destination_id in set(tasks) - set(ids):
                tasks.pop(destination_id).cancel()
            if time.monotonic() - housekept > HOUSEKEEPING_SECONDS:
                housekept = time.monotonic()
                await asyncio.to_thread(self._housekeep)
            await self._pause(self._settings.delivery_poll_seconds * 5)
        for task in [*tasks.values(), exports]:
            task.cancel()
        await asyncio.gather(*tasks.values(), exports, return_exceptions=True)
        for active in self._active.values():
            await active.plugin.aclose()
        self._active.clear()
        await asyncio.to_thread(self._release_all, list(tasks))

    async def _exports(self) -> None:
        """Audience export jobs, one at a time, as they are asked for (and those whose
        worker stopped, once its lease has run out)."""
        from tessera.activation.exports_worker import run_next_export

        while not self._stopping.is_set():
            try:
                ran = await asyncio.to_thread(
                    run_next_export,
                    self._engine,
                    export_dir=self._settings.export_dir,
                    clock=self._clock,
                    owner=self.owner,
                    lease_seconds=self._settings.export_lease_seconds,
                )
            except Exception as exc:
                event(log, logging.ERROR, "delivery.export_failed", error=repr(exc)[:500])
                ran = False
            if not ran:
                await asyncio.sleep(self._settings.delivery_poll_seconds * 5)

    def _enabled(self) -> list[str]:
        with self._engine.connect() as conn:
            return store.enabled_destinations(conn)

    def _housekeep(self) -> None:
        from tessera.activation.exports_worker import expire_exports

        retention = timedelta(hours=self._settings.delivery_log_retention_hours)
        try:
            with self._engine.begin() as conn:
                now = self._clock()
                store.prune(conn, before=now - retention, now=now)
            if self._housekeeping is not None:
                self._housekeeping()
        except Exception as exc:
            event(log, logging.ERROR, "delivery.housekeeping_failed", error=repr(exc)[:500])
        try:  # on its own: a failed prune must not keep old export files for ever
            expire_exports(
                self._engine,
                export_dir=self._settings.export_dir,
                now=self._clock(),
                retention=timedelta(hours=self._settings.export_retention_hours),
            )
        except Exception as exc:
            event(log, logging.ERROR, "delivery.export_expiry_failed", error=repr(exc)[:500])

    def _release_all(self, ids: list[str]) -> None:
        try:
            with self._engine.begin() as conn:
                for destination_id in ids:
                    store.release(conn, destination_id, owner=self.owner)
        except Exception as exc:
            event(log, logging.WARNING, "delivery.release_failed", error=repr(exc)[:500])

    async def _follow(self, destination_id: str) -> None:
        """Deliver one destination until stopped; idle cycles wait for a wake or a poll."""
        idle = self._settings.delivery_poll_seconds
        while not self._stopping.is_set():
            try:
                done = await self.cycle(destination_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                event(
                    log,
                    logging.ERROR,
                    "delivery.cycle_failed",
                    destination=destination_id,
                    error=repr(exc)[:500],
                )
                done = 0
                await asyncio.sleep(min(5.0, idle * 10))
            if done == 0:
                await self._pause(idle)

    # -- one cycle ---------------------------------------------------------------------

    async def cycle(self, destination_id: str) -> int:
        """Deliver what may go now for one destination; return how many messages were
        handled (0: nothing to do, not leased, paused, or collecting)."""
        self.cycles += 1
        now = self._clock()
        lease = await asyncio.to_thread(self._acquire, destination_id, now)
        if lease is None:
            dropped = self._active.pop(destination_id, None)
            if dropped is not None:
                await dropped.plugin.aclose()
            return 0
        if lease.paused_at is not None and lease.next_probe_at and now < lease.next_probe_at:
            return 0  # before starting the plugin: one that cannot start is tried as a probe
        active = await self._activate(lease)
        if active is None:
            return 0
        plugin = active.plugin
        probing = lease.paused_at is not None
        interval = timedelta(seconds=plugin.interval_seconds)
        due = lease.last_delivery_at is None or now >= lease.last_delivery_at + interval
        if plugin.snapshot_audience is not None:
            if due:
                await self._snapshot(lease, plugin, now)
                return 1
            return 0
        if interval and not due:
            return 0
        limit = (
            plugin.batch_size
            if probing
            else min(MAX_MESSAGES_PER_CYCLE, max(plugin.batch_size * plugin.concurrency, 500))
        )
        pending, profiles = await asyncio.to_thread(self._load, destination_id, now, limit)
        if not pending:
            return 0
        outcomes = await self._send(lease, active, pending, profiles, now, probing=probing)
        await asyncio.to_thread(
            functools.partial(self._record, destination_id, outcomes, scheduled=bool(interval))
        )
        return len(pending)

    def _acquire(self, destination_id: str, now: datetime) -> store.Lease | None:
        lease = timedelta(seconds=self._settings.delivery_lease_seconds)
        with self._engine.begin() as conn:
            found = store.acquire(conn, destination_id, owner=self.owner, now=now, lease=lease)
            if found is not None:
                store.expire(conn, destination_id, now=now)
            return found

    async def _activate(self, lease: store.Lease) -> _Active | None:
        active = self._active.get(lease.destination_id)
        if active is not None and active.version == lease.updated_at:
            return active
        if active is not None:
            await active.plugin.aclose()
            del self._active[lease.destination_id]
        try:
            kind = destination_types().get(lease.type)
            if kind is None:
                raise ValueError(f"the destination plugin {lease.type!r} is not installed")
            plugin = instantiate(
                kind,
                lease.config,
                keyring=self._keyring,
                destination=f"{lease.name!r} ({lease.destination_id})",
            )
            mapping = parse_mapping(lease.mapping)
        except Exception as exc:
            await asyncio.to_thread(self._broken, lease.destination_id, str(exc))
            return None
        active = _Active(lease, plugin, mapping)
        self._active[lease.destination_id] = active
        return active

    def _broken(self, destination_id: str, reason: str) -> None:
        outcomes = store.Outcomes(calls_failed=1, last_error=f"cannot start: {reason}")
        self._record(destination_id, outcomes, scheduled=False)

    def _load(
        self, destination_id: str, now: datetime, limit: int
    ) -> tuple[list[store.Pending], dict[str, store.Profile]]:
        with self._engine.connect() as conn:
            pending = store.next_messages(conn, destination_id, now=now, limit=limit)
            profiles = store.load_profiles(conn, {row.person for row in pending})
        return pending, profiles

    def _record(self, destination_id: str, outcomes: store.Outcomes, *, scheduled: bool) -> None:
        """Write a cycle back; `scheduled`: the destination delivers on an interval, and
        this cycle counts as its delivery when it did something."""
        with self._engine.begin() as conn:
            store.record(
                conn,
                destination_id,
                outcomes,
                now=self._clock(),
                pause_after=self._settings.delivery_pause_after_failures,
                probe=timedelta(seconds=self._settings.delivery_probe_seconds),
                delivered_batch=scheduled and bool(outcomes.delivered or outcomes.calls_ok),
            )

    async def _send(
        self,
        lease: store.Lease,
        active: _Active,
        pending: list[store.Pending],
        profiles: dict[str, store.Profile],
        now: datetime,
        *,
        probing: bool,
    ) -> store.Outcomes:
        plugin = active.plugin
        sending = _Sending(
            self, plugin, pending, probing=probing, failures=lease.consecutive_failures
        )
        outcomes = sending.outcomes
        required = lease.consent_categories
        lanes: list[list[Message]] = [[] for _ in range(max(1, plugin.concurrency))]
        region = self._settings.identity_phone_region
        for row in pending:
            profile = profiles.get(row.person)
            if required and (
                profile is None or not all(profile.consent.get(c) is True for c in required)
            ):
                outcomes.blocked.append(row.id)
                continue
            try:
                body = active.mapping.apply(tessera_message(row, profile), phone_region=region)
                message = Message(row.id, row.message_id, row.kind, row.person, body)
                message.payload = plugin.map(body)
            except Exception as exc:  # a plugin that cannot map this message never will
                outcomes.dead[row.id] = (f"could not map the message: {exc!r}"[:2000], None)
                continue
            lanes[hash(row.person) % len(lanes)].append(message)
        if probing:
            # One call tells whether the destination is back.
            first = next((lane for lane in lanes if lane), None)
            if first is not None:
                await sending.lane(first[: plugin.batch_size])
        else:
            await asyncio.gather(*(sending.lane(lane) for lane in lanes if lane))
        return outcomes

    def failed(
        self,
        chunk: Sequence[Message],
        failure: DeliveryFailed,
        outcomes: store.Outcomes,
        expiry: dict[int, datetime],
    ) -> None:
        """Each message of a failed call: retried later, or dead (permanent, or too old)."""
        reason = failure.reason if failure.status is None else f"{failure.status}: {failure.reason}"
        outcomes.last_error = reason
        now = self._clock()
        settings = self._settings
        for message in chunk:
            if failure.permanent:
                outcomes.dead[message.outbox_id] = (reason, failure.status)
                continue
            attempts = outcomes.attempts.get(message.outbox_id, 0)
            if failure.retry_after is not None:
                delay = min(failure.retry_after, settings.delivery_retry_max_seconds)
            else:
                delay = backoff_seconds(
                    attempts,
                    base=settings.delivery_retry_base_seconds,
                    cap=settings.delivery_retry_max_seconds,
                )
            when = now + timedelta(seconds=delay)
            if when >= expiry[message.outbox_id]:
                outcomes.dead[message.outbox_id] = (
                    f"{reason} (retried until its maximum age)",
                    failure.status,
                )
            else:
                outcomes.retry[message.outbox_id] = (when, reason, failure.status)

    async def _snapshot(self, lease: store.Lease, plugin: Destination, now: datetime) -> None:
        from tessera.activation.exports import audience_snapshot

        audience_id = plugin.snapshot_audience
        assert audience_id is not None
        conn = await asyncio.to_thread(self._engine.connect)
        outcomes = store.Outcomes()
        try:
            snapshot = await asyncio.to_thread(
                audience_snapshot, conn, audience_id=audience_id, now=now
            )
            await plugin.deliver_snapshot(snapshot)
            outcomes.calls_ok = 1
        except Exception as exc:
            outcomes.calls_failed = 1
            outcomes.last_error = f"audience export failed: {exc!r}"[:2000]
        finally:
            await asyncio.to_thread(conn.close)
        await asyncio.to_thread(
            functools.partial(self._record, lease.destination_id, outcomes, scheduled=True)
        )


class _Sending:
    """One cycle's calls: lanes share the count of failed calls in a row, so a destination
    that is down stops being called within the cycle once it reaches the pause limit."""

    def __init__(
        self,
        deliverer: Deliverer,
        plugin: Destination,
        pending: list[store.Pending],
        *,
        probing: bool,
        failures: int,
    ) -> None:
        self.deliverer = deliverer
        self.plugin = plugin
        self.probing = probing
        self.failures = failures
        self.pause_after = deliverer._settings.delivery_pause_after_failures
        self.outcomes = store.Outcomes(attempts={row.id: row.attempts for row in pending})
        self.expiry = {row.id: row.expires_at for row in pending}
        self.created = {row.id: row.created_at for row in pending}

    async def lane(self, messages: list[Message]) -> None:
        """Send a lane's messages in order, a batch per call; a person whose call failed
        has nothing more sent this cycle."""
        held: set[str] = set()
        queue = list(messages)
        while queue:
            if self.failures >= self.pause_after and not self.probing:
                return  # paused: the rest waits, untouched
            chunk = [message for message in queue if message.person not in held]
            chunk, queue = chunk[: self.plugin.batch_size], chunk[self.plugin.batch_size :]
            if not chunk:
                return
            failure: DeliveryFailed | None = None
            try:
                await self.plugin.deliver(chunk)
            except DeliveryFailed as exc:
                failure = exc
            except Exception as exc:  # a plugin bug must not lose the messages
                failure = DeliveryFailed(f"the plugin failed: {exc!r}")
            if failure is not None:
                self.deliverer.failed(chunk, failure, self.outcomes, self.expiry)
                held.update(message.person for message in chunk)
                if not failure.throttled:
                    self.failures += 1
                    self.outcomes.calls_failed += 1
            else:
                self.failures = 0
                self.outcomes.calls_ok += 1
                finished = self.deliverer._clock()
                for message in chunk:
                    self.outcomes.delivered.append(message.outbox_id)
                    waited = finished - self.created[message.outbox_id]
                    self.outcomes.latency_ms += waited.total_seconds() * 1000
            if self.probing:
                return
