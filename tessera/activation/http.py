"""What an HTTP answer means for delivery, shared by the HTTP destinations: 2xx delivered;
429 throttled (retry after its `Retry-After`); 408 and 5xx, timeouts and broken connections
retried; any other 4xx permanent (retrying the same request cannot help)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from pydantic import BaseModel

from tessera import __version__
from tessera.activation.plugins import DeliveryFailed, Destination

USER_AGENT = f"Tessera/{__version__}"
RETRYABLE_4XX = (408, 409, 425, 429)


def retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def check(response: httpx.Response) -> None:
    """Return for a 2xx; raise DeliveryFailed that says what the destination answered."""
    status = response.status_code
    if 200 <= status < 300:
        return
    text = response.text[:300].strip() or response.reason_phrase
    if status == 429:
        raise DeliveryFailed(
            f"throttled: {text}",
            status=status,
            retry_after=retry_after(response.headers.get("Retry-After")),
            throttled=True,
        )
    permanent = 400 <= status < 500 and status not in RETRYABLE_4XX
    raise DeliveryFailed(text, status=status, permanent=permanent)


def transport_failure(exc: httpx.HTTPError, url: str, timeout: float) -> DeliveryFailed:
    """A call that got no answer: always worth retrying."""
    if isinstance(exc, httpx.TimeoutException):
        return DeliveryFailed(f"no answer from {url} within {timeout:g} s")
    return DeliveryFailed(f"{type(exc).__name__} talking to {url}: {exc}")


def client(*, timeout: float, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=timeout,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
    )


class HTTPDestination(Destination):
    """Base of the destinations that call an HTTP API: one pooled client per destination,
    sized and timed by the config's `concurrency`, `timeout_seconds` and `batch_size`."""

    def __init__(self, config: BaseModel) -> None:
        super().__init__(config)
        self._client: httpx.AsyncClient | None = None

    def _setting(self, name: str) -> int | float:
        value = getattr(self.config, name)
        assert isinstance(value, int | float)
        return value

    @property
    def batch_size(self) -> int:
        return int(self._setting("batch_size"))

    @property
    def concurrency(self) -> int:
        return int(self._setting("concurrency"))

    @property
    def timeout(self) -> float:
        return float(self._setting("timeout_seconds"))

    def http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = client(timeout=self.timeout, connections=self.concurrency)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
