"""API tokens are remembered for TESSERA_API_TOKEN_CACHE_SECONDS, and revocation still bites:
at once through the API, within that time when revoked elsewhere."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from sqlalchemy.engine import Engine

from tessera.auth.tokens import TokenCache, create_token, revoke_token
from tessera.config import Settings
from tests.conftest import LiveTessera, start_live


@contextmanager
def serving(settings: Settings, engine: Engine, cache_seconds: float) -> Iterator[LiveTessera]:
    tuned = settings.model_copy(update={"api_token_cache_seconds": cache_seconds})
    yield from start_live(tuned, engine)


def status(live: LiveTessera, token: str, method: str = "GET", path: str = "auth/me") -> int:
    response = httpx.request(
        method,
        f"{live.url}/api/v1/{path}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    return response.status_code


# One route through FastAPI's dependencies, one through the profile lookup's lean path.
PATHS = ("auth/me", "profiles/user_id:nobody")
ACCEPTED = {"auth/me": 200, "profiles/user_id:nobody": 404}


def test_a_token_revoked_through_the_api_is_refused_at_once(
    settings: Settings, engine: Engine
) -> None:
    with engine.begin() as conn:
        admin, _ = create_token(conn, name="root", role="admin")
        token, principal = create_token(conn, name="crm", role="analyst")
    with serving(settings, engine, cache_seconds=3600) as live:
        for path in PATHS:
            assert status(live, token, path=path) == ACCEPTED[path]
        assert status(live, admin, "DELETE", f"tokens/{principal.token_id}") == 204
        for path in PATHS:
            assert status(live, token, path=path) == 401


def test_a_token_revoked_elsewhere_is_refused_once_the_cache_time_has_passed(
    settings: Settings, engine: Engine
) -> None:
    with engine.begin() as conn:
        token, principal = create_token(conn, name="crm", role="analyst")
    with serving(settings, engine, cache_seconds=0.5) as live:
        for path in PATHS:
            assert status(live, token, path=path) == ACCEPTED[path]
        with engine.begin() as conn:  # as `tessera token revoke` does, from another process
            revoke_token(conn, token_id=principal.token_id)
        time.sleep(0.6)
        for path in PATHS:
            assert status(live, token, path=path) == 401


def test_within_the_cache_time_a_token_revoked_elsewhere_still_works(
    settings: Settings, engine: Engine
) -> None:
    """The documented bound, seen from the other side: the cache is really in use."""
    with engine.begin() as conn:
        token, principal = create_token(conn, name="crm", role="analyst")
    with serving(settings, engine, cache_seconds=3600) as live:
        for path in PATHS:
            assert status(live, token, path=path) == ACCEPTED[path]
        with engine.begin() as conn:
            revoke_token(conn, token_id=principal.token_id)
        for path in PATHS:
            assert status(live, token, path=path) == ACCEPTED[path]


def test_a_cache_time_of_zero_checks_every_request(settings: Settings, engine: Engine) -> None:
    with engine.begin() as conn:
        token, principal = create_token(conn, name="crm", role="analyst")
    with serving(settings, engine, cache_seconds=0) as live:
        for path in PATHS:
            assert status(live, token, path=path) == ACCEPTED[path]
        with engine.begin() as conn:
            revoke_token(conn, token_id=principal.token_id)
        for path in PATHS:
            assert status(live, token, path=path) == 401


def test_a_token_read_while_it_is_being_revoked_is_not_cached(engine: Engine) -> None:
    """The revoke route forgets the token before its transaction commits; a request that
    reads the token in between sees it valid, but must not keep it for the cache time."""
    cache = TokenCache(ttl=3600)
    with engine.begin() as conn:
        token, principal = create_token(conn, name="crm", role="sales")
    with engine.begin() as conn:
        assert cache.authenticate(conn, token) == principal
    assert cache.cached(token) == principal
    cache.forget(principal.token_id)
    assert cache.cached(token) is None
    with engine.begin() as conn:  # the revocation has not committed yet
        assert cache.authenticate(conn, token) == principal
    assert cache.cached(token) is None
    with engine.begin() as conn:
        revoke_token(conn, token_id=principal.token_id)
    with engine.begin() as conn:
        assert cache.authenticate(conn, token) is None


def test_refused_tokens_are_not_cached(engine: Engine) -> None:
    cache = TokenCache(ttl=3600)
    with engine.begin() as conn:
        assert cache.authenticate(conn, "tsk_unknown") is None
    assert cache.cached("tsk_unknown") is None
