"""Roles and what each may do: the one table that API and UI authorisation both read.

A route declares its permission where it is defined, with `Depends(require("..."))`, or
`Depends(public)`; `tests/auth/test_permission_matrix.py` fails for a route with neither.
"""

from __future__ import annotations

ROLES = ("admin", "marketer", "sales", "support", "analyst")

EVERYONE = frozenset(ROLES)

# permission → the roles that have it. Later capabilities add their own rows here
# (audiences, destinations, CRM records, tickets), so the matrix stays in one place.
PERMISSIONS: dict[str, frozenset[str]] = {
    "profiles:read": EVERYONE,
    "profiles:write": frozenset({"admin", "marketer"}),
    # Audiences and the computed traits they are built on.
    "audiences:read": EVERYONE,
    "audiences:write": frozenset({"admin", "marketer"}),
    # Destinations, their delivery log and dead letters, and audience exports.
    "destinations:read": frozenset({"admin", "marketer", "analyst"}),
    "destinations:write": frozenset({"admin", "marketer"}),
    "exports:create": frozenset({"admin", "marketer"}),
    # Raw personal data (emails, phones, names, IPs); analysts see it masked.
    "pii:read": frozenset({"admin", "marketer", "sales", "support"}),
    "sources:manage": frozenset({"admin", "marketer"}),
    "tokens:manage": frozenset({"admin"}),
    "users:manage": frozenset({"admin"}),
    "audit:read": frozenset({"admin"}),
    # What Tessera has seen: event names, properties, traits and their types (no values).
    "schema:read": EVERYONE,
    # The Home dashboard; its delivery part also needs destinations:read.
    "dashboard:read": EVERYONE,
    "self": EVERYONE,  # one's own session and identity
}


def allowed(role: str, permission: str) -> bool:
    return role in PERMISSIONS.get(permission, frozenset())
