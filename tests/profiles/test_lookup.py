"""The lean path of `GET /api/v1/profiles/{ref}` (profiles/lookup.py) answers exactly as the
FastAPI route does: the same status, content type and body bytes, masking and refusals
included, for every kind of reference and for roles with and without `pii:read`."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import Engine

from tessera.auth.tokens import TokenCache, create_token
from tessera.config import Settings
from tessera.processor import wait_until_caught_up
from tests.audiences.test_api import Api, build_regulars
from tests.conftest import LiveTessera, start_live
from tests.ingest.helpers import post

# u1 (who also has a computed trait and an audience from `build_regulars`) gets an email, a
# name, an account, consent and a second device that merges into the profile.
MORE = [
    {"type": "page", "anonymousId": "tablet", "timestamp": "2026-11-01T09:00:00Z"},
    {
        "type": "identify",
        "userId": "u1",
        "anonymousId": "tablet",
        "traits": {"email": "Jo@Example.com", "name": "Jo Bloggs", "tier": "gold"},
        "context": {"consent": {"categoryPreferences": {"marketing": True, "ads": False}}},
        "timestamp": "2026-11-01T10:00:00Z",
    },
    {
        "type": "group",
        "userId": "u1",
        "groupId": "acme",
        "traits": {"plan": "b2b"},
        "timestamp": "2026-11-01T10:01:00Z",
    },
]
REFS = [
    "user_id:u1",
    "email:JO@example.com",
    "anonymous_id:tablet",
    "user_id:u2",
    "email:nobody@example.com",
    "prf_999999",
    "not-a-ref",
    "Bad Type:x",
    "email:not-an-email",
    "group_id:acme",
]


Answer = tuple[int, str, bytes]  # status, content type, body


@pytest.fixture
def site(settings: Settings, engine: Engine) -> Iterator[LiveTessera]:
    # Cached tokens stay cached for the whole test, so which path answers is certain.
    tuned = settings.model_copy(update={"api_token_cache_seconds": 3600})
    yield from start_live(tuned, engine)


def fetch(live: LiveTessera, token: str, ref: str) -> Answer:
    response = httpx.get(
        f"{live.url}/api/v1/profiles/{ref}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.headers["x-content-type-options"] == "nosniff"  # security headers too
    return response.status_code, response.headers["content-type"], response.content


def both_paths(
    live: LiveTessera, role: str, refs: list[str]
) -> tuple[dict[str, Answer], dict[str, Answer]]:
    """Every ref's answer through the route, then through the lean path."""
    cache: TokenCache = live.app.state.api_tokens
    with live.engine.begin() as conn:
        routed_token, routed = create_token(conn, name=f"routed-{role}", role=role)
        lean_token, _ = create_token(conn, name=f"lean-{role}", role=role)
    cache.forget(routed.token_id)  # never cached: each request goes to the route
    through_route = {ref: fetch(live, routed_token, ref) for ref in refs}
    assert cache.cached(routed_token) is None
    fetch(live, lean_token, "prf_999999")  # the route checks it once and the cache keeps it
    assert cache.cached(lean_token) is not None
    through_lean = {ref: fetch(live, lean_token, ref) for ref in refs}
    return through_route, through_lean


def test_the_lean_path_answers_as_the_route_does(site: LiveTessera) -> None:
    admin = Api(site, "admin")
    build_regulars(site, admin)
    assert post(site, "/v1/batch", {"batch": MORE}).status_code == 200
    wait_until_caught_up(site.engine)
    u1 = admin.ok("GET", "/api/v1/profiles/user_id:u1")
    assert u1["computed_traits"] and u1["audiences"] and u1["accounts"] and u1["consent"]
    assert u1["merged_ids"] and {"type": "anonymous_id", "value": "tablet"} in u1["identities"]
    refs = [*REFS, u1["id"], *u1["merged_ids"]]
    for role in ("admin", "analyst"):
        through_route, through_lean = both_paths(site, role, refs)
        for ref in refs:
            assert through_lean[ref] == through_route[ref], (role, ref)
    admin.client.close()


def test_the_lean_path_masks_personal_data_for_analysts(site: LiveTessera) -> None:
    assert post(site, "/v1/batch", {"batch": MORE}).status_code == 200
    wait_until_caught_up(site.engine)
    with site.engine.begin() as conn:
        analyst, _ = create_token(conn, name="analyst", role="analyst")
        support, _ = create_token(conn, name="support", role="support")
    for token in (analyst, support):  # the first request checks the token and caches it
        assert fetch(site, token, "prf_999999")[0] == 404
    cache: TokenCache = site.app.state.api_tokens
    assert cache.cached(analyst) is not None and cache.cached(support) is not None

    status, _, body = fetch(site, support, "user_id:u1")
    assert status == 200 and b"Jo@Example.com" in body and b"Jo Bloggs" in body
    status, _, body = fetch(site, analyst, "user_id:u1")
    assert status == 200
    assert b"Jo@Example.com" not in body and b"jo@example.com" not in body
    assert b"Jo Bloggs" not in body
    profile = httpx.Response(200, content=body).json()
    assert profile["traits"]["email"] == "J***@***" and profile["traits"]["tier"] == "gold"
    assert {"type": "email", "value": "j***@***"} in profile["identities"]
    status, _, body = fetch(site, analyst, "email:jo@example.com")
    assert status == 403 and b"may not look profiles up by personal data" in body
