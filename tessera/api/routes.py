"""Walk every HTTP route of an app, through included routers.

FastAPI (0.16x) keeps an included router as one lazy entry in `app.routes`, so listing the
routes needs this walk; docs tests (and, later, the permission matrix) are built on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute


def iter_api_routes(
    routes: Iterable[BaseRoute], prefix: str = ""
) -> Iterator[tuple[str, APIRoute]]:
    """(full path, route) for every APIRoute under `routes`."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
            continue
        original: Any = getattr(route, "original_router", None)
        if original is not None:
            context = getattr(route, "include_context", None)
            yield from iter_api_routes(original.routes, prefix + getattr(context, "prefix", ""))
