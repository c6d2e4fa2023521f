"""HTTP routes for destinations (/api/v1/destinations) and their types: configuration,
test connection, resume, the delivery log, dead letters and replay. Every change is
audited in its transaction."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request

from tessera.activation import manage, service
from tessera.activation.schemas import (
    ConnectionCheckOut,
    DestinationIn,
    DestinationOut,
    DestinationPatch,
    DestinationTypeOut,
    MessagePage,
    ReplayIn,
    ReplayOut,
)
from tessera.api.deps import ConnectionDep, KeyringDep, Principal, client_ip, require

router = APIRouter(prefix="/api/v1", tags=["destinations"])
Reader = Annotated[Principal, Depends(require("destinations:read"))]
Writer = Annotated[Principal, Depends(require("destinations:write"))]
Cursor = Annotated[
    str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
]
Limit = Annotated[int, Query(ge=1, le=500, description="Messages per page.")]


@router.get(
    "/destination-types",
    response_model=list[DestinationTypeOut],
    summary="Installed destination plugins and their config schemas",
)
def list_destination_types(_: Reader) -> list[dict[str, Any]]:
    return service.list_types()


@router.get("/destinations", response_model=list[DestinationOut], summary="List destinations")
def list_destinations(conn: ConnectionDep, _: Reader) -> list[dict[str, Any]]:
    return service.list_destinations(conn)


@router.post(
    "/destinations", response_model=DestinationOut, status_code=201, summary="Add a destination"
)
def create_destination(
    body: DestinationIn,
    request: Request,
    conn: ConnectionDep,
    keyring: KeyringDep,
    principal: Writer,
) -> dict[str, Any]:
    """From now on, what it subscribed to is queued for it as the processor commits. Its
    secrets are stored encrypted and never shown back."""
    return manage.create_destination(
        conn,
        actor=principal.actor,
        ip=client_ip(request),
        keyring=keyring,
        **body.model_dump(),
    )


@router.get(
    "/destinations/{destination_id}", response_model=DestinationOut, summary="One destination"
)
def get_destination(destination_id: str, conn: ConnectionDep, _: Reader) -> dict[str, Any]:
    return service.get_destination(conn, destination_id=destination_id)


@router.patch(
    "/destinations/{destination_id}",
    response_model=DestinationOut,
    summary="Change a destination (only the fields sent)",
)
def update_destination(
    destination_id: str,
    body: DestinationPatch,
    *,
    request: Request,
    conn: ConnectionDep,
    keyring: KeyringDep,
    principal: Writer,
) -> dict[str, Any]:
    return manage.update_destination(
        conn,
        actor=principal.actor,
        ip=client_ip(request),
        keyring=keyring,
        destination_id=destination_id,
        changes=body.model_dump(exclude_unset=True),
    )


@router.delete("/destinations/{destination_id}", status_code=204, summary="Delete a destination")
def delete_destination(
    destination_id: str, request: Request, conn: ConnectionDep, principal: Writer
) -> None:
    """Its queue and dead letters go with it."""
    manage.delete_destination(
        conn, actor=principal.actor, ip=client_ip(request), destination_id=destination_id
    )


@router.post(
    "/destinations/{destination_id}/test",
    response_model=ConnectionCheckOut,
    summary="Try the destination's connection",
)
async def test_destination(
    destination_id: str, conn: ConnectionDep, keyring: KeyringDep, _: Writer
) -> dict[str, Any]:
    check = await service.check_connection(conn, destination_id=destination_id, keyring=keyring)
    return {"ok": check.ok, "detail": check.detail}


@router.post(
    "/destinations/{destination_id}/resume",
    response_model=DestinationOut,
    summary="Resume a paused destination now",
)
def resume_destination(
    destination_id: str, request: Request, conn: ConnectionDep, principal: Writer
) -> dict[str, Any]:
    return manage.resume_destination(
        conn, actor=principal.actor, ip=client_ip(request), destination_id=destination_id
    )


@router.get(
    "/destinations/{destination_id}/messages",
    response_model=MessagePage,
    summary="The delivery log, newest first",
)
def list_messages(
    destination_id: str,
    *,
    conn: ConnectionDep,
    principal: Reader,
    state: Annotated[
        str | None, Query(description="pending, delivered, dead or blocked (consent).")
    ] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    """Personal data in the payloads is masked for roles without `pii:read`."""
    return service.list_messages(
        conn,
        destination_id=destination_id,
        state=state,
        cursor=cursor,
        limit=limit,
        may_read_pii=principal.may("pii:read"),
    )


@router.get(
    "/destinations/{destination_id}/dead-letters",
    response_model=MessagePage,
    summary="Messages that could not be delivered, with their reasons",
)
def list_dead_letters(
    destination_id: str,
    conn: ConnectionDep,
    principal: Reader,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    return service.list_messages(
        conn,
        destination_id=destination_id,
        state="dead",
        cursor=cursor,
        limit=limit,
        may_read_pii=principal.may("pii:read"),
    )


@router.post(
    "/destinations/{destination_id}/dead-letters/replay",
    response_model=ReplayOut,
    summary="Replay dead letters: all, or the ids given",
)
def replay_dead_letters(
    destination_id: str,
    body: ReplayIn,
    *,
    request: Request,
    conn: ConnectionDep,
    principal: Writer,
    background: BackgroundTasks,
) -> dict[str, int]:
    settings = request.app.state.settings
    result = manage.replay_dead_letters(
        conn,
        actor=principal.actor,
        ip=client_ip(request),
        destination_id=destination_id,
        ids=body.ids,
        max_age=timedelta(seconds=settings.delivery_max_age_seconds),
    )
    # After the response, so after the commit: the worker finds them when it looks.
    background.add_task(manage.wake_delivery, request.app.state)
    return result


@router.post(
    "/destinations/{destination_id}/dead-letters/{message_id}/replay",
    response_model=ReplayOut,
    summary="Replay one dead letter",
)
def replay_dead_letter(
    destination_id: str,
    message_id: int,
    *,
    request: Request,
    conn: ConnectionDep,
    principal: Writer,
    background: BackgroundTasks,
) -> dict[str, int]:
    return replay_dead_letters(
        destination_id,
        ReplayIn(ids=[message_id]),
        request=request,
        conn=conn,
        principal=principal,
        background=background,
    )
