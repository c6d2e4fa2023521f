"""HTTP routes for computed traits (/api/v1/computed-traits) and audiences (/api/v1/audiences).

Thin: the service validates and stores definitions; the processor backfills and builds them.
Every change is written to the audit log in the same transaction.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from tessera.api.deps import ConnectionDep, Principal, client_ip, require
from tessera.audiences import admin, service
from tessera.audiences.preview import preview_audience
from tessera.audiences.schemas import (
    AudienceIn,
    AudienceOut,
    AudiencePatch,
    ComputedTraitDefinition,
    ComputedTraitOut,
    MemberPage,
    PreviewIn,
    PreviewOut,
    check_plain_json,
)
from tessera.errors import BadRequest, InvalidDefinition

traits_router = APIRouter(prefix="/api/v1/computed-traits", tags=["computed traits"])
audiences_router = APIRouter(prefix="/api/v1/audiences", tags=["audiences"])
Reader = Annotated[Principal, Depends(require("audiences:read"))]
Writer = Annotated[Principal, Depends(require("audiences:write"))]
Cursor = Annotated[
    str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
]


# -- computed traits --------------------------------------------------------------------


@traits_router.get("", response_model=list[ComputedTraitOut], summary="List computed traits")
def list_computed_traits(
    conn: ConnectionDep,
    _: Reader,
    include_implicit: Annotated[
        bool, Query(description="Also the `_evt_...` traits audiences' event conditions use.")
    ] = False,
) -> list[dict[str, Any]]:
    return service.list_computed_traits(conn, include_implicit=include_implicit)


@traits_router.post(
    "",
    response_model=ComputedTraitOut,
    status_code=201,
    summary="Define a computed trait",
)
def create_computed_trait(
    body: ComputedTraitDefinition, request: Request, conn: ConnectionDep, principal: Writer
) -> dict[str, Any]:
    """The body is the definition. The trait starts `backfilling` (the processor replays the
    log into it) and turns `ready`."""
    return admin.create_computed_trait(
        conn, actor=principal.actor, ip=client_ip(request), document=body.document()
    )


@traits_router.get("/{name}", response_model=ComputedTraitOut, summary="One computed trait")
def get_computed_trait(name: str, conn: ConnectionDep, _: Reader) -> dict[str, Any]:
    return service.get_computed_trait(conn, name=name)


@traits_router.put("/{name}", response_model=ComputedTraitOut, summary="Change a computed trait")
def update_computed_trait(
    name: str,
    body: ComputedTraitDefinition,
    request: Request,
    conn: ConnectionDep,
    principal: Writer,
) -> dict[str, Any]:
    """The whole new definition, without a name (or with the same one). A changed definition
    is backfilled again, and the audiences that use it are rebuilt."""
    return admin.update_computed_trait(
        conn, actor=principal.actor, ip=client_ip(request), name=name, document=body.document()
    )


@traits_router.delete("/{name}", status_code=204, summary="Delete a computed trait")
def delete_computed_trait(
    name: str, request: Request, conn: ConnectionDep, principal: Writer
) -> None:
    """Refused with 409 while an audience uses it."""
    admin.delete_computed_trait(conn, actor=principal.actor, ip=client_ip(request), name=name)


# -- audiences --------------------------------------------------------------------------


@audiences_router.get("", response_model=list[AudienceOut], summary="List audiences")
def list_audiences(conn: ConnectionDep, _: Reader) -> list[dict[str, Any]]:
    return service.list_audiences(conn)


@audiences_router.post(
    "", response_model=AudienceOut, status_code=201, summary="Define an audience"
)
def create_audience(
    body: AudienceIn, request: Request, conn: ConnectionDep, principal: Writer
) -> dict[str, Any]:
    """The audience starts `building` (the processor evaluates every profile) and turns
    `ready`; from then on membership follows every event and the passing of time."""
    return admin.create_audience(
        conn,
        actor=principal.actor,
        ip=client_ip(request),
        name=body.name,
        description=body.description,
        document=body.definition,
    )


@audiences_router.post("/preview", response_model=PreviewOut, summary="Preview a draft")
def preview(body: PreviewIn, request: Request, conn: ConnectionDep, _: Reader) -> dict[str, Any]:
    """The size and a sample of members of a draft definition, as of now; nothing is saved.
    Exact when every profile is evaluated within about 1.5 s; past it, estimated from
    windows spread over all profiles, marked `exact: false`, with a 95% `margin`."""
    check_plain_json(body.definition)
    return preview_audience(conn, document=body.definition, now=request.app.state.pipeline.clock())


@audiences_router.get("/{audience_id}", response_model=AudienceOut, summary="One audience")
def get_audience(audience_id: str, conn: ConnectionDep, _: Reader) -> dict[str, Any]:
    return service.get_audience(conn, audience_id=audience_id)


@audiences_router.patch("/{audience_id}", response_model=AudienceOut, summary="Change an audience")
def update_audience(
    audience_id: str,
    body: AudiencePatch,
    request: Request,
    conn: ConnectionDep,
    principal: Writer,
) -> dict[str, Any]:
    """Any of name, description and definition; a changed definition rebuilds the audience
    and the audiences that refer to it."""
    document = None
    if "definition" in body.model_fields_set:
        if body.definition is None:
            raise InvalidDefinition("a condition is an object, not None", path="$")
        document = body.definition
    return admin.update_audience(
        conn,
        actor=principal.actor,
        ip=client_ip(request),
        audience_id=audience_id,
        name=body.name,
        description=body.description,
        document=document,
    )


@audiences_router.delete("/{audience_id}", status_code=204, summary="Delete an audience")
def delete_audience(
    audience_id: str, request: Request, conn: ConnectionDep, principal: Writer
) -> None:
    """Every member exits (destinations hear it). Refused with 409 while another audience
    refers to this one."""
    admin.delete_audience(
        conn, actor=principal.actor, ip=client_ip(request), audience_id=audience_id
    )


@audiences_router.get(
    "/{audience_id}/members", response_model=MemberPage, summary="The audience's members"
)
def list_members(
    audience_id: str,
    conn: ConnectionDep,
    _: Reader,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Current members by profile id, a page at a time; follow `next_cursor`."""
    items, last = service.list_members(
        conn, audience_id=audience_id, cursor=_decode_cursor(cursor), limit=limit
    )
    return {"items": items, "next_cursor": None if last is None else _encode_cursor(last)}


# The cursor is opaque, like the timeline's, so how pages are cut can change without
# breaking clients; today it is the last profile id of the page.
def _encode_cursor(profile_id: str) -> str:
    return base64.urlsafe_b64encode(profile_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        text = ""
    if not text.startswith("prf_") or "\x00" in text:
        raise BadRequest(f"cursor {cursor[:40]!r} is not one this API gave out")
    return text
