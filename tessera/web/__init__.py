"""The web UI: server-rendered pages over the same services and permissions as the API.

`install(app)` mounts the static files, every view module's router and the HTML error
pages. See `views/__init__.py` for how a page is added.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from tessera.logs import event

log = logging.getLogger(__name__)


def install(app: FastAPI) -> None:
    # Imported here, so `python -m tessera.web.vendor` runs without the views loaded.
    from tessera.web import vendor
    from tessera.web.errors import render_error, wants_page
    from tessera.web.frame import Frame
    from tessera.web.views import collect

    routers, nav = collect()
    app.state.frame = Frame(nav)
    app.state.page_error = render_error
    app.state.wants_page = wants_page
    absent = vendor.missing()
    if absent:
        # The pages still answer, but without htmx, charts or the docs' script: say so
        # loudly rather than serve a UI that half works in silence.
        event(
            log,
            logging.WARNING,
            "web.assets_missing",
            missing=", ".join(absent),
            fix="run `make assets` (npm ci, then python -m tessera.web.vendor build)",
        )
    app.mount("/static", StaticFiles(directory=vendor.STATIC), name="static")
    for router in routers:
        app.include_router(router)
