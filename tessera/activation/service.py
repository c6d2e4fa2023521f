"""Destinations as people manage them: create, change, pause and resume, the delivery log,
dead letters and their replay, and the figures per destination.

Secrets in a destination's config (the plugin's `SecretStr` fields) are stored encrypted
(`tessera.store.secrets`) and never shown back: reads show `********`, and an update that
sends `********` keeps the stored value. `reseal_destinations` re-encrypts them all under
the newest key (`tessera secrets rotate`), or only the plain text that stores written
before encryption hold (at start).
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, SecretStr
from sqlalchemy.engine import Connection

from tessera.activation import delivery_store as store
from tessera.activation.mapping import parse_mapping
from tessera.activation.models import (
    destination_counters,
    destination_hours,
    destination_state,
    destinations,
    outbox,
)
from tessera.activation.plugins import (
    ConnectionCheck,
    DestinationType,
    destination_type,
    destination_types,
    instantiate,
    parse_config,
    seal_config,
    secret_fields,
)
from tessera.activation.subscriptions import parse_subscriptions
from tessera.audiences.models import audience_members, audiences
from tessera.errors import BadRequest, Conflict, InvalidDefinition, NotFound
from tessera.processor.models import hold_processor
from tessera.profiles.masking import mask_event, mask_traits
from tessera.store.secrets import (
    Keyring,
    SecretUnreadable,
    has_plain_text,
    reseal,
    unseal,
)
from tessera.store.types import UtcDateTime

MASK = "********"
STATES = (store.PENDING, store.DELIVERED, store.DEAD, store.BLOCKED)
COUNTERS = ("sent", "failed", "dead", "blocked", "replayed")
LATENCY_SAMPLE = 1000
# The first sync of an audience's members may be a long list, sent once: it gets a day.
MAX_AGE_FOR_SYNC = timedelta(days=1)


def list_types() -> list[dict[str, Any]]:
    return [
        {
            "name": kind.name,
            "title": kind.plugin.title,
            "description": kind.plugin.description,
            "config_schema": kind.schema,
        }
        for kind in destination_types().values()
    ]


def _stored_config(config: BaseModel) -> dict[str, Any]:
    plain: dict[str, Any] = {}
    for name, value in config.model_dump(mode="python").items():
        plain[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
    return orjson.loads(orjson.dumps(plain, default=str))  # type: ignore[no-any-return]


def _shown_config(kind: DestinationType | None, stored: dict[str, Any]) -> dict[str, Any]:
    hidden = secret_fields(kind.plugin.config_model) if kind else set()
    return {
        name: (MASK if name in hidden and value is not None else value)
        for name, value in stored.items()
    }


def _validate(
    conn: Connection,
    kind: DestinationType,
    *,
    config: Any,
    subscriptions: Any,
    mapping: Any,
    consent: Any,
) -> dict[str, Any]:
    parsed = parse_config(kind, config)
    known = {audience_id for (audience_id,) in conn.execute(sa.select(audiences.c.id))}
    parse_subscriptions(subscriptions, known_audiences=known, root="$.subscriptions")
    parse_mapping(mapping, root="$.mapping")
    if not isinstance(consent, list) or not all(
        isinstance(item, str) and 0 < len(item) <= 64 for item in consent
    ):
        raise InvalidDefinition(
            "consent_categories is a list of category names", path="$.consent_categories"
        )
    return _stored_config(parsed)


def create_destination(
    conn: Connection,
    *,
    name: str,
    type: str,
    config: dict[str, Any],
    subscriptions: list[Any],
    mapping: dict[str, Any],
    consent_categories: list[str],
    enabled: bool,
    actor: str | None,
    keyring: Keyring,
) -> dict[str, Any]:
    kind = destination_type(type)
    stored = _validate(
        conn,
        kind,
        config=config,
        subscriptions=subscriptions,
        mapping=mapping,
        consent=consent_categories,
    )
    if conn.execute(sa.select(destinations.c.id).where(destinations.c.name == name)).first():
        raise Conflict(f"a destination named {name!r} exists")
    now = datetime.now(UTC)
    destination_id = f"dst_{secrets.token_hex(8)}"
    conn.execute(
        destinations.insert().values(
            id=destination_id,
            name=name,
            type=type,
            config=orjson.dumps(seal_config(kind, stored, keyring, carried=set())).decode(),
            subscriptions=orjson.dumps(subscriptions).decode(),
            mapping=orjson.dumps(mapping).decode(),
            consent_categories=orjson.dumps(sorted(set(consent_categories))).decode(),
            enabled=enabled,
            created_by=actor,
            created_at=now,
            updated_at=now,
        )
    )
    conn.execute(
        destination_state.insert().values(destination_id=destination_id, consecutive_failures=0)
    )
    if enabled:
        _sync_members(conn, destination_id, _entered_audiences(subscriptions), now=now)
    return get_destination(conn, destination_id=destination_id)


def _entered_audiences(subscriptions: list[Any]) -> set[str]:
    found: set[str] = set()
    for item in subscriptions:
        if item.get("type") == "audience" and "entered" in (item.get("changes") or ["entered"]):
            found.update(item.get("audiences", []))
    return found


def _sync_members(
    conn: Connection, destination_id: str, audience_ids: set[str], *, now: datetime
) -> int:
    """A destination that newly subscribes to an audience's entries first gets everyone who
    is in it already, as `audience.entered` with the cause `subscribed`. Holding the
    processor's row keeps these ahead of any later change of the same people."""
    if not audience_ids:
        return 0
    hold_processor(conn)
    queued = 0
    rows = conn.execute(
        sa.select(audiences.c.id, audiences.c.name).where(audiences.c.id.in_(sorted(audience_ids)))
    )
    for audience in rows:
        body = orjson.dumps(
            {
                "audience": {"id": audience.id, "name": audience.name},
                "cause": "subscribed",
                "at": now.isoformat(),
            }
        ).decode()
        prefix = f"sync-{destination_id}-{audience.id}-"
        member = audience_members.c.profile_id
        select = sa.select(
            sa.literal(destination_id),
            member,
            sa.literal("audience.entered"),
            sa.literal(prefix) + member,
            sa.literal(body),
            sa.literal(now, UtcDateTime),
            sa.literal(now + MAX_AGE_FOR_SYNC, UtcDateTime),
            sa.literal(store.PENDING),
            sa.literal(0),
            sa.literal(now, UtcDateTime),
            sa.literal(0),
        ).where(audience_members.c.audience_id == audience.id)
        result = conn.execute(
            outbox.insert().from_select(
                [
                    "destination_id",
                    "person",
                    "kind",
                    "message_id",
                    "payload",
                    "created_at",
                    "expires_at",
                    "state",
                    "attempts",
                    "next_attempt_at",
                    "replays",
                ],
                select,
            )
        )
        queued += int(result.rowcount or 0)
    return queued


def audience_choices(conn: Connection, *, limit: int = 1000) -> list[dict[str, str]]:
    """The audiences a subscription may name, by name (id and name only)."""
    rows = conn.execute(
        sa.select(audiences.c.id, audiences.c.name).order_by(audiences.c.name).limit(limit)
    )
    return [{"id": row.id, "name": row.name} for row in rows]


def _row(conn: Connection, destination_id: str) -> Any:
    row = conn.execute(sa.select(destinations).where(destinations.c.id == destination_id)).first()
    if row is None:
        raise NotFound(f"there is no destination {destination_id!r}; GET /api/v1/destinations")
    return row


def update_destination(
    conn: Connection, *, destination_id: str, changes: dict[str, Any], keyring: Keyring
) -> dict[str, Any]:
    """Change some fields; a config is merged over the stored one (secrets sent as the
    mask keep their stored value)."""
    row = _row(conn, destination_id)
    kind = destination_type(row.type)
    config = orjson.loads(row.config)
    carried = set(config)
    if "config" in changes:
        given = dict(changes["config"])
        for name in secret_fields(kind.plugin.config_model):
            if given.get(name) == MASK:
                given[name] = config.get(name)
            elif name in given:
                carried.discard(name)
        config = {**config, **given}
    subscriptions = changes.get("subscriptions", orjson.loads(row.subscriptions))
    mapping = changes.get("mapping", orjson.loads(row.mapping))
    consent = changes.get("consent_categories", orjson.loads(row.consent_categories))
    stored = _validate(
        conn, kind, config=config, subscriptions=subscriptions, mapping=mapping, consent=consent
    )
    values: dict[str, Any] = {
        "config": orjson.dumps(seal_config(kind, stored, keyring, carried=carried)).decode(),
        "subscriptions": orjson.dumps(subscriptions).decode(),
        "mapping": orjson.dumps(mapping).decode(),
        "consent_categories": orjson.dumps(sorted(set(consent))).decode(),
        "updated_at": max(datetime.now(UTC), row.updated_at + timedelta(microseconds=1)),
    }
    if "name" in changes and changes["name"] != row.name:
        taken = conn.execute(
            sa.select(destinations.c.id).where(destinations.c.name == changes["name"])
        ).first()
        if taken:
            raise Conflict(f"a destination named {changes['name']!r} exists")
        values["name"] = changes["name"]
    if "enabled" in changes:
        values["enabled"] = bool(changes["enabled"])
    conn.execute(destinations.update().where(destinations.c.id == destination_id).values(**values))
    if values.get("enabled", row.enabled):
        before = _entered_audiences(orjson.loads(row.subscriptions)) if row.enabled else set()
        _sync_members(
            conn,
            destination_id,
            _entered_audiences(subscriptions) - before,
            now=values["updated_at"],
        )
    return get_destination(conn, destination_id=destination_id)


def delete_destination(conn: Connection, *, destination_id: str) -> None:
    """Forget a destination, with its queue, dead letters and figures."""
    _row(conn, destination_id)
    for table, column in (
        (outbox, outbox.c.destination_id),
        (destination_counters, destination_counters.c.destination_id),
        (destination_hours, destination_hours.c.destination_id),
        (destination_state, destination_state.c.destination_id),
    ):
        conn.execute(table.delete().where(column == destination_id))
    conn.execute(destinations.delete().where(destinations.c.id == destination_id))


def get_destination(
    conn: Connection,
    *,
    destination_id: str,
    types: dict[str, DestinationType] | None = None,
) -> dict[str, Any]:
    """One destination; `types` (destination_types()) when the caller has them already."""
    row = _row(conn, destination_id)
    return _describe(conn, row, destination_types() if types is None else types)


def list_destinations(
    conn: Connection, *, types: dict[str, DestinationType] | None = None
) -> list[dict[str, Any]]:
    # The plugins are looked up once: finding them (entry points, JSON schemas) takes
    # longer than describing a destination.
    types = destination_types() if types is None else types
    rows = conn.execute(sa.select(destinations).order_by(destinations.c.name))
    return [_describe(conn, row, types) for row in rows]


def _describe(conn: Connection, row: Any, types: dict[str, DestinationType]) -> dict[str, Any]:
    kind = types.get(row.type)
    state = conn.execute(
        sa.select(destination_state).where(destination_state.c.destination_id == row.id)
    ).first()
    paused = state is not None and state.paused_at is not None
    return {
        "id": row.id,
        "name": row.name,
        "type": row.type,
        "config": _shown_config(kind, orjson.loads(row.config)),
        "subscriptions": orjson.loads(row.subscriptions),
        "mapping": orjson.loads(row.mapping),
        "consent_categories": orjson.loads(row.consent_categories),
        "enabled": bool(row.enabled),
        "status": "disabled" if not row.enabled else ("paused" if paused else "active"),
        "paused_at": state.paused_at if state else None,
        "paused_reason": state.paused_reason if state else None,
        "next_probe_at": state.next_probe_at if paused and state else None,
        "last_success_at": state.last_success_at if state else None,
        "last_error": state.last_error if state else None,
        "last_error_at": state.last_error_at if state else None,
        "stats": destination_stats(conn, destination_id=row.id),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def destination_stats(conn: Connection, *, destination_id: str) -> dict[str, Any]:
    """Totals (sent, failed attempts, dead, blocked by consent, replayed), what waits now
    (pending, of which retrying; dead letters), and latency from queued to delivered."""
    counters = {name: 0 for name in (*COUNTERS, "latency_ms")}
    for name, count in conn.execute(
        sa.select(destination_counters.c.name, destination_counters.c["count"]).where(
            destination_counters.c.destination_id == destination_id
        )
    ):
        counters[name] = int(count)
    waiting = {
        state: int(count)
        for state, count in conn.execute(
            sa.select(outbox.c.state, sa.func.count())
            .where(
                outbox.c.destination_id == destination_id,
                outbox.c.state.in_((store.PENDING, store.DEAD)),
            )
            .group_by(outbox.c.state)
        )
    }
    retrying = conn.execute(
        sa.select(sa.func.count()).where(
            outbox.c.destination_id == destination_id,
            outbox.c.state == store.PENDING,
            outbox.c.attempts > 0,
        )
    ).scalar()
    # The difference is taken by the database: reading 1,000 pairs of times back into
    # Python datetimes cost most of a page's time.
    if conn.dialect.name == "sqlite":
        days = sa.func.julianday(outbox.c.finished_at) - sa.func.julianday(outbox.c.created_at)
        waited = days * 86_400_000.0
    else:
        waited = sa.func.extract("epoch", outbox.c.finished_at - outbox.c.created_at) * 1000
    recent = [
        float(value)
        for (value,) in conn.execute(
            sa.select(waited)
            .where(outbox.c.destination_id == destination_id, outbox.c.state == store.DELIVERED)
            .order_by(outbox.c.id.desc())
            .limit(LATENCY_SAMPLE)
        )
        if value is not None
    ]
    recent.sort()
    latency_ms = counters.pop("latency_ms")
    return {
        **counters,
        "pending": waiting.get(store.PENDING, 0),
        "retrying": int(retrying or 0),
        "dead_letters": waiting.get(store.DEAD, 0),
        "latency_ms_mean": round(latency_ms / counters["sent"], 1) if counters["sent"] else None,
        "latency_ms_p50": round(recent[len(recent) // 2], 1) if recent else None,
        "latency_ms_p95": round(recent[int(len(recent) * 0.95)], 1) if recent else None,
    }


def resume_destination(conn: Connection, *, destination_id: str) -> dict[str, Any]:
    """Un-pause now: the next cycle sends normally, and messages waiting out a backoff go."""
    _row(conn, destination_id)
    store.resume(conn, destination_id, now=datetime.now(UTC))
    return get_destination(conn, destination_id=destination_id)


async def check_connection(
    conn: Connection, *, destination_id: str, keyring: Keyring
) -> ConnectionCheck:
    row = _row(conn, destination_id)
    try:
        plugin = instantiate(
            destination_type(row.type),
            orjson.loads(row.config),
            keyring=keyring,
            destination=f"{row.name!r} ({row.id})",
        )
    except SecretUnreadable as exc:
        return ConnectionCheck(ok=False, detail=str(exc))
    try:
        return await plugin.test_connection()
    finally:
        await plugin.aclose()


def _encode(message_id: int) -> str:
    return base64.urlsafe_b64encode(str(message_id).encode()).decode().rstrip("=")


def _decode(cursor: str) -> int:
    try:
        return int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(f"malformed cursor {cursor!r}; pass next_cursor as given") from None


def list_messages(
    conn: Connection,
    *,
    destination_id: str,
    state: str | None,
    cursor: str | None,
    limit: int,
    may_read_pii: bool = True,
) -> dict[str, Any]:
    """The delivery log, newest first; `state` narrows it (dead: the dead letters). Without
    `may_read_pii` the payloads' personal data is masked as the profile API masks it."""
    _row(conn, destination_id)
    if state is not None and state not in STATES:
        raise BadRequest(f"unknown state {state!r}; use one of {', '.join(STATES)}")
    before = _decode(cursor) if cursor is not None else None
    # One indexed range per state, merged: the index is (destination, state, id), so asking
    # for every state at once would sort all of a destination's messages to find a page.
    rows: list[Any] = []
    for each in [state] if state is not None else STATES:
        query = sa.select(outbox).where(
            outbox.c.destination_id == destination_id, outbox.c.state == each
        )
        if before is not None:
            query = query.where(outbox.c.id < before)
        rows.extend(conn.execute(query.order_by(outbox.c.id.desc()).limit(limit + 1)))
    rows.sort(key=lambda row: row.id, reverse=True)
    del rows[limit + 1 :]
    items = [_message(row, masked=not may_read_pii) for row in rows[:limit]]
    more = len(rows) > limit
    return {"items": items, "next_cursor": _encode(rows[limit - 1].id) if more else None}


def _masked(kind: str, payload: Any) -> Any:
    if not isinstance(payload, dict):
        return payload
    if kind == "event":
        return mask_event(payload)
    if kind == "traits.changed" and isinstance(payload.get("traits"), dict):
        return {**payload, "traits": mask_traits(payload["traits"])}
    return payload  # audience entries and exits name the audience, not the person


def _message(row: Any, *, masked: bool = False) -> dict[str, Any]:
    payload = orjson.loads(row.payload)
    return {
        "id": row.id,
        "message_id": row.message_id,
        "kind": row.kind,
        "profile_id": row.person,
        "state": row.state,
        "attempts": row.attempts,
        "replays": row.replays,
        "created_at": row.created_at,
        "next_attempt_at": row.next_attempt_at if row.state == store.PENDING else None,
        "expires_at": row.expires_at,
        "finished_at": row.finished_at,
        "last_error": row.last_error,
        "last_status": row.last_status,
        "payload": _masked(row.kind, payload) if masked else payload,
    }


def replay_dead_letters(
    conn: Connection,
    *,
    destination_id: str,
    ids: list[int] | None,
    max_age: timedelta,
) -> dict[str, int]:
    """Queue dead letters again (all of them, or `ids`), with a fresh maximum age and the
    same idempotency key. Only dead messages move, so replaying twice is safe: the second
    time finds them pending or delivered and skips them."""
    _row(conn, destination_id)
    now = datetime.now(UTC)
    query = outbox.update().where(
        outbox.c.destination_id == destination_id, outbox.c.state == store.DEAD
    )
    if ids is not None:
        query = query.where(outbox.c.id.in_(ids))
    moved = conn.execute(
        query.values(
            state=store.PENDING,
            attempts=0,
            next_attempt_at=now,
            expires_at=now + max_age,
            finished_at=None,
            replays=outbox.c.replays + 1,
        )
    )
    replayed = int(moved.rowcount or 0)
    store.add_counts(conn, destination_id, {"replayed": replayed})
    requested = len(set(ids)) if ids is not None else replayed
    return {"replayed": replayed, "skipped": max(0, requested - replayed)}


def metrics(conn: Connection) -> list[dict[str, Any]]:
    """Every destination's figures, for /metrics."""
    rows = conn.execute(sa.select(destinations.c.id, destinations.c.name, destinations.c.enabled))
    found = []
    for row in rows:
        state = conn.execute(
            sa.select(destination_state.c.paused_at).where(
                destination_state.c.destination_id == row.id
            )
        ).first()
        found.append(
            {
                "id": row.id,
                "name": row.name,
                "paused": bool(state and state.paused_at is not None),
                **destination_stats(conn, destination_id=row.id),
            }
        )
    return found


@dataclass
class Resealed:
    """What `reseal_destinations` did: values encrypted afresh, of which plain text from
    before encryption; destinations whose secrets no configured key opens (with why)."""

    values: int = 0
    plain_text: int = 0
    destinations: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)


def reseal_destinations(conn: Connection, *, keyring: Keyring, plain_only: bool) -> Resealed:
    """Encrypt every destination's stored secrets under the newest key, or (`plain_only`)
    only those still in plain text. A secret no key opens is left as it is and reported; the
    caller decides whether to commit the rest."""
    report = Resealed()
    types = destination_types()
    columns = destinations.c
    # Locked (PostgreSQL), so an update committed meanwhile is not overwritten.
    query = sa.select(columns.id, columns.name, columns.type, columns.config).with_for_update()
    rows = conn.execute(query).all()
    for row in rows:
        kind = types.get(row.type)
        if kind is None:
            report.unreadable[row.id] = (
                f"the destination {row.name!r} ({row.id}) uses the plugin {row.type!r}, which "
                "is not installed, so its secrets cannot be found; install it or delete the "
                "destination"
            )
            continue
        config = orjson.loads(row.config)
        changed = False
        for name in secret_fields(kind.plugin.config_model):
            value = config.get(name)
            if value is None:
                continue
            what = f"config.{name} of the destination {row.name!r} ({row.id})"
            try:
                if plain_only and not has_plain_text(value):
                    unseal(value, keyring, what=what)  # only tells whether a key opens it
                    continue
                config[name] = reseal(value, keyring, what=what)
            except SecretUnreadable as exc:
                report.unreadable[row.id] = str(exc)
                continue
            report.values += 1
            report.plain_text += has_plain_text(value)
            changed = True
        if changed:
            # `updated_at` stays: the delivery worker's plugin holds the same plain values.
            conn.execute(
                destinations.update()
                .where(destinations.c.id == row.id)
                .values(config=orjson.dumps(config).decode())
            )
            report.destinations += 1
    return report
