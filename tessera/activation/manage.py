"""Destinations changed by a person, each change audited in its transaction: the one
implementation the API's routes and the web pages both call.

The audit entries name the destination (`destination:<id>`) and what changed; secrets
never appear in them, only the names of the fields that changed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Connection

from tessera.activation import service
from tessera.audit.service import record
from tessera.store.secrets import Keyring


def _audit(
    conn: Connection, *, actor: str, ip: str | None, action: str, target: str, **details: Any
) -> None:
    record(
        conn,
        actor=actor,
        action=action,
        target=f"destination:{target}",
        ip=ip,
        details=details or None,
    )


def create_destination(
    conn: Connection,
    *,
    actor: str,
    ip: str | None,
    keyring: Keyring,
    name: str,
    type: str,
    config: dict[str, Any],
    subscriptions: list[Any],
    mapping: dict[str, Any],
    consent_categories: list[str],
    enabled: bool,
) -> dict[str, Any]:
    destination = service.create_destination(
        conn,
        name=name,
        type=type,
        config=config,
        subscriptions=subscriptions,
        mapping=mapping,
        consent_categories=consent_categories,
        enabled=enabled,
        actor=actor,
        keyring=keyring,
    )
    _audit(
        conn, actor=actor, ip=ip, action="destination.create", target=destination["id"], name=name
    )
    return destination


def update_destination(
    conn: Connection,
    *,
    actor: str,
    ip: str | None,
    keyring: Keyring,
    destination_id: str,
    changes: dict[str, Any],
) -> dict[str, Any]:
    """Change the fields in `changes` (see `service.update_destination`)."""
    destination = service.update_destination(
        conn, destination_id=destination_id, changes=changes, keyring=keyring
    )
    _audit(
        conn,
        actor=actor,
        ip=ip,
        action="destination.update",
        target=destination_id,
        fields=sorted(changes),
    )
    return destination


def delete_destination(
    conn: Connection, *, actor: str, ip: str | None, destination_id: str
) -> None:
    service.delete_destination(conn, destination_id=destination_id)
    _audit(conn, actor=actor, ip=ip, action="destination.delete", target=destination_id)


def resume_destination(
    conn: Connection, *, actor: str, ip: str | None, destination_id: str
) -> dict[str, Any]:
    destination = service.resume_destination(conn, destination_id=destination_id)
    _audit(conn, actor=actor, ip=ip, action="destination.resume", target=destination_id)
    return destination


def replay_dead_letters(
    conn: Connection,
    *,
    actor: str,
    ip: str | None,
    destination_id: str,
    ids: list[int] | None,
    max_age: timedelta,
) -> dict[str, int]:
    """Queue dead letters again (all, or `ids`). The caller then wakes the delivery worker
    (`wake_delivery`), best after the commit (a background task), so it finds them."""
    result = service.replay_dead_letters(
        conn, destination_id=destination_id, ids=ids, max_age=max_age
    )
    _audit(conn, actor=actor, ip=ip, action="destination.replay", target=destination_id, **result)
    return result


def wake_delivery(app_state: Any) -> None:
    """Wake whoever delivers (the thread in this process, or the worker child) so replayed
    messages go now rather than at its next poll."""
    wake = getattr(app_state, "wake_delivery", None)
    if wake is not None:
        wake()
