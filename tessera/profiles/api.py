"""HTTP routes of the profile API under /api/v1/profiles."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from tessera.api.deps import ConnectionDep, Principal, client_ip, require
from tessera.identity.config import IdentityRules
from tessera.processor import Pipeline
from tessera.profiles import service
from tessera.profiles.schemas import (
    EventPage,
    IdentityDetail,
    MergeOut,
    ProfileOut,
    UnmergeIn,
    UnmergeOut,
)

router = APIRouter(prefix="/api/v1/profiles", tags=["profiles"])
Reader = Annotated[Principal, Depends(require("profiles:read"))]
Writer = Annotated[Principal, Depends(require("profiles:write"))]

REF_DOC = "A profile id (`prf_123`) or `TYPE:VALUE`, e.g. `email:jo@example.com`."


def _rules(request: Request) -> IdentityRules:
    rules: IdentityRules = request.app.state.identity_rules
    return rules


def _resolve(conn: ConnectionDep, ref: str, request: Request, principal: Principal) -> str:
    return service.resolve_for(conn, ref, _rules(request), role=principal.role)


@router.get("/{ref}", response_model=ProfileOut, summary="One unified profile")
def get_profile(
    ref: str, request: Request, conn: ConnectionDep, principal: Reader
) -> dict[str, object]:
    """The profile `ref` resolves to (an absorbed id resolves to its survivor). Personal data
    is masked for roles without `pii:read`."""
    # Audiences are a later stage; the app hands in how to list a profile's memberships.
    memberships = getattr(request.app.state, "profile_audiences", None)
    return service.show_profile(
        conn, ref, rules=_rules(request), role=principal.role, memberships=memberships
    )


@router.get("/{ref}/events", response_model=EventPage, summary="The profile's timeline")
def list_events(
    ref: str,
    *,
    request: Request,
    conn: ConnectionDep,
    principal: Reader,
    type: Annotated[list[str] | None, Query(description="Only these message types.")] = None,
    name: Annotated[list[str] | None, Query(description="Only these event or page names.")] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, object]:
    """Newest first, by corrected timestamp; follow `next_cursor` for older events."""
    profile_id = _resolve(conn, ref, request, principal)
    return service.list_events_for(
        conn, profile_id, role=principal.role, types=type, names=name, cursor=cursor, limit=limit
    )


@router.get(
    "/{ref}/identities", response_model=list[IdentityDetail], summary="The profile's identifiers"
)
def list_identities(
    ref: str, request: Request, conn: ConnectionDep, principal: Reader
) -> list[dict[str, object]]:
    profile_id = _resolve(conn, ref, request, principal)
    return service.list_identities_for(conn, profile_id, role=principal.role)


@router.get("/{ref}/merges", response_model=list[MergeOut], summary="How the profile was merged")
def list_merges(
    ref: str, request: Request, conn: ConnectionDep, principal: Reader
) -> list[dict[str, object]]:
    """Each merge with its rule, the identifiers that linked, and the event that caused it."""
    profile_id = _resolve(conn, ref, request, principal)
    return service.list_merges_for(conn, profile_id, role=principal.role)


@router.post("/{ref}/unmerge", response_model=UnmergeOut, summary="Undo a wrong merge")
def unmerge_profile(
    ref: str, body: UnmergeIn, request: Request, conn: ConnectionDep, principal: Writer
) -> dict[str, object]:
    """Split the profiles that merge `merge_id` joined, re-attribute their events and
    re-derive their traits from the log, and block the pair from merging again."""
    pipeline: Pipeline = request.app.state.pipeline
    return service.unmerge_profile(
        conn,
        pipeline,
        profile_id=_resolve(conn, ref, request, principal),
        merge_id=body.merge_id,
        actor=principal.actor,
        ip=client_ip(request),
    )
