"""The destination hook: what every destination plugin implements, and how they are found.

A destination plugin is a class registered in the entry-point group `tessera.destinations`
(the built-in webhook, Segment forwarder and file export are ordinary plugins, registered
in Tessera's own `pyproject.toml`):

    [project.entry-points."tessera.destinations"]
    my_crm = "my_package.destination:MyCRMDestination"

The class declares a typed `config_model` (pydantic; its JSON schema is what the UI renders;
its `SecretStr` fields are stored encrypted and never shown back), checks a connection
(`test_connection`), maps Tessera's message to the destination's payload (`map`), and sends
a batch of mapped messages (`deliver`). Delivery, retries, order, pause, dead letters and
consent are the delivery worker's job, not the plugin's: a plugin only says how one call
went, by returning or by raising `DeliveryFailed`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from tessera.errors import BadRequest
from tessera.store.secrets import Keyring, seal, unseal

ENTRY_POINT_GROUP = "tessera.destinations"

# The messages a destination can subscribe to; `Message.kind` is one of these.
KINDS = ("event", "audience.entered", "audience.exited", "traits.changed")


@dataclass(slots=True)
class Message:
    """One message on its way to one destination.

    `body` is Tessera's message after the destination's field mapping:
    `{"messageId", "kind", "timestamp", "profile": {"id", "identities", "traits"}, ...}`
    plus `event` (the Segment event as tracked), `audience` + `cause`, or `traits` (the
    changed ones). `payload` is what `map` made of it for this destination.
    """

    outbox_id: int
    message_id: str  # the idempotency key: the event's messageId, or one Tessera made
    kind: str
    person: str  # the profile the message is about (its order key)
    body: dict[str, Any]
    payload: Any = None


class DeliveryFailed(Exception):
    """A send did not work. `permanent`: retrying cannot help (a 400, a 404): the messages
    become dead letters at once, with this reason. Otherwise they are retried with backoff,
    no sooner than `retry_after` seconds when the destination said so (a 429)."""

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        permanent: bool = False,
        throttled: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.permanent = permanent
        # Throttling (429) is the destination working as designed: it does not count
        # towards pausing it.
        self.throttled = throttled


@dataclass
class ConnectionCheck:
    ok: bool
    detail: str


@dataclass
class AudienceSnapshot:
    """An audience's whole member list, for destinations that export it on a schedule."""

    audience_id: str
    audience_name: str
    taken_at: datetime
    columns: list[str]
    rows: Iterable[dict[str, Any]]


class Destination(abc.ABC):
    """Base of every destination plugin; one instance per configured destination, used by
    one delivery worker at a time (so it may keep connections open)."""

    title: ClassVar[str]  # shown in the UI's list of destination types
    description: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    # How the delivery worker calls `deliver`: at most `batch_size` messages a call, at most
    # `concurrency` calls at once (one person's messages never in two calls at once), and,
    # for destinations that collect (files), no more often than every `interval_seconds`.
    @property
    def batch_size(self) -> int:
        return 1

    @property
    def concurrency(self) -> int:
        return 4

    @property
    def interval_seconds(self) -> float:
        return 0.0

    @property
    def snapshot_audience(self) -> str | None:
        """An audience whose whole member list this destination wants every
        `interval_seconds` (`deliver_snapshot`), instead of (or beside) messages."""
        return None

    @abc.abstractmethod
    async def test_connection(self) -> ConnectionCheck:
        """Try the destination without sending a message; say what happened."""

    def map(self, body: dict[str, Any]) -> Any:
        """Tessera's message (after field mapping) → the destination's payload."""
        return body

    @abc.abstractmethod
    async def deliver(self, messages: Sequence[Message]) -> None:
        """Send `messages` (in order; `payload` is set) as one call; raise `DeliveryFailed`
        if the destination did not take them all."""

    async def deliver_snapshot(self, snapshot: AudienceSnapshot) -> None:
        """Write an audience's member list; only called when `snapshot_audience` is set."""
        raise NotImplementedError

    async def aclose(self) -> None:  # noqa: B027 - most destinations hold nothing
        """Release connections; the worker calls it when it lets the destination go."""


@dataclass
class DestinationType:
    name: str
    plugin: type[Destination]
    schema: dict[str, Any] = field(default_factory=dict)


def destination_types() -> dict[str, DestinationType]:
    """Every installed destination plugin, by its entry-point name."""
    found: dict[str, DestinationType] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        plugin = entry.load()
        if not (isinstance(plugin, type) and issubclass(plugin, Destination)):
            continue
        found[entry.name] = DestinationType(
            entry.name, plugin, plugin.config_model.model_json_schema()
        )
    return dict(sorted(found.items()))


def destination_type(name: str) -> DestinationType:
    types = destination_types()
    if name not in types:
        raise BadRequest(
            f"unknown destination type {name!r}; installed: {', '.join(types) or 'none'}"
        )
    return types[name]


def parse_config(kind: DestinationType, config: Any) -> BaseModel:
    """Validate a destination's config against its plugin's model; errors name the field."""
    try:
        return kind.plugin.config_model.model_validate(config)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'config'}: {error['msg']}"
            for error in exc.errors()
        )
        raise BadRequest(f"invalid {kind.name} config: {problems}") from None


def secret_fields(model: type[BaseModel]) -> set[str]:
    """The config fields that hold secrets: every field typed `SecretStr` (also as
    `SecretStr | None`, or in a list or dict). They are stored encrypted and shown masked."""
    fields = model.model_fields.items()
    return {name for name, info in fields if "SecretStr" in str(info.annotation)}


def seal_config(
    kind: DestinationType, config: dict[str, Any], keyring: Keyring, *, carried: set[str]
) -> dict[str, Any]:
    """`config` as stored: its secret fields encrypted. Those in `carried` were read from
    the store (an update that did not change them): encrypted ones stay as they are."""
    hidden = secret_fields(kind.plugin.config_model)
    return {
        name: seal(value, keyring, given=name not in carried) if name in hidden else value
        for name, value in config.items()
    }


def open_config(
    kind: DestinationType, stored: dict[str, Any], keyring: Keyring, *, destination: str
) -> dict[str, Any]:
    """A stored config with its secret fields decrypted (plain text from before encryption
    reads as it is); raises SecretUnreadable naming the destination and field."""
    hidden = secret_fields(kind.plugin.config_model)
    return {
        name: (
            unseal(value, keyring, what=f"config.{name} of the destination {destination}")
            if name in hidden
            else value
        )
        for name, value in stored.items()
    }


def instantiate(
    kind: DestinationType, stored: dict[str, Any], *, keyring: Keyring, destination: str
) -> Destination:
    """The plugin for a destination's stored config (`destination` names it in errors)."""
    config = open_config(kind, stored, keyring, destination=destination)
    return kind.plugin(parse_config(kind, config))
