"""The web UI's pages, one module per area. Each module declares:

- `router`: a FastAPI APIRouter with its pages (`include_in_schema=False`), each route
  guarded by `Depends(page("permission"))` or marked public;
- `NAV`: the sidebar entries it adds (a list of `frame.NavItem`, may be empty).

Every module in this package is found at start; adding a page touches nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from fastapi import APIRouter

from tessera.web.frame import NavItem


def modules() -> list[ModuleType]:
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(module, "router", None), APIRouter):
            found.append(module)
    return found


def collect() -> tuple[list[APIRouter], list[NavItem]]:
    routers: list[APIRouter] = []
    nav: list[NavItem] = []
    for module in modules():
        routers.append(module.router)
        nav.extend(getattr(module, "NAV", []))
    return routers, nav
