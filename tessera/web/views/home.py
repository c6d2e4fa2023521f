"""The home page: the sign-in form for a visitor, the dashboard for a signed-in person."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from tessera.api.deps import public
from tessera.web.frame import Frame, NavItem
from tessera.web.session import OptionalUser
from tessera.web.views.signin import login_form

router = APIRouter(include_in_schema=False)
NAV = [NavItem("Home", "/", "self", section="Customers", order=0, icon="home")]


@router.get("/", dependencies=[Depends(public)])
def home(request: Request, user: OptionalUser) -> Response:
    if user is None:
        return login_form(request)
    frame: Frame = request.app.state.frame
    return frame.render(request, "home/home.html", {})
