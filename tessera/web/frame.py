"""The frame every page shares: the template environment, the navigation that view modules
declare, and `render()`, which gives templates the signed-in person and answers an htmx
request with only the block it asked for.

A view module adds a page without touching the frame: it declares `router` and `NAV` (see
`views/__init__.py`), and its templates extend `base.html`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from jinja2_fragments import render_block
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from tessera import __version__
from tessera.web.session import WebUser

TEMPLATES = Path(__file__).parent / "templates"

# The sidebar's sections, in order; a NavItem in an unlisted section goes after them.
SECTIONS = ("Customers", "Sales", "Service", "Activation", "Data", "Reports", "Settings")


@dataclass(frozen=True, slots=True)
class NavItem:
    """One entry of the sidebar, shown only to roles that have `permission`."""

    label: str
    href: str
    permission: str
    section: str = "Customers"
    order: int = 50
    icon: str = "dot"  # the name of a symbol in templates/macros/icons.html


def _number(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _iso(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def create_environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["number"] = _number
    env.filters["iso"] = _iso
    env.filters["percent"] = _percent
    env.globals["version"] = __version__
    return env


class Frame:
    """Renders pages; `nav` is every NavItem the view modules declared."""

    def __init__(self, nav: list[NavItem]) -> None:
        self.env = create_environment()
        rank = {name: index for index, name in enumerate(SECTIONS)}
        self.nav = sorted(nav, key=lambda item: (rank.get(item.section, 99), item.order))

    def sections(self, user: WebUser | None, path: str) -> list[tuple[str, list[dict[str, Any]]]]:
        """The sidebar for `user`: sections with the items their role may open."""
        if user is None:
            return []
        grouped: dict[str, list[dict[str, Any]]] = {}
        for item in self.nav:
            if not user.may(item.permission):
                continue
            current = path == item.href or (item.href != "/" and path.startswith(item.href + "/"))
            grouped.setdefault(item.section, []).append(
                {"label": item.label, "href": item.href, "icon": item.icon, "current": current}
            )
        return list(grouped.items())

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any] | None = None,
        *,
        status: int = 200,
        block: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HTMLResponse:
        """The page, or only `block` of it. An htmx request that names a target gets the
        block `block` (when given), so one template serves the page and its partial."""
        user: WebUser | None = getattr(request.state, "web_user", None)
        values = {
            "request": request,
            "user": user,
            "nav": self.sections(user, request.url.path),
            "csrf_token": user.csrf_token if user else getattr(request.state, "login_csrf", ""),
            "flash": read_flash(request),
            **(context or {}),
        }
        if block is not None and request.headers.get("hx-request") == "true":
            html = render_block(self.env, template, block, values)
        else:
            html = self.env.get_template(template).render(values)
        response = HTMLResponse(html, status_code=status, headers=dict(headers or {}))
        if values["flash"] is not None:
            response.delete_cookie(FLASH_COOKIE, path="/")
        return response


# A message for the page after a redirect ("Audience saved"), carried in a short cookie.
FLASH_COOKIE = "tessera_flash"


def redirect(url: str, *, flash: str | None = None, kind: str = "ok") -> RedirectResponse:
    """Post/redirect/get: a 303 to `url`, with a message for the page it lands on."""
    response = RedirectResponse(url, status_code=303)
    if flash:
        response.set_cookie(
            FLASH_COOKIE,
            quote(f"{kind}|{flash}"),
            max_age=60,
            httponly=True,
            samesite="lax",
            path="/",
        )
    return response


def read_flash(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    kind, _, text = unquote(raw).partition("|")
    return {"kind": "error" if kind == "error" else "ok", "text": text[:300]}
