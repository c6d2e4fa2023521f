"""Validate and normalise Segment-spec messages into event-log rows.

The rules are the Segment HTTP Tracking API's:
- every message names `userId` or `anonymousId`;
- `track` needs `event`, `group` needs `groupId`, `alias` needs `previousId` and `userId`;
- `properties`, `traits`, `context` and `integrations` are JSON objects when present;
- `timestamp`, `originalTimestamp` and `sentAt` are ISO-8601 strings when present.

Timestamps are corrected for client clock skew as Segment does:
`timestamp = receivedAt - (sentAt - originalTimestamp)`. Nothing is rejected for skew.
A message that breaks a rule raises `MessageError` with a reason naming the field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from tessera.eventlog import NewEvent
from tessera.ingest.message_ids import new_message_id

MESSAGE_TYPES = ("identify", "track", "page", "screen", "group", "alias")
OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
MAX_ID_LENGTH = 255
# A tuple, not `str | int | float`: that builds a UnionType on every call (hot path).
_ID_TYPES = (str, int, float)
# The stored payload is re-serialised; orjson refuses to nest deeper than this.
MAX_DEPTH = 254


class MessageError(ValueError):
    """One message breaks the spec; `reason` says how, naming the field."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _identifier(message: dict[str, Any], field: str, *, required: bool = False) -> str | None:
    value = message.get(field)
    if value is None or value == "":
        if required:
            raise MessageError(f"{message.get('type', 'message')} needs {field!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, _ID_TYPES):
        raise MessageError(f"{field!r} must be a string, got {_kind(value)}")
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_ID_LENGTH:
        raise MessageError(
            f"{field!r} is {len(text)} characters long; the limit is {MAX_ID_LENGTH}"
        )
    if "\x00" in text:
        raise MessageError(f"{field!r} contains a NUL character")
    if not isinstance(value, str):
        message[field] = text
    return text


def _name(message: dict[str, Any], field: str, *, required: bool) -> str | None:
    value = message.get(field)
    if value is None or value == "":
        if required:
            raise MessageError(f"{message['type']} needs {field!r}, the name of the event")
        return None
    if not isinstance(value, str):
        raise MessageError(f"{field!r} must be a string, got {_kind(value)}")
    if "\x00" in value:
        raise MessageError(f"{field!r} contains a NUL character")
    return value


def parse_timestamp(field: str, value: Any) -> datetime | None:
    """An aware UTC datetime from an ISO-8601 string; None when absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MessageError(f"{field!r} must be an ISO-8601 string, got {_kind(value)}")
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise MessageError(
            f"{field!r} is not an ISO-8601 date-time: {value[:64]!r} "
            "(expected, for example, 2026-11-22T10:00:00.000Z)"
        ) from None


def corrected_timestamp(
    received_at: datetime, sent_at: datetime | None, original: datetime | None
) -> datetime:
    """Segment's skew correction; falls back to the client's own time when it cannot apply."""
    if original is None:
        return received_at
    if sent_at is None:
        return original
    try:
        return received_at - (sent_at - original)
    except OverflowError:
        return original


def iso_utc(moment: datetime | None) -> str | None:
    """`2026-11-22T10:00:00.000Z` for an aware UTC datetime."""
    if moment is None:
        return None
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _unencodable(exc: orjson.JSONEncodeError) -> MessageError:
    if "recursion" in str(exc).lower():
        return MessageError(f"the message nests deeper than {MAX_DEPTH} levels")
    return MessageError(f"the message cannot be stored as JSON: {exc}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _message_type(message: dict[str, Any], from_path: str | None) -> str:
    kind = from_path or message.get("type")
    if kind is None:
        raise MessageError("the message has no 'type'; expected one of " + ", ".join(MESSAGE_TYPES))
    if kind not in MESSAGE_TYPES:
        raise MessageError(f"'type' {str(kind)[:32]!r} is not one of " + ", ".join(MESSAGE_TYPES))
    message["type"] = kind
    return str(kind)


def _check_objects(
    message: dict[str, Any],
    batch_context: dict[str, Any] | None,
    batch_integrations: dict[str, Any] | None,
) -> None:
    """Object fields are objects (null means absent); a batch's defaults are merged in."""
    for field in OBJECT_FIELDS:
        value = message.get(field)
        if value is None:
            message.pop(field, None)
        elif not isinstance(value, dict):
            raise MessageError(f"{field!r} must be an object, got {_kind(value)}")
    if batch_context:
        message["context"] = {**batch_context, **message.get("context", {})}
    if batch_integrations:
        message["integrations"] = {**batch_integrations, **message.get("integrations", {})}
    context_traits = message.get("context", {}).get("traits")
    if context_traits is not None and not isinstance(context_traits, dict):
        raise MessageError(f"'context.traits' must be an object, got {_kind(context_traits)}")


def normalise_message(
    raw: Any,
    *,
    source_id: int,
    received_at: datetime,
    message_type: str | None = None,
    batch_sent_at: datetime | None = None,
    batch_sent_at_iso: str | None = None,
    received_at_iso: str | None = None,
    batch_context: dict[str, Any] | None = None,
    batch_integrations: dict[str, Any] | None = None,
    max_bytes: int = 32 * 1024,
) -> NewEvent:
    """Check one message against the spec and turn it into an event-log row.

    `message_type` comes from the URL of a single call; a batch item names its own. The
    `*_iso` arguments are batch-wide times already formatted, saving work per message.
    """
    if not isinstance(raw, dict):
        raise MessageError(f"a message must be a JSON object, got {_kind(raw)}")
    try:
        size = len(orjson.dumps(raw))
    except orjson.JSONEncodeError as exc:
        raise _unencodable(exc) from None
    if size > max_bytes:
        raise MessageError(f"the message is {size} bytes; the limit is {max_bytes}")

    message = dict(raw)
    message.pop("writeKey", None)
    kind = _message_type(message, message_type)
    _check_objects(message, batch_context, batch_integrations)

    user_id = _identifier(message, "userId", required=kind == "alias")
    anonymous_id = _identifier(message, "anonymousId")
    if user_id is None and anonymous_id is None:
        raise MessageError("the message needs a 'userId' or an 'anonymousId'")
    name: str | None = None
    if kind == "track":
        name = _name(message, "event", required=True)
    elif kind in ("page", "screen"):
        name = _name(message, "name", required=False)
    elif kind == "group":
        _identifier(message, "groupId", required=True)
    elif kind == "alias":
        _identifier(message, "previousId", required=True)

    message_id = _identifier(message, "messageId") or new_message_id()
    message["messageId"] = message_id

    original = parse_timestamp("originalTimestamp", message.get("originalTimestamp"))
    if original is None:
        original = parse_timestamp("timestamp", message.get("timestamp"))
    sent_at = parse_timestamp("sentAt", message.get("sentAt")) or batch_sent_at
    timestamp = corrected_timestamp(received_at, sent_at, original)
    message["originalTimestamp"] = iso_utc(original)
    if sent_at is batch_sent_at and batch_sent_at_iso is not None:
        message["sentAt"] = batch_sent_at_iso
    else:
        message["sentAt"] = iso_utc(sent_at)
    message["receivedAt"] = received_at_iso or iso_utc(received_at)
    # Without a client time (`curl` users, most server-side calls) it is the receipt time.
    if timestamp is received_at:
        message["timestamp"] = message["receivedAt"]
    else:
        message["timestamp"] = iso_utc(timestamp)

    try:
        payload = orjson.dumps(message).decode()
    except orjson.JSONEncodeError as exc:
        raise _unencodable(exc) from None
    return NewEvent(
        source_id=source_id,
        message_id=message_id,
        type=kind,
        name=name,
        user_id=user_id,
        anonymous_id=anonymous_id,
        timestamp=timestamp,
        original_timestamp=original,
        sent_at=sent_at,
        received_at=received_at,
        payload=payload,
    )
