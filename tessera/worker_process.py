"""`tessera serve`'s processor in a child process (`tessera worker --wake-stdin`).

Ingest and the processor are both CPU-bound Python; in one process they share one
interpreter lock, so each slows the other (8.4k events/s ingested with the processor in a
thread, against 21k without it: benchmarks/RESULTS.md). In a child, each has a core.

The child's stdin is a pipe from the parent: every commit of the event log writes a byte,
which wakes the child at once (no polling delay); when the parent dies, the pipe closes
and the child stops, so no orphan keeps the store busy. A supervisor thread restarts a
child that exits unexpectedly, with backoff.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from typing import Any, Protocol

import orjson

from tessera.config import Settings
from tessera.logs import event

log = logging.getLogger(__name__)


class ProcessorHandle(Protocol):
    """What the app needs of a processor, wherever it runs."""

    @property
    def running(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self, timeout: float = 30.0) -> None: ...

    def wake(self) -> None: ...


def settings_environment(settings: Settings) -> dict[str, str]:
    """`settings` as TESSERA_* variables, so a child process reads the same settings."""
    environment: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        raw = getattr(settings, name)
        if hasattr(raw, "get_secret_value"):
            text = raw.get_secret_value()
        elif isinstance(value, dict | list):
            text = orjson.dumps(value).decode()
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
        environment[f"TESSERA_{name.upper()}"] = text
    return environment


class WorkerProcess:
    """Starts, wakes, supervises and stops one `tessera worker --wake-stdin` child; with
    `processor_derived = "separate"`, a second one for the derived stage beside it
    (`derived`, which has no delivery worker: the first child delivers)."""

    def __init__(
        self, settings: Settings, *, restart_delay: float = 1.0, stage: str = "all"
    ) -> None:
        self._settings = settings
        self._restart_delay = restart_delay
        self._command = [sys.executable, "-m", "tessera", "worker", "--wake-stdin"]
        self.derived: WorkerProcess | None = None
        if stage == "all" and settings.processor_derived == "separate":
            stage = "main"
            self.derived = WorkerProcess(settings, restart_delay=restart_delay, stage="derived")
        self._command += ["--stage", stage]
        if stage == "derived":
            self._command.append("--no-delivery")
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.restarts = 0

    @property
    def running(self) -> bool:
        child = self._child
        alive = child is not None and child.poll() is None
        return alive and (self.derived is None or self.derived.running)

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.pid if child is not None else None

    def start(self) -> None:
        if self.derived is not None:
            self.derived.start()
        self._stop.clear()
        self._spawn()
        self._supervisor = threading.Thread(
            target=self._supervise, name="processor-supervisor", daemon=True
        )
        self._supervisor.start()

    def _spawn(self) -> None:
        environment = {**os.environ, **settings_environment(self._settings)}
        child = subprocess.Popen(
            self._command,
            stdin=subprocess.PIPE,
            env=environment,
        )
        assert child.stdin is not None
        os.set_blocking(child.stdin.fileno(), False)
        with self._lock:
            self._child = child
        event(log, logging.INFO, "processor.child_started", pid=child.pid, args=self._command[3:])

    def _supervise(self) -> None:
        delay = self._restart_delay
        while not self._stop.is_set():
            child = self._child
            if child is None:
                return
            code = child.wait()
            if self._stop.is_set():
                return
            event(log, logging.ERROR, "processor.child_exited", pid=child.pid, exit_code=code)
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, 30.0)
            self.restarts += 1
            try:
                self._spawn()
            except OSError as exc:
                event(log, logging.ERROR, "processor.child_spawn_failed", error=repr(exc))

    def wake(self) -> None:
        """Called by the log writer after each commit; never blocks it."""
        if self.derived is not None:
            self.derived.wake()
        child = self._child
        if child is None or child.stdin is None:
            return
        # A full pipe already holds a wake; a dead child is the supervisor's business.
        with contextlib.suppress(OSError, ValueError):
            os.write(child.stdin.fileno(), b"w")

    def stop(self, timeout: float = 30.0) -> None:
        if self.derived is not None:
            self.derived.stop(timeout)
        self._stop.set()
        with self._lock:
            child, self._child = self._child, None
        if child is None:
            return
        _close(child.stdin)  # the child finishes its batch and exits on end of input
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if self._supervisor is not None:
            self._supervisor.join(timeout)
            self._supervisor = None


def _close(stream: Any) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):
            stream.close()


def follow_wake_pipe(wake: Any, stop: threading.Event) -> threading.Thread:
    """In the child: wake the processor for every byte on stdin; stop at end of input."""

    def run() -> None:
        descriptor = sys.stdin.fileno()
        while True:
            try:
                data = os.read(descriptor, 4096)
            except (OSError, ValueError):
                data = b""
            if not data:
                stop.set()
                return
            wake()

    thread = threading.Thread(target=run, name="wake-pipe", daemon=True)
    thread.start()
    return thread
