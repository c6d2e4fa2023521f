"""The profile services the API and the web pages both call: a reference resolved for a
role, a profile, its timeline, identifiers and merges as that role may see them (personal
data masked without `pii:read`), and an audited unmerge. One implementation, two faces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection

from tessera.audit.service import record
from tessera.auth.permissions import allowed
from tessera.errors import Forbidden
from tessera.identity.config import IdentityRules
from tessera.processor import Pipeline, unmerge
from tessera.profiles import timeline, views
from tessera.profiles.masking import (
    PII_IDENTITY_TYPES,
    mask_event,
    mask_identities,
    mask_merge,
    mask_profile,
)

# A profile's audience memberships: `(conn, *, profile_id) -> [{id, name, entered_at}]`.
# Audiences are a later stage; the app hands this in (`app.state.profile_audiences`).
Memberships = Callable[..., list[dict[str, Any]]]


def resolve_for(conn: Connection, ref: str, rules: IdentityRules, *, role: str) -> str:
    """`views.resolve_reference`, refused (403) by personal data to roles without `pii:read`."""
    if not allowed(role, "pii:read") and ref.partition(":")[0] in PII_IDENTITY_TYPES:
        # Looking people up by email or phone would reveal who is a customer.
        raise Forbidden(f"role {role!r} may not look profiles up by personal data")
    return views.resolve_reference(conn, ref, rules)


def profile_for(
    conn: Connection, profile_id: str, *, role: str, memberships: Memberships | None
) -> dict[str, Any]:
    """The profile `profile_id` (already resolved) as `role` may see it."""
    body = views.get_profile(conn, profile_id)
    if memberships is not None:
        body["audiences"] = memberships(conn, profile_id=profile_id)
    return body if allowed(role, "pii:read") else mask_profile(body)


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
    return profile_for(conn, profile_id, role=role, memberships=memberships)


def _masked_events(page: dict[str, Any], role: str) -> dict[str, Any]:
    if not allowed(role, "pii:read"):
        page["items"] = [mask_event(item) for item in page["items"]]
    return page


def list_events_for(
    conn: Connection,
    profile_id: str,
    *,
    role: str,
    types: list[str] | None = None,
    names: list[str] | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """A page of the timeline, newest first, as `role` may see it."""
    page = timeline.list_profile_events(
        conn, profile_id, types=types, names=names, cursor=cursor, limit=limit
    )
    return _masked_events(page, role)


def list_new_events_for(
    conn: Connection,
    profile_id: str,
    *,
    role: str,
    after_seq: int,
    types: list[str] | None = None,
    names: list[str] | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """Events attributed to the profile after log position `after_seq`, as `role` may see
    them: what a live timeline adds above what it shows."""
    page = timeline.list_profile_events_after(
        conn, profile_id, after_seq=after_seq, types=types, names=names, limit=limit
    )
    return _masked_events(page, role)


def list_identities_for(conn: Connection, profile_id: str, *, role: str) -> list[dict[str, Any]]:
    items = views.list_identities(conn, profile_id)
    return items if allowed(role, "pii:read") else mask_identities(items)


def list_merges_for(conn: Connection, profile_id: str, *, role: str) -> list[dict[str, Any]]:
    merges = views.list_merges(conn, profile_id)
    return merges if allowed(role, "pii:read") else [mask_merge(merge) for merge in merges]


def identity_graph_for(conn: Connection, profile_id: str, *, role: str) -> dict[str, Any]:
    """`views.identity_graph`, with identifier values masked as the API masks them."""
    graph = views.identity_graph(conn, profile_id)
    if not allowed(role, "pii:read"):
        graph["identifiers"] = mask_identities(graph["identifiers"])
        graph["merges"] = [mask_merge(merge) for merge in graph["merges"]]
    return graph


def unmerge_profile(
    conn: Connection,
    pipeline: Pipeline,
    *,
    profile_id: str,
    merge_id: int,
    actor: str,
    ip: str | None,
) -> dict[str, Any]:
    """Split the profiles that merge `merge_id` joined (`processor.unmerge`: block the pair,
    replay the cluster from the log), audited in the same transaction."""
    done = unmerge(conn, pipeline, profile_id=profile_id, merge_id=merge_id, actor=actor)
    record(
        conn,
        actor=actor,
        action="profile.unmerge",
        target=profile_id,
        ip=ip,
        details={
            "merge_id": merge_id,
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
