"""The application factory: `create_app(settings)` wires the stages into one ASGI app."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.engine import Engine
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from tessera import __version__, web
from tessera.activation import api as destinations_api
from tessera.activation import exports_api
from tessera.activation import pull as activation_pull
from tessera.activation.delivery import Deliverer
from tessera.api import errors as api_errors
from tessera.api import health
from tessera.api.security import SecurityMiddleware
from tessera.api.timing import ServerTiming
from tessera.audiences import api as audiences_api
from tessera.audiences import service as audience_service
from tessera.audiences import trends_api as audience_trends_api
from tessera.audit import api as audit_api
from tessera.auth import api as auth_api
from tessera.auth.tokens import TokenCache
from tessera.config import Settings
from tessera.eventlog import EventLogWriter
from tessera.ingest import api as ingest_api
from tessera.ingest import sources_api
from tessera.ingest.activity import IngestActivity
from tessera.ingest.sources import WriteKeyCache
from tessera.processor import Pipeline, Processor
from tessera.processor.extensions import worker_jobs
from tessera.profiles import api as profiles_api
from tessera.profiles.lookup import ProfileLookup
from tessera.schema import api as schema_api
from tessera.store import create_store_engine
from tessera.store.secrets import Keyring, load_keyring
from tessera.worker_process import ProcessorHandle, WorkerProcess


class TrackingDispatch:
    """Send /v1/... to the tracking API, with CORS so any browser page may send events;
    everything else goes on to the management app, which stays same-origin."""

    def __init__(self, app: ASGIApp, *, tracking: ASGIApp, allow_origins: list[str]) -> None:
        self.app = app
        self.tracking = CORSMiddleware(
            tracking,
            allow_origins=allow_origins,
            allow_methods=["POST", "OPTIONS"],
            allow_headers=["*"],
            max_age=86400,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await self.tracking(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _background_work(
    settings: Settings, engine: Engine, pipeline: Pipeline, keyring: Keyring
) -> tuple[ProcessorHandle | None, Deliverer | None]:
    """The processor and the delivery worker, where `processor_mode` puts them."""
    if settings.processor_mode == "thread":
        deliverer = Deliverer(engine, settings, keyring=keyring)
        processor = Processor(
            engine,
            pipeline,
            poll_seconds=settings.processor_poll_seconds,
            on_applied=deliverer.wake,
            jobs=worker_jobs(settings),
        )
        return processor, deliverer
    if settings.processor_mode == "process":
        return WorkerProcess(settings), None  # the child delivers too
    return None, None


def create_app(  # noqa: PLR0915 - the wiring, one step a line, reads best as one list
    settings: Settings, *, engine: Engine | None = None, keyring: Keyring | None = None
) -> FastAPI:
    """Build the app. The caller migrates the store first (`tessera serve` does). Without
    `keyring`, the keys for stored secrets are loaded from the settings (SecretKeyError if
    there are none for PostgreSQL)."""
    keyring = keyring or load_keyring(
        secret_key=settings.secret_key, database_url=settings.database_url
    )
    engine = engine or create_store_engine(
        settings.database_url, sqlite_synchronous=settings.sqlite_synchronous
    )
    writer = EventLogWriter(
        engine,
        max_queue_events=settings.ingest_queue_max_events,
        max_commit_events=settings.ingest_commit_max_events,
        commit_timeout_seconds=settings.ingest_commit_timeout_seconds,
    )
    write_keys = WriteKeyCache(engine, ttl=settings.write_key_cache_seconds)
    activity = IngestActivity(engine, keep=settings.source_refusals_kept)
    pipeline = Pipeline.from_settings(settings)
    processor, deliverer = _background_work(settings, engine, pipeline, keyring)
    if processor is not None:
        writer.on_commit = processor.wake

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        writer.start()
        activity.start()
        if processor is not None:
            processor.start()
        if deliverer is not None:
            deliverer.start()
        try:
            yield
        finally:
            writer.stop()
            activity.stop()
            if processor is not None:
                processor.stop()
            if deliverer is not None:
                deliverer.stop()

    app = FastAPI(
        title="Tessera",
        version=__version__,
        description="Customer data platform with a built-in CRM.",
        lifespan=lifespan,
        # /docs is a page of the web UI (self-hosted Swagger UI); ReDoc is not served.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.keyring = keyring
    app.state.api_tokens = TokenCache(ttl=settings.api_token_cache_seconds)
    app.state.writer = writer
    app.state.write_keys = write_keys
    app.state.ingest_activity = activity
    # Set when the server starts to stop (local_server.Server), so that live streams end.
    app.state.stopping = threading.Event()
    app.state.processor = processor
    app.state.deliverer = deliverer
    # A replay wakes whoever delivers: the thread here, or the child worker (its wake
    # pipe wakes its processor and its delivery worker alike).
    app.state.wake_delivery = (
        deliverer.wake
        if deliverer is not None
        else (processor.wake if processor is not None else None)
    )
    app.state.pipeline = pipeline
    app.state.identity_rules = pipeline.rules
    api_errors.install_error_handlers(app)
    app.include_router(health.create_router(engine, writer, processor, activity))
    app.include_router(profiles_api.router)
    app.include_router(activation_pull.router)
    app.include_router(auth_api.router)
    app.include_router(audit_api.router)
    app.include_router(audiences_api.traits_router)
    app.include_router(audience_trends_api.router)  # before /{audience_id}: see its docstring
    app.include_router(audiences_api.audiences_router)
    app.include_router(exports_api.router)
    app.include_router(destinations_api.router)
    app.include_router(schema_api.router)
    app.include_router(sources_api.router)
    web.install(app)
    # The profile API lists memberships without importing a later stage.
    app.state.profile_audiences = audience_service.profile_audiences
    tracking = ingest_api.TrackingAPI(
        ingest_api.IngestContext(
            settings=settings, writer=writer, write_keys=write_keys, activity=activity
        )
    )
    app.state.tracking = tracking
    app.add_middleware(
        TrackingDispatch, tracking=tracking, allow_origins=settings.cors_allow_origins
    )
    app.add_middleware(
        ProfileLookup,
        engine=engine,
        tokens=app.state.api_tokens,
        rules=pipeline.rules,
        memberships=app.state.profile_audiences,
    )
    app.add_middleware(ServerTiming)
    # Added last, so it wraps everything: every response gets the security headers.
    app.add_middleware(SecurityMiddleware, max_body_bytes=settings.api_max_body_bytes)
    return app
