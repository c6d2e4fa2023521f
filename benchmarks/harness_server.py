"""The processes a benchmark runs: `tessera serve` and the CLI, spawned children, and a
minimal HTTP/1.1 keep-alive client for drivers."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------
# `tessera` on a fresh SQLite file.
# --------------------------------------------------------------------------------------------


def tessera_command() -> list[str]:
    script = Path(sys.executable).parent / "tessera"
    if script.exists():
        return [str(script)]
    found = shutil.which("tessera")
    if found:
        return [found]
    return [sys.executable, "-c", "from tessera.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tessera_env(database: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    env["TESSERA_DATABASE_URL"] = f"sqlite:///{database}"
    env["TESSERA_LOG_LEVEL"] = "warning"
    return env


def run_tessera(database: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """`tessera ARGS` on `database`; its standard output (an error if it fails)."""
    done = subprocess.run(
        [*tessera_command(), *args],
        env=tessera_env(database, env),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"`tessera {' '.join(args)}` failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def create_token(database: Path, role: str | None = None) -> str:
    """`tessera token create bench [--role ROLE]`: the token is the last line of its output."""
    output = run_tessera(database, "token", "create", "bench", *(["--role", role] if role else []))
    return output.strip().splitlines()[-1].strip()


class Server:
    """`tessera serve` on a fresh SQLite file in `workdir`, with a source `bench`; `env` adds
    settings (TESSERA_*) for this server only."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.database = workdir / "tessera.db"
        self.log_path = workdir / "server.log"
        self.port = free_port()
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.write_key = ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        output = run_tessera(self.database, "source", "create", "bench", env=self.env)
        self.write_key = output.strip().splitlines()[-1].strip()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*tessera_command(), "serve", "--port", str(self.port)],
                env=tessera_env(self.database, self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop the server ourselves
            )
        deadline = time.monotonic() + 60
        url = f"{self.base}/healthz"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"tessera serve exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"tessera serve did not answer {url}:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGINT (as Ctrl-C: the server stops its workers), then SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def count_events(self, like: str | None = None) -> int:
        with contextlib.closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)) as db:
            if like is None:
                return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
            query = "SELECT count(*) FROM events WHERE message_id LIKE ?"
            return int(db.execute(query, (like,)).fetchone()[0])


# --------------------------------------------------------------------------------------------
# Spawned children that say ("ready", value), then send ("result", ...) or ("error", ...).
# --------------------------------------------------------------------------------------------


def run_child(
    target: Callable[..., None], args: tuple[Any, ...], name: str, timeout: float
) -> tuple[Any, Connection, multiprocessing.process.BaseProcess]:
    """Start `target(*args, conn)` in a spawned process; return its first message (which
    must be ("ready", value)), the connection and the process."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=target, args=(*args, child), name=name)
    process.start()
    child.close()
    kind, value = receive(parent, process, timeout)
    if kind != "ready":
        raise RuntimeError(f"{name} said {kind!r} before it was ready")
    return value, parent, process


def receive(
    conn: Connection, process: multiprocessing.process.BaseProcess, timeout: float
) -> tuple[str, Any]:
    if not conn.poll(timeout):
        raise RuntimeError(f"{process.name} did not report within {timeout:.0f} s")
    try:
        kind, value = conn.recv()
    except EOFError:
        process.join(5)
        raise RuntimeError(f"{process.name} died (exit {process.exitcode})") from None
    if kind == "error":
        raise RuntimeError(f"{process.name} failed: {value}")
    return str(kind), value


def stop_child(process: multiprocessing.process.BaseProcess, done: bool) -> None:
    if not done:
        process.terminate()
    process.join(10)
    if process.is_alive():
        process.kill()
        process.join()


def child_main(work: Callable[[Connection], dict[str, Any]], conn: Connection) -> None:
    """Run `work` in a child process; its result or error goes back over `conn`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        conn.send(("result", work(conn)))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed (drivers need less CPU), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# --------------------------------------------------------------------------------------------
# A minimal HTTP/1.1 keep-alive client for the drivers (one request in flight a connection).
# --------------------------------------------------------------------------------------------


class HttpConnection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        """Send one request (reconnecting once if the server closed an idle connection);
        return the status and the body. Every request sent here is safe to repeat (GETs, and
        messages the server dedupes by messageId)."""
        for attempt in (1, 2):
            try:
                if self.writer is None:
                    await self._open()
                assert self.reader is not None and self.writer is not None
                self.writer.write(head + body)
                header = await self.reader.readuntil(b"\r\n\r\n")
                status = int(header[9:12])
                lower = header.lower()
                at = lower.find(b"\r\ncontent-length:")
                if at < 0:
                    raise RuntimeError(f"response without Content-Length: {header[:200]!r}")
                end = lower.find(b"\r\n", at + 17)
                length = int(lower[at + 17 : end])
                content = await self.reader.readexactly(length) if length else b""
                if b"\r\nconnection: close" in lower:
                    self.close()
                return status, content
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def http_head(method: str, path: str, host: str, auth: str, length: int | None = None) -> bytes:
    """A request's head for `HttpConnection.request`, with a JSON body of `length` bytes."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n"
    head += "User-Agent: tessera-bench\r\n"
    if length is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
    return (head + "\r\n").encode()


def tessera_flags(pairs: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` command-line pairs as environment settings (TESSERA_ added when missing)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--env takes KEY=VALUE, got {pair!r}")
        key = key.strip().upper()
        out[key if key.startswith("TESSERA_") else f"TESSERA_{key}"] = value
    return out
