"""GET /api/v1/audit: the audit log, newest first, filtered and paginated (admins)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from tessera.api.deps import ConnectionDep, Principal, require
from tessera.audit.schemas import AuditPage
from tessera.audit.service import list_entries

router = APIRouter(prefix="/api/v1", tags=["audit"])
Auditor = Annotated[Principal, Depends(require("audit:read"))]


@router.get("/audit", response_model=AuditPage, summary="Read the audit log")
def read_audit_log(
    conn: ConnectionDep,
    _: Auditor,
    *,
    actor: Annotated[
        str | None, Query(max_length=255, description="e.g. user:jo@example.com")
    ] = None,
    action: Annotated[str | None, Query(max_length=64, description="e.g. auth.login")] = None,
    outcome: Literal["success", "failure"] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, object]:
    return list_entries(
        conn,
        actor=actor,
        action=action,
        outcome=outcome,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
