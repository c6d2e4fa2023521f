"""Changing computed traits and audiences as people do, each change audited in the same
transaction: the one implementation the API's routes and the web pages both call.

`service.py` validates and stores definitions; this adds what a person's change needs
around it: plain-JSON checks, a clash lost to a concurrent insert turned into the same 409
as one seen in advance, and an audit entry saying what changed, from and to.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from tessera.audiences import service
from tessera.audiences.schemas import check_plain_json
from tessera.audit.service import record
from tessera.errors import Conflict, InvalidDefinition


@contextmanager
def _unique(message: str) -> Iterator[None]:
    """Two requests creating the same name at once: the loser's insert hits the unique
    constraint after the service's check; that is the same 409 as a clash seen in advance."""
    try:
        yield
    except IntegrityError:
        raise Conflict(message) from None


# -- computed traits --------------------------------------------------------------------


def create_computed_trait(
    conn: Connection, *, actor: str, ip: str | None, document: dict[str, Any]
) -> dict[str, Any]:
    """Define a computed trait; it starts `backfilling` and turns `ready`."""
    check_plain_json(document)
    with _unique(f"a computed trait named {document.get('name')!r} exists"):
        trait = service.create_computed_trait(conn, document=document)
    record(
        conn,
        actor=actor,
        action="computed_trait.create",
        target=f"computed_trait:{trait['name']}",
        ip=ip,
        details={"definition": trait["definition"]},
    )
    return trait


def update_computed_trait(
    conn: Connection, *, actor: str, ip: str | None, name: str, document: dict[str, Any]
) -> dict[str, Any]:
    """The whole new definition, without a name (or with the same one); audited only when
    the definition changed."""
    check_plain_json(document)
    if "name" in document and document["name"] != name:
        raise InvalidDefinition(
            f"a computed trait cannot be renamed: the body names {document['name']!r}, the URL "
            f"{name!r}; leave the name out, or create a new trait and delete this one",
            path="$.name",
        )
    before = service.get_computed_trait(conn, name=name)
    trait = service.update_computed_trait(conn, name=name, document=document)
    if trait["definition"] != before["definition"]:
        record(
            conn,
            actor=actor,
            action="computed_trait.update",
            target=f"computed_trait:{name}",
            ip=ip,
            details={"from": before["definition"], "to": trait["definition"]},
        )
    return trait


def delete_computed_trait(conn: Connection, *, actor: str, ip: str | None, name: str) -> None:
    """Refused with 409 while an audience uses it."""
    service.delete_computed_trait(conn, name=name)
    record(
        conn, actor=actor, action="computed_trait.delete", target=f"computed_trait:{name}", ip=ip
    )


# -- audiences --------------------------------------------------------------------------


def create_audience(
    conn: Connection,
    *,
    actor: str,
    ip: str | None,
    name: str,
    description: str,
    document: Any,
) -> dict[str, Any]:
    """Define an audience; it starts `building` and turns `ready`."""
    check_plain_json(document)
    with _unique(f"an audience named {name!r} exists"):
        audience = service.create_audience(
            conn, name=name, description=description, document=document, actor=actor
        )
    record(
        conn,
        actor=actor,
        action="audience.create",
        target=f"audience:{audience['id']}",
        ip=ip,
        details={"name": audience["name"], "definition": audience["definition"]},
    )
    return audience


def update_audience(
    conn: Connection,
    *,
    actor: str,
    ip: str | None,
    audience_id: str,
    name: str | None = None,
    description: str | None = None,
    document: Any | None = None,
) -> dict[str, Any]:
    """Change any of the three (None keeps it); the audit entry holds each changed field,
    from and to, and nothing is recorded when nothing changed."""
    if document is not None:
        check_plain_json(document)
    before = service.get_audience(conn, audience_id=audience_id)
    with _unique(f"an audience named {name!r} exists"):
        audience = service.update_audience(
            conn,
            audience_id=audience_id,
            name=name,
            description=description,
            document=document,
        )
    changes = {
        field: {"from": before[field], "to": audience[field]}
        for field in ("name", "description", "definition")
        if before[field] != audience[field]
    }
    if changes:
        record(
            conn,
            actor=actor,
            action="audience.update",
            target=f"audience:{audience_id}",
            ip=ip,
            details=changes,
        )
    return audience


def delete_audience(conn: Connection, *, actor: str, ip: str | None, audience_id: str) -> None:
    """Every member exits (destinations hear it). Refused with 409 while another audience
    refers to this one."""
    before = service.get_audience(conn, audience_id=audience_id)
    service.delete_audience(conn, audience_id=audience_id)
    record(
        conn,
        actor=actor,
        action="audience.delete",
        target=f"audience:{audience_id}",
        ip=ip,
        details={"name": before["name"], "size": before["size"]},
    )
