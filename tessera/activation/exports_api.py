"""HTTP routes for audience exports: queue one (/api/v1/audiences/{id}/exports), follow its
progress and download its file (/api/v1/exports). The delivery worker runs the jobs."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from tessera.activation import exports
from tessera.api.deps import ConnectionDep, Principal, client_ip, require
from tessera.audit.service import record
from tessera.errors import Conflict, Forbidden, Gone, NotFound

router = APIRouter(prefix="/api/v1", tags=["exports"])
# Reading a job's status says nothing about the people in it; its file does.
Reader = Annotated[Principal, Depends(require("audiences:read"))]
Exporter = Annotated[Principal, Depends(require("exports:create"))]

MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}


class ExportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["csv", "jsonl", "parquet"] = Field(
        description="`csv`, `jsonl` (one JSON object a line) or `parquet`."
    )


class ExportOut(BaseModel):
    id: str
    audience_id: str
    format: str
    status: str = Field(
        description="`queued`, `running`, `done`, `failed`, or `expired` (its file deleted)."
    )
    total: int | None = Field(description="Members to write; counted when the job starts.")
    done: int = Field(description="Members written so far.")
    progress: float | None = Field(description="`done / total`, 0 to 1; null while queued.")
    attempts: int = Field(
        description="Times a worker started it: more than 1 when a worker stopped mid-file."
    )
    created_by: str | None
    created_at: datetime
    finished_at: datetime | None
    error: str | None = Field(description="Why a `failed` job failed.")
    download_url: str | None = Field(description="Where to fetch the file once `done`.")


@router.post(
    "/audiences/{audience_id}/exports",
    response_model=ExportOut,
    status_code=202,
    summary="Export an audience's members",
)
def create_export(
    audience_id: str, body: ExportIn, request: Request, conn: ConnectionDep, principal: Exporter
) -> dict[str, Any]:
    """Queue a job that writes every member, with identities and traits, to one file; follow
    it with `GET /api/v1/exports/{export_id}` and fetch the file from its `download_url`."""
    return exports.request_export(
        conn,
        audience_id=audience_id,
        fmt=body.format,
        actor=principal.actor,
        ip=client_ip(request),
    )


@router.get("/exports", response_model=list[ExportOut], summary="List exports")
def list_exports(
    conn: ConnectionDep,
    _: Reader,
    audience_id: Annotated[
        str | None, Query(max_length=32, description="Only this audience's exports.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[dict[str, Any]]:
    """Newest first."""
    return exports.list_exports(conn, audience_id=audience_id, limit=limit)


@router.get("/exports/{export_id}", response_model=ExportOut, summary="One export")
def get_export(export_id: str, conn: ConnectionDep, _: Reader) -> dict[str, Any]:
    return exports.get_export(conn, export_id=export_id)


@router.get(
    "/exports/{export_id}/download",
    response_class=FileResponse,
    summary="Download an export's file",
    responses={
        409: {"description": "The export is not done (yet)."},
        410: {"description": "The export expired: its file was deleted."},
    },
)
def download_export(
    export_id: str, request: Request, conn: ConnectionDep, principal: Exporter
) -> FileResponse:
    """The file, once the job is `done`; 409 before that (or when it failed), 410 once it
    expired."""
    # The file holds raw emails and phones; no role that sees them masked may take it away.
    if not principal.may("pii:read"):
        raise Forbidden(f"role {principal.role!r} may not read personal data (pii:read)")
    job = exports.get_export(conn, export_id=export_id)
    if job["status"] == exports.EXPIRED:
        hours = request.app.state.settings.export_retention_hours
        raise Gone(
            f"export {export_id!r} expired: its file is deleted {hours:g} hours after the job "
            "finished (TESSERA_EXPORT_RETENTION_HOURS); export the audience again"
        )
    if job["status"] != exports.DONE:
        reason = f" ({job['error']})" if job["error"] else ""
        raise Conflict(
            f"export {export_id!r} is {job['status']}{reason}; its file can be downloaded "
            f"when GET /api/v1/exports/{export_id} says status 'done'"
        )
    # Looked up by name in the configured directory, not by the stored path: the worker that
    # wrote it may have resolved a relative `export_dir` from another working directory.
    path = Path(request.app.state.settings.export_dir) / Path(job["path"]).name
    if not path.is_file():
        raise NotFound(
            f"the file of export {export_id!r} is no longer at {path.name!r}; export again"
        )
    record(
        conn,
        actor=principal.actor,
        action="export.download",
        target=f"export:{export_id}",
        ip=client_ip(request),
        details={"audience_id": job["audience_id"], "format": job["format"]},
    )
    return FileResponse(path, media_type=MEDIA_TYPES[job["format"]], filename=path.name)
