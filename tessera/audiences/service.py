"""Computed-trait and audience definitions: create, read, update, delete, and members.

Definitions are people's decisions, kept across rebuilds. Creating or changing one only
records it, with a status: the processor backfills a computed trait from the log
("backfilling" → "ready") and evaluates an audience over every profile ("building" →
"ready"), then keeps both current with every event and at every window's edge.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tessera.audiences.catalog import BACKFILLING, BUILDING, READY, references
from tessera.audiences.language import AudienceDefinition, parse_audience
from tessera.audiences.models import (
    audience_changes,
    audience_history,
    audience_members,
    audiences,
    evaluation_schedule,
)
from tessera.audiences.sizes import forget_audience, sizes_of
from tessera.errors import BadRequest, Conflict, InvalidDefinition, NotFound
from tessera.eventlog.models import events
from tessera.processor.models import hold_processor
from tessera.profiles.computed import parse_computed_trait
from tessera.profiles.models import computed_trait_values, computed_traits


def _dumps(document: Any) -> str:
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS).decode()


def log_head(conn: Connection) -> int:
    """The newest event's position (a max over the primary key: one index probe)."""
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.seq), 0))).scalar_one())


# -- computed traits --------------------------------------------------------------------


def _trait_view(row: Any, *, head: int) -> dict[str, Any]:
    document = orjson.loads(row.definition)
    document["name"] = row.name
    return {
        "name": row.name,
        "definition": document,
        "implicit": bool(row.implicit),
        "status": row.status,
        "backfill": {
            "through_seq": int(row.backfilled_through),
            "log_head_seq": head,
            "progress": backfill_progress(row.status, int(row.backfilled_through), head),
        },
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def backfill_progress(status: str, through: int, head: int) -> float:
    """0 to 1: how much of the log a backfilling trait has replayed (1 once ready)."""
    if status == READY or head == 0:
        return 1.0
    return round(min(1.0, through / head), 4)


def list_computed_traits(
    conn: Connection, *, include_implicit: bool = False
) -> list[dict[str, Any]]:
    query = sa.select(computed_traits).order_by(computed_traits.c.name)
    if not include_implicit:
        query = query.where(computed_traits.c.implicit.is_(False))
    head = log_head(conn)
    return [_trait_view(row, head=head) for row in conn.execute(query)]


def get_computed_trait(conn: Connection, *, name: str) -> dict[str, Any]:
    row = conn.execute(sa.select(computed_traits).where(computed_traits.c.name == name)).first()
    if row is None:
        raise NotFound(
            f"there is no computed trait {name!r}; GET /api/v1/computed-traits lists them"
        )
    return _trait_view(row, head=log_head(conn))


def create_computed_trait(conn: Connection, *, document: Any) -> dict[str, Any]:
    spec = parse_computed_trait(document)
    exists = conn.execute(
        sa.select(computed_traits.c.name).where(computed_traits.c.name == spec.name)
    ).first()
    if exists is not None:
        raise Conflict(f"a computed trait named {spec.name!r} exists; PUT it to change it")
    _insert_trait(conn, spec.name, spec.to_document(), implicit=False)
    return get_computed_trait(conn, name=spec.name)


def _insert_trait(conn: Connection, name: str, document: dict[str, Any], *, implicit: bool) -> None:
    stored = {key: value for key, value in document.items() if key != "name"}
    now = datetime.now(UTC)
    conn.execute(
        computed_traits.insert().values(
            name=name,
            definition=_dumps(stored),
            implicit=implicit,
            status=BACKFILLING,
            backfilled_through=0,
            created_at=now,
            updated_at=now,
        )
    )


def update_computed_trait(conn: Connection, *, name: str, document: Any) -> dict[str, Any]:
    current = get_computed_trait(conn, name=name)
    if current["implicit"]:
        raise BadRequest(f"{name!r} belongs to audience event conditions; change the audience")
    if not isinstance(document, dict):
        raise BadRequest("the body is a computed-trait definition object")
    spec = parse_computed_trait({**document, "name": name})
    if spec.to_document() != current["definition"]:
        _reset_trait(conn, name, spec.to_document())
        _check_users_still_parse(conn, name)
        _rebuild_dependents(conn, {name})
    return get_computed_trait(conn, name=name)


def _check_users_still_parse(conn: Connection, name: str) -> None:
    """A new kind may not fit how audiences use the trait (`gte` on a list): refuse the
    change (the caller's transaction rolls back) rather than store audiences that no longer
    mean anything."""
    broken = []
    for aid, definition in conn.execute(sa.select(audiences.c.id, audiences.c.definition)):
        document = orjson.loads(definition)
        if name in references(document, "computed"):
            try:
                parse_definition(conn, document, aid)
            except InvalidDefinition as exc:
                broken.append(f"{aid} ({exc.message})")
    if broken:
        raise Conflict(
            f"computed trait {name!r} cannot change this way: audiences use it as it is: "
            + "; ".join(broken)
        )


def _reset_trait(conn: Connection, name: str, document: dict[str, Any]) -> None:
    stored = {key: value for key, value in document.items() if key != "name"}
    conn.execute(computed_trait_values.delete().where(computed_trait_values.c.name == name))
    conn.execute(evaluation_schedule.delete().where(evaluation_schedule.c.item == f"trait:{name}"))
    conn.execute(
        computed_traits.update()
        .where(computed_traits.c.name == name)
        .values(
            definition=_dumps(stored),
            status=BACKFILLING,
            backfilled_through=0,
            updated_at=datetime.now(UTC),
        )
    )


def delete_computed_trait(conn: Connection, *, name: str) -> None:
    current = get_computed_trait(conn, name=name)
    if current["implicit"]:
        raise BadRequest(f"{name!r} belongs to audience event conditions; change the audience")
    users = _audiences_using(conn, computed={name})
    if users:
        raise Conflict(
            f"audiences {', '.join(sorted(users))} use computed trait {name!r}; change them first"
        )
    _drop_trait(conn, name)


def _drop_trait(conn: Connection, name: str) -> None:
    conn.execute(computed_trait_values.delete().where(computed_trait_values.c.name == name))
    conn.execute(evaluation_schedule.delete().where(evaluation_schedule.c.item == f"trait:{name}"))
    conn.execute(computed_traits.delete().where(computed_traits.c.name == name))


# -- audiences --------------------------------------------------------------------------


def parse_definition(
    conn: Connection, document: Any, audience_id: str | None
) -> AudienceDefinition:
    """Validate an audience document against the store's computed traits and audiences."""
    kinds = {
        name: orjson.loads(definition)["kind"]
        for name, definition in conn.execute(
            sa.select(computed_traits.c.name, computed_traits.c.definition).where(
                computed_traits.c.implicit.is_(False)
            )
        )
    }
    stored = {
        aid: frozenset(references(orjson.loads(definition)))
        for aid, definition in conn.execute(sa.select(audiences.c.id, audiences.c.definition))
    }
    return parse_audience(
        document,
        computed_kinds=kinds,
        audience_references=stored.get,
        audience_id=audience_id,
    )


def _audience_view(row: Any, *, members: int) -> dict[str, Any]:
    total = int(row.build_total)
    return {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "definition": orjson.loads(row.definition),
        "status": row.status,
        "size": int(members),
        "build": {
            "evaluated_profiles": int(row.built_profiles),
            "profiles": total,
            "progress": build_progress(row.status, int(row.built_profiles), total),
        },
        "created_by": row.created_by,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def build_progress(status: str, built: int, total: int) -> float:
    """0 to 1: the share of the profiles counted when the build began that it has
    evaluated (1 once ready; profiles created meanwhile may take it past the count)."""
    if status == READY:
        return 1.0
    if total <= 0:
        return 0.0
    return round(min(1.0, built / total), 4)


def _get_row(conn: Connection, audience_id: str) -> Any:
    row = conn.execute(sa.select(audiences).where(audiences.c.id == audience_id)).first()
    if row is None:
        raise NotFound(f"there is no audience {audience_id!r}; GET /api/v1/audiences lists them")
    return row


def get_audience(conn: Connection, *, audience_id: str) -> dict[str, Any]:
    row = _get_row(conn, audience_id)
    return _audience_view(row, members=sizes_of(conn, [audience_id]).get(audience_id, 0))


def list_audiences(conn: Connection) -> list[dict[str, Any]]:
    rows = list(conn.execute(sa.select(audiences).order_by(audiences.c.created_at)))
    if not rows:
        return []
    sizes = sizes_of(conn)
    return [_audience_view(row, members=sizes.get(row.id, 0)) for row in rows]


def _check_name(conn: Connection, name: str, audience_id: str | None) -> None:
    if not name.strip() or len(name) > 200:
        raise BadRequest("an audience name is 1 to 200 characters", fields={"field": "name"})
    clash = conn.execute(
        sa.select(audiences.c.id).where(
            audiences.c.name == name, audiences.c.id != (audience_id or "")
        )
    ).first()
    if clash is not None:
        raise Conflict(f"an audience named {name!r} exists ({clash.id})")


def _ensure_implicit(conn: Connection, definition: AudienceDefinition) -> None:
    for document in definition.implicit_traits:
        exists = conn.execute(
            sa.select(computed_traits.c.name).where(computed_traits.c.name == document["name"])
        ).first()
        if exists is None:
            _insert_trait(conn, document["name"], document, implicit=True)


def create_audience(
    conn: Connection, *, name: str, description: str, document: Any, actor: str | None
) -> dict[str, Any]:
    _check_name(conn, name, None)
    definition = parse_definition(conn, document, None)
    _ensure_implicit(conn, definition)
    now = datetime.now(UTC)
    audience_id = f"aud_{secrets.token_hex(8)}"
    conn.execute(
        audiences.insert().values(
            id=audience_id,
            name=name,
            description=description,
            definition=_dumps(definition.to_document()),
            status=BUILDING,
            build_cursor="",
            built_profiles=0,
            created_by=actor,
            created_at=now,
            updated_at=now,
        )
    )
    return get_audience(conn, audience_id=audience_id)


def update_audience(
    conn: Connection,
    *,
    audience_id: str,
    name: str | None,
    description: str | None,
    document: Any | None,
) -> dict[str, Any]:
    row = _get_row(conn, audience_id)
    values: dict[str, Any] = {"updated_at": datetime.now(UTC)}
    if name is not None and name != row.name:
        _check_name(conn, name, audience_id)
        values["name"] = name
    if description is not None:
        values["description"] = description
    if document is not None:
        definition = parse_definition(conn, document, audience_id)
        stored = _dumps(definition.to_document())
        if stored != row.definition:
            _ensure_implicit(conn, definition)
            values.update(definition=stored, status=BUILDING, build_cursor="", built_profiles=0)
    conn.execute(audiences.update().where(audiences.c.id == audience_id).values(**values))
    if "definition" in values:
        _rebuild_dependents(conn, set(), audiences_changed={audience_id})
        _drop_unused_implicit(conn)
    return get_audience(conn, audience_id=audience_id)


def delete_audience(conn: Connection, *, audience_id: str) -> None:
    _get_row(conn, audience_id)
    users = _audiences_using(conn, audiences_={audience_id})
    if users:
        raise Conflict(
            f"audiences {', '.join(sorted(users))} refer to {audience_id}; change them first"
        )
    hold_processor(conn)  # the exits below join the change stream in order
    now = datetime.now(UTC)
    members = [
        pid
        for (pid,) in conn.execute(
            sa.select(audience_members.c.profile_id).where(
                audience_members.c.audience_id == audience_id
            )
        )
    ]
    if members:
        # Destinations hear that every member left.
        conn.execute(
            audience_changes.insert(),
            [
                {
                    "audience_id": audience_id,
                    "profile_id": pid,
                    "change": "exited",
                    "at": now,
                    "cause": "audience deleted",
                }
                for pid in members
            ],
        )
    conn.execute(
        audience_history.update()
        .where(
            audience_history.c.audience_id == audience_id, audience_history.c.exited_at.is_(None)
        )
        .values(exited_at=now, exited_cause="audience deleted")
    )
    conn.execute(audience_members.delete().where(audience_members.c.audience_id == audience_id))
    forget_audience(conn, audience_id=audience_id)
    conn.execute(
        evaluation_schedule.delete().where(evaluation_schedule.c.item == f"audience:{audience_id}")
    )
    conn.execute(audiences.delete().where(audiences.c.id == audience_id))
    _drop_unused_implicit(conn)


def _audiences_using(
    conn: Connection, *, computed: set[str] | None = None, audiences_: set[str] | None = None
) -> set[str]:
    users: set[str] = set()
    for aid, definition in conn.execute(sa.select(audiences.c.id, audiences.c.definition)):
        document = orjson.loads(definition)
        if computed and computed & references(document, "computed"):
            users.add(aid)
        if audiences_ and audiences_ & references(document):
            users.add(aid)
    return users


def _rebuild_dependents(
    conn: Connection, traits: set[str], *, audiences_changed: set[str] | None = None
) -> None:
    """Audiences that read a changed trait or audience are evaluated over everyone again."""
    changed = set(audiences_changed or ())
    frontier = set(_audiences_using(conn, computed=traits)) if traits else set()
    frontier |= changed
    while frontier:
        dependents = _audiences_using(conn, audiences_=frontier) - changed
        changed |= frontier
        frontier = dependents
    changed -= set(audiences_changed or ())
    rebuilt = changed | set(audiences_changed or ())
    if rebuilt:  # their builds start with no schedule rows (build_step relies on it)
        conn.execute(
            evaluation_schedule.delete().where(
                evaluation_schedule.c.item.in_(sorted(f"audience:{aid}" for aid in rebuilt))
            )
        )
    if changed:
        conn.execute(
            audiences.update()
            .where(audiences.c.id.in_(sorted(changed)))
            .values(
                status=BUILDING, build_cursor="", built_profiles=0, updated_at=datetime.now(UTC)
            )
        )


def _drop_unused_implicit(conn: Connection) -> None:
    used: set[str] = set()
    for aid, definition in conn.execute(sa.select(audiences.c.id, audiences.c.definition)):
        parsed = parse_definition(conn, orjson.loads(definition), aid)
        used |= {document["name"] for document in parsed.implicit_traits}
    for (name,) in conn.execute(
        sa.select(computed_traits.c.name).where(computed_traits.c.implicit.is_(True))
    ):
        if name not in used:
            _drop_trait(conn, name)


# -- members ----------------------------------------------------------------------------


def list_members(
    conn: Connection, *, audience_id: str, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    _get_row(conn, audience_id)
    query = (
        sa.select(audience_members.c.profile_id, audience_members.c.entered_at)
        .where(audience_members.c.audience_id == audience_id)
        .order_by(audience_members.c.profile_id)
        .limit(limit + 1)
    )
    if cursor:
        query = query.where(audience_members.c.profile_id > cursor)
    rows = list(conn.execute(query))
    page = [{"profile_id": row.profile_id, "entered_at": row.entered_at} for row in rows[:limit]]
    return page, (rows[limit - 1].profile_id if len(rows) > limit else None)


# Built once: it runs on every profile lookup, where building the select cost ~60 us.
_PROFILE_AUDIENCES = (
    sa.select(audiences.c.id, audiences.c.name, audience_members.c.entered_at)
    .join(audiences, audiences.c.id == audience_members.c.audience_id)
    .where(audience_members.c.profile_id == sa.bindparam("profile_id"))
    .order_by(audiences.c.name)
)


def profile_audiences(conn: Connection, *, profile_id: str) -> list[dict[str, Any]]:
    return [
        {"id": row.id, "name": row.name, "entered_at": row.entered_at}
        for row in conn.execute(_PROFILE_AUDIENCES, {"profile_id": profile_id})
    ]
