"""Send a demo dataset through Tessera's real tracking API, as an SDK would.

Messages go to `POST {base_url}/v1/batch` with the write key as Basic auth. They are split
into lanes by household, so each person's events (and a family tablet's) arrive in
timestamp order even with several requests in flight; each lane sends its batches one after
another. 429 and 503 are retried after `Retry-After` (safe: Tessera dedupes by messageId);
any other answer but 200 stops the load with a `LoadError` carrying the response body.
No `sentAt` is sent, so Tessera keeps the generated timestamps (a historical import).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
import orjson

from tessera.demo.truth import Dataset, Message

# The API refuses bodies over 512,000 bytes and batches over 2,500 messages; keep a margin.
MAX_BODY_BYTES = 480_000
MAX_BATCH = 2_500
RETRY_STATUSES = (429, 503)
_TRANSPORT_ATTEMPTS = 4  # a refused connection is most likely a wrong URL: fail within seconds


class LoadError(RuntimeError):
    """The API refused a batch (`status`, `body`), or could not be reached (`status` None)."""

    def __init__(self, message: str, *, status: int | None = None, body: str = ""):
        super().__init__(message)
        self.status = status
        self.body = body


class _Stopped(Exception):
    """Another lane failed; this one gives up quietly so the first error is the one raised."""


def send(
    dataset: Dataset,
    *,
    base_url: str,
    write_key: str,
    batch_size: int = 100,
    concurrency: int = 4,
    progress: Callable[[int], None] | None = None,
    timeout: float = 30.0,
    max_attempts: int = 30,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Send every message of `dataset`; return how many the API acknowledged (all of them).

    `progress(n)` is called after each acknowledged batch with its number of messages (from
    worker threads, one call at a time). A batch answered 429/503 is retried up to
    `max_attempts` times, waiting as `Retry-After` says. `transport` is for tests.
    """
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}, got {batch_size}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    lanes = split_lanes(dataset, concurrency)
    lock, stop = threading.Lock(), threading.Event()
    sent = 0

    def acknowledged(count: int) -> None:
        nonlocal sent
        with lock:
            sent += count
            if progress is not None:
                progress(count)

    def run(client: httpx.Client, lane: list[Message]) -> None:
        try:
            for body, count in encode_batches(lane, batch_size):
                if stop.is_set():
                    raise _Stopped
                _post(client, body, stop, max_attempts)
                acknowledged(count)
        except _Stopped:
            pass
        except BaseException:
            stop.set()
            raise

    with httpx.Client(
        base_url=base_url.rstrip("/"),
        auth=(write_key, ""),
        timeout=timeout,
        limits=httpx.Limits(max_connections=len(lanes) or 1),
        transport=transport,
    ) as client:
        if len(lanes) <= 1:
            for lane in lanes:
                run(client, lane)
        else:
            with ThreadPoolExecutor(len(lanes), thread_name_prefix="tessera-demo-send") as pool:
                futures = [pool.submit(run, client, lane) for lane in lanes]
                errors = [future.exception() for future in futures]
            first = next((error for error in errors if error is not None), None)
            if first is not None:
                raise first
    return sent


def split_lanes(dataset: Dataset, lanes: int) -> list[list[Message]]:
    """The messages in up to `lanes` lists, by household, each in timestamp order."""
    count = max(1, min(lanes, len(dataset.people)))
    out: list[list[Message]] = [[] for _ in range(count)]
    household = [person.household for person in dataset.people]
    for message, owner in zip(dataset.messages, dataset.owners, strict=True):
        out[household[owner] % count].append(message)
    return [lane for lane in out if lane]


def encode_batches(messages: list[Message], batch_size: int) -> Iterator[tuple[bytes, int]]:
    """`{"batch": [...]}` bodies of at most `batch_size` messages and MAX_BODY_BYTES bytes."""
    parts: list[bytes] = []
    size = 0
    for message in messages:
        encoded = orjson.dumps(message)
        if parts and (len(parts) == batch_size or size + len(encoded) + 16 > MAX_BODY_BYTES):
            yield b'{"batch":[' + b",".join(parts) + b"]}", len(parts)
            parts, size = [], 0
        parts.append(encoded)
        size += len(encoded) + 1
    if parts:
        yield b'{"batch":[' + b",".join(parts) + b"]}", len(parts)


def _post(client: httpx.Client, body: bytes, stop: threading.Event, max_attempts: int) -> None:
    headers = {"Content-Type": "application/json"}
    failures = 0
    for _ in range(max_attempts):
        try:
            response = client.post("/v1/batch", content=body, headers=headers)
        except httpx.TransportError as exc:
            failures += 1
            if failures >= _TRANSPORT_ATTEMPTS:
                raise LoadError(f"could not reach {client.base_url}/v1/batch: {exc!r}") from exc
            wait = 0.25 * 2 ** (failures - 1)
        else:
            if response.status_code == 200:
                return
            if response.status_code not in RETRY_STATUSES:
                raise LoadError(
                    f"POST {response.request.url} answered {response.status_code}: {response.text}",
                    status=response.status_code,
                    body=response.text,
                )
            wait = retry_after(response.headers.get("Retry-After"))
        if stop.wait(wait):
            raise _Stopped
    raise LoadError(
        f"POST {client.base_url}/v1/batch was still refused after {max_attempts} attempts "
        "(the server stays overloaded)"
    )


def retry_after(value: str | None, default: float = 1.0) -> float:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), within 0..60."""
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return default
    return min(max(seconds, 0.0), 60.0)
