"""The interactive API reference at /docs: Swagger UI served from this server (npm's
swagger-ui-dist, copied by `make assets`), so it works offline and under a strict CSP."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from tessera.api.deps import public
from tessera.web.frame import Frame, NavItem

router = APIRouter(include_in_schema=False)
NAV: list[NavItem] = []


@router.get("/docs", dependencies=[Depends(public)])
def docs(request: Request) -> Response:
    frame: Frame = request.app.state.frame
    return frame.render(request, "docs.html")
