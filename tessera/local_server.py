"""Serve a Tessera app under uvicorn: `Server`, which tells the app when it starts to stop,
and `serve_in_thread`, on a loopback port in a thread, for `tessera demo` (which loads data
through the real HTTP API) and for the HTTP tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI


class Server(uvicorn.Server):
    """uvicorn's server, setting the app's `state.stopping` event as its shutdown begins.

    uvicorn waits for every open response before it stops, and a live stream
    (`ingest/live.py`) only ends when told: it watches this event, so a shutdown takes at
    most one of its polls instead of waiting for every browser to leave.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._stopping: threading.Event | None = getattr(app.state, "stopping", None)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._stopping is not None:
            self._stopping.set()
        await super().shutdown(sockets=sockets)


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """Yield the base URL of `app` served on 127.0.0.1; shut it down afterwards."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    server = Server(config, app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
