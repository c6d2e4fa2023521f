"""Response shapes of the audit log API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    ip: str | None
    action: str
    target: str | None
    outcome: Literal["success", "failure"]
    details: dict[str, object]


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None
