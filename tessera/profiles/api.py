"""HTTP routes of the profile API under /api/v1/profiles."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.engine import Connection

from tessera.api.deps import ConnectionDep, Principal, client_ip, require
from tessera.audit.service import record
from tessera.auth.permissions import allowed
from tessera.errors import Forbidden
from tessera.identity.config import IdentityRules
from tessera.processor import Pipeline, unmerge
from tessera.profiles import views
from tessera.profiles.masking import (
    PII_IDENTITY_TYPES,
    mask_event,
    mask_identities,
    mask_merge,
    mask_profile,
    mask_summary,
)
from tessera.profiles.schemas import (
    EventPage,
    IdentityDetail,
    MergeOut,
    ProfileOut,
    ProfileSearchPage,
    UnmergeIn,
    UnmergeOut,
)
from tessera.profiles.search import MAX_LIMIT, search_profiles

router = APIRouter(prefix="/api/v1/profiles", tags=["profiles"])
Reader = Annotated[Principal, Depends(require("profiles:read"))]
Writer = Annotated[Principal, Depends(require("profiles:write"))]

# A profile's audience memberships: `(conn, *, profile_id) -> [{id, name, entered_at}]`.
Memberships = Callable[..., list[dict[str, Any]]]

REF_DOC = "A profile id (`prf_123`) or `TYPE:VALUE`, e.g. `email:jo@example.com`."


def _rules(request: Request) -> IdentityRules:
    rules: IdentityRules = request.app.state.identity_rules
    return rules


def resolve_for(conn: Connection, ref: str, rules: IdentityRules, *, role: str) -> str:
    """`views.resolve_reference`, refused (403) by personal data to roles without `pii:read`."""
    if not allowed(role, "pii:read") and ref.partition(":")[0] in PII_IDENTITY_TYPES:
        # Looking people up by email or phone would reveal who is a customer.
        raise Forbidden(f"role {role!r} may not look profiles up by personal data")
    return views.resolve_reference(conn, ref, rules)


def _resolve(conn: ConnectionDep, ref: str, request: Request, principal: Principal) -> str:
    return resolve_for(conn, ref, _rules(request), role=principal.role)


def show_profile(
    conn: Connection,
    ref: str,
    *,
    rules: IdentityRules,
    role: str,
    memberships: Memberships | None,
) -> dict[str, Any]:
    """The body of `GET /api/v1/profiles/{ref}` for a caller with `role`: the route's, and
    the lean path's in `profiles/lookup.py`, so the two cannot differ."""
    profile_id = resolve_for(conn, ref, rules, role=role)
    body = views.get_profile(conn, profile_id)
    if memberships is not None:
        body["audiences"] = memberships(conn, profile_id=profile_id)
    return body if allowed(role, "pii:read") else mask_profile(body)


# Declared before `/{ref}`, which would take "search" for a reference.
@router.get("/search", response_model=ProfileSearchPage, summary="Find people")
def search(
    *,
    conn: ConnectionDep,
    principal: Reader,
    q: Annotated[
        str,
        Query(
            max_length=200,
            description="The start of a name, email, phone, user id or other identifier, "
            "or of a company's name; several words must all match.",
        ),
    ],
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    cursor: Annotated[
        str | None, Query(max_length=64, description="`next_cursor` of the previous page.")
    ] = None,
) -> dict[str, Any]:
    """Profiles whose identifier equals the query first, then those with a name, email,
    phone, identifier or company starting with each word, newest first. For roles without
    `pii:read`, names, emails and phones are neither matched nor shown unmasked."""
    personal = principal.may("pii:read")
    page = search_profiles(conn, query=q, limit=limit, after=cursor, personal=personal)
    if not personal:
        page["items"] = [mask_summary(item) for item in page["items"]]
    return page


@router.get("/{ref}", response_model=ProfileOut, summary="One unified profile")
def get_profile(
    ref: str, request: Request, conn: ConnectionDep, principal: Reader
) -> dict[str, object]:
    """The profile `ref` resolves to (an absorbed id resolves to its survivor). Personal data
    is masked for roles without `pii:read`."""
    # Audiences are a later stage; the app hands in how to list a profile's memberships.
    memberships = getattr(request.app.state, "profile_audiences", None)
    return show_profile(
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
    page = views.list_profile_events(
        conn, profile_id, types=type, names=name, cursor=cursor, limit=limit
    )
    if not principal.may("pii:read"):
        page["items"] = [mask_event(item) for item in page["items"]]
    return page


@router.get(
    "/{ref}/identities", response_model=list[IdentityDetail], summary="The profile's identifiers"
)
def list_identities(
    ref: str, request: Request, conn: ConnectionDep, principal: Reader
) -> list[dict[str, object]]:
    items = views.list_identities(conn, _resolve(conn, ref, request, principal))
    return items if principal.may("pii:read") else mask_identities(items)


@router.get("/{ref}/merges", response_model=list[MergeOut], summary="How the profile was merged")
def list_merges(
    ref: str, request: Request, conn: ConnectionDep, principal: Reader
) -> list[dict[str, object]]:
    """Each merge with its rule, the identifiers that linked, and the event that caused it."""
    merges = views.list_merges(conn, _resolve(conn, ref, request, principal))
    return merges if principal.may("pii:read") else [mask_merge(merge) for merge in merges]


@router.post("/{ref}/unmerge", response_model=UnmergeOut, summary="Undo a wrong merge")
def unmerge_profile(
    ref: str, body: UnmergeIn, request: Request, conn: ConnectionDep, principal: Writer
) -> dict[str, object]:
    """Split the profiles that merge `merge_id` joined, re-attribute their events and
    re-derive their traits from the log, and block the pair from merging again."""
    pipeline: Pipeline = request.app.state.pipeline
    profile_id = _resolve(conn, ref, request, principal)
    done = unmerge(
        conn, pipeline, profile_id=profile_id, merge_id=body.merge_id, actor=principal.actor
    )
    record(
        conn,
        actor=principal.actor,
        action="profile.unmerge",
        target=profile_id,
        ip=client_ip(request),
        details={
            "merge_id": body.merge_id,
            "restored": done.restored_id,
            "events": done.events_replayed,
        },
    )
    return {
        "survivor_id": done.survivor_id,
        "restored_id": done.restored_id,
        "blocked_identifiers": done.identifiers,
        "events_replayed": done.events_replayed,
    }
