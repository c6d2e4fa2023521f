"""Saving and deleting the views of list pages (the bar is `ui.saved_views`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form
from starlette.responses import Response

from tessera.api.deps import ConnectionDep, IdPath
from tessera.errors import BadRequest
from tessera.web import saved_views
from tessera.web.frame import NavItem, redirect
from tessera.web.session import WebUser, check_csrf, page

router = APIRouter(prefix="/saved-views", include_in_schema=False)
NAV: list[NavItem] = []
Someone = Annotated[WebUser, Depends(page("self"))]


def _back(page_path: str, query: str) -> str:
    if not page_path.startswith("/") or page_path.startswith("//"):
        page_path = "/"
    return page_path + (f"?{query}" if query else "")


@router.post("", dependencies=[Depends(check_csrf)])
def save(
    *,
    conn: ConnectionDep,
    user: Someone,
    page_path: Annotated[str, Form(alias="page")] = "/",
    name: Annotated[str, Form()] = "",
    query: Annotated[str, Form()] = "",
    shared: Annotated[str | None, Form()] = None,
) -> Response:
    try:
        view = saved_views.save_view(
            conn,
            page=page_path,
            user_id=user.principal.id,
            name=name,
            query=query,
            shared=shared is not None,
        )
    except BadRequest as exc:
        return redirect(_back(page_path, query), flash=exc.message.capitalize() + ".", kind="error")
    return redirect(_back(page_path, str(view["query"])), flash=f"Saved the view “{view['name']}”.")


@router.post("/{view_id}/delete", dependencies=[Depends(check_csrf)])
def delete(conn: ConnectionDep, user: Someone, view_id: IdPath) -> Response:
    page_path = saved_views.delete_view(conn, view_id=view_id, user_id=user.principal.id)
    return redirect(page_path, flash="The view is deleted.")
