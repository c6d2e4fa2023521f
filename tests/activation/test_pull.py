"""Pull access through a live server: paging an audience or every profile, `updated_since`,
absorbed profiles left out, bad input named, masking for analysts; and the cursor codec."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from tessera.activation.pull import decode_cursor, encode_cursor, list_profile_ids
from tessera.auth.tokens import create_token
from tessera.errors import BadRequest
from tessera.processor import wait_until_caught_up
from tessera.profiles.models import profiles
from tests.conftest import LiveTessera
from tests.ingest.helpers import post

PROFILES = "/api/v1/profiles"
AUDIENCES = "/api/v1/audiences"
PRO = {"trait": "plan", "op": "eq", "value": "pro"}


class Api:
    """An httpx client with one role's token."""

    def __init__(self, live: LiveTessera, role: str) -> None:
        with live.engine.begin() as conn:
            token, _ = create_token(conn, name=f"pull-{role}", role=role)
        self.client = httpx.Client(
            base_url=live.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params)

    def ok(self, path: str, **params: Any) -> Any:
        response = self.get(path, **params)
        assert response.status_code == 200, f"GET {path} {params}: {response.text}"
        return response.json()

    def walk(self, **params: Any) -> list[list[dict[str, Any]]]:
        """Every page of GET /api/v1/profiles, following `next_cursor` to the end."""
        pages: list[list[dict[str, Any]]] = []
        cursor = None
        while True:
            page = self.ok(PROFILES, **params, **({} if cursor is None else {"cursor": cursor}))
            pages.append(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return pages
            assert len(pages) < 100, "the pages never end"


@pytest.fixture
def admin(live: LiveTessera) -> Iterator[Api]:
    api = Api(live, "admin")
    yield api
    api.client.close()


def send(live: LiveTessera, *messages: dict[str, Any]) -> None:
    response = post(live, "/v1/batch", {"batch": list(messages)})
    assert response.status_code == 200, response.text
    wait_until_caught_up(live.engine)


def identify(user: str, plan: str, **extra: Any) -> dict[str, Any]:
    traits = {"email": f"{user}@example.com", "plan": plan}
    return {"type": "identify", "userId": user, "traits": traits, **extra}


def ids(pages: list[list[dict[str, Any]]]) -> list[str]:
    return [item["id"] for page in pages for item in page]


def profile_id(admin: Api, ref: str) -> str:
    return str(admin.ok(f"{PROFILES}/{ref}")["id"])


def create_ready_audience(admin: Api, definition: dict[str, Any]) -> str:
    response = admin.client.post(AUDIENCES, json={"name": "Pro", "definition": definition})
    assert response.status_code == 201, response.text
    audience_id = str(response.json()["id"])
    deadline = time.monotonic() + 30
    while admin.ok(f"{AUDIENCES}/{audience_id}")["status"] != "ready":
        assert time.monotonic() < deadline, "the audience did not finish building"
        time.sleep(0.05)
    return audience_id


@pytest.fixture
def scene(live: LiveTessera, admin: Api) -> dict[str, Any]:
    """Seven users (five on the pro plan), an audience of pro users, and an anonymous pro
    visitor who joins the audience and is then merged into u1 (so is absorbed or survives)."""
    users = {f"u{n}": "free" if n in (3, 6) else "pro" for n in range(1, 8)}
    send(
        live,
        *(identify(user, plan) for user, plan in users.items()),
        {"type": "identify", "anonymousId": "visitor", "traits": {"plan": "pro"}},
    )
    audience_id = create_ready_audience(admin, PRO)
    visitor = profile_id(admin, "anonymous_id:visitor")
    members = admin.ok(f"{AUDIENCES}/{audience_id}/members")["items"]
    before = [member["profile_id"] for member in members]
    assert visitor in before and len(before) == 6
    u1 = profile_id(admin, "user_id:u1")
    # The visitor signs in as u1: the shared anonymous id merges the two profiles.
    send(live, {"type": "track", "userId": "u1", "anonymousId": "visitor", "event": "Signed In"})
    [merge] = admin.ok(f"{PROFILES}/user_id:u1/merges")
    assert {merge["survivor_id"], merge["absorbed_id"]} == {u1, visitor}
    return {
        "audience": audience_id,
        "pro": sorted({profile_id(admin, f"user_id:{u}") for u, p in users.items() if p == "pro"}),
        "all": sorted({profile_id(admin, f"user_id:{u}") for u in users}),
        "absorbed": merge["absorbed_id"],
        "survivor": merge["survivor_id"],
    }


# ---------------------------------------------------------------------------------------------
# paging


def test_paging_an_audience_lists_each_member_once(admin: Api, scene: dict[str, Any]) -> None:
    pages = admin.walk(audience=scene["audience"], limit=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    listed = ids(pages)
    assert listed == sorted(listed) and len(set(listed)) == len(listed)
    assert listed == scene["pro"]
    members = admin.ok(f"{AUDIENCES}/{scene['audience']}/members")["items"]
    assert listed == [member["profile_id"] for member in members]
    # Each item is what the profile API shows for that profile, which still answers.
    for item in (item for page in pages for item in page):
        assert item == admin.ok(f"{PROFILES}/{item['id']}")
        assert [a["id"] for a in item["audiences"]] == [scene["audience"]]
    # One page that holds them all, and a page that ends exactly at the last member.
    assert [len(page) for page in admin.walk(audience=scene["audience"], limit=1000)] == [5]
    assert [len(page) for page in admin.walk(audience=scene["audience"], limit=5)] == [5]


def test_without_an_audience_every_surviving_profile_is_listed(
    admin: Api, scene: dict[str, Any]
) -> None:
    pages = admin.walk(limit=3)
    assert [len(page) for page in pages] == [3, 3, 1]
    assert ids(pages) == scene["all"]
    assert ids(admin.walk()) == scene["all"]  # 100 a page by default


def test_absorbed_profiles_are_never_listed(admin: Api, scene: dict[str, Any]) -> None:
    absorbed, survivor = scene["absorbed"], scene["survivor"]
    for params in ({}, {"audience": scene["audience"]}, {"updated_since": "2000-01-01T00:00:00Z"}):
        for limit in (1, 100):
            listed = ids(admin.walk(**params, limit=limit))
            assert absorbed not in listed and listed.count(survivor) == 1, (params, limit)
    # The absorbed id still resolves, to its survivor.
    assert admin.ok(f"{PROFILES}/{absorbed}")["id"] == survivor


# ---------------------------------------------------------------------------------------------
# updated_since


def test_updated_since_lists_what_changed_after_a_moment(live: LiveTessera, admin: Api) -> None:
    october = "2026-10-01T09:00:00Z"
    send(live, *(identify(user, "pro", timestamp=october) for user in ("u1", "u2", "u3")))
    everyone = ids(admin.walk())
    assert len(everyone) == 3
    assert ids(admin.walk(updated_since="2026-10-01T09:00:00Z")) == everyone  # at or after
    assert ids(admin.walk(updated_since="2026-10-01T09:00:00.001Z")) == []
    # Without a zone it is UTC; with one, the moment it names.
    assert ids(admin.walk(updated_since="2026-10-01T09:00:00")) == everyone
    assert ids(admin.walk(updated_since="2026-10-01T10:00:00+01:00")) == everyone
    assert ids(admin.walk(updated_since="2026-10-01T10:00:01+01:00")) == []

    moment = datetime.now(UTC)
    time.sleep(0.01)
    send(live, {"type": "track", "userId": "u2", "event": "Order Completed"})
    u2 = profile_id(admin, "user_id:u2")
    assert ids(admin.walk(updated_since=moment.isoformat())) == [u2]
    assert ids(admin.walk(updated_since=moment.isoformat(), limit=1)) == [u2]
    later = (moment + timedelta(hours=1)).isoformat()
    assert ids(admin.walk(updated_since=later)) == []


def test_updated_since_and_audience_together(
    live: LiveTessera, admin: Api, scene: dict[str, Any]
) -> None:
    moment = datetime.now(UTC)
    time.sleep(0.01)
    send(live, {"type": "track", "userId": "u2", "event": "Order Completed"})
    send(live, {"type": "track", "userId": "u3", "event": "Order Completed"})  # not pro
    since = moment.isoformat()
    assert ids(admin.walk(audience=scene["audience"], updated_since=since)) == [
        profile_id(admin, "user_id:u2")
    ]
    assert ids(admin.walk(updated_since=since)) == sorted(
        [profile_id(admin, "user_id:u2"), profile_id(admin, "user_id:u3")]
    )


# ---------------------------------------------------------------------------------------------
# refusals


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is False and body["code"] == code, body
    return body


def test_an_unknown_audience_is_404_naming_it(admin: Api) -> None:
    body = refused(admin.get(PROFILES, audience="aud_nope"), 404, "not_found")
    assert "'aud_nope'" in body["message"] and "/api/v1/audiences" in body["message"]


def test_malformed_parameters_are_refused_naming_the_value(admin: Api) -> None:
    good = encode_cursor("prf_12")
    for cursor in ("not-a-cursor", "YWJj", "!!!", good + "=", good[:2] + "." + good[2:], "cHJmXw"):
        body = refused(admin.get(PROFILES, cursor=cursor), 400, "bad_request")
        assert repr(cursor) in body["message"] and "next_cursor" in body["message"]
    for value in ("yesterday", "2026-13-01", "2026-11-22T25:00:00Z", "1700000000"):
        body = refused(admin.get(PROFILES, updated_since=value), 400, "bad_request")
        assert repr(value) in body["message"] and "2026-11-22T10:00:00Z" in body["message"]
    # An unescaped `+` reaches the server as a space; the message says what to do.
    response = admin.client.get(f"{PROFILES}?updated_since=2026-11-22T10:00:00+01:00")
    assert "%2B" in refused(response, 400, "bad_request")["message"]
    # Out of range or not a number: 422 as on every list route, naming the parameter.
    for params in ({"limit": 0}, {"limit": 1001}, {"limit": "ten"}, {"cursor": "x" * 201}):
        body = refused(admin.get(PROFILES, **params), 422, "invalid_request")
        [name] = params
        assert [problem["location"] for problem in body["problems"]] == [["query", name]]
    for params in ({"limit": 1}, {"limit": 1000}, {"cursor": good}):
        assert admin.ok(PROFILES, **params) == {"items": [], "next_cursor": None}


def test_no_token_is_401(live: LiveTessera) -> None:
    response = httpx.get(f"{live.url}{PROFILES}", timeout=30)
    refused(response, 401, "unauthorized")


# ---------------------------------------------------------------------------------------------
# personal data


def test_analysts_see_masked_personal_data(live: LiveTessera, admin: Api) -> None:
    traits = {"email": "jo@example.com", "plan": "pro"}
    send(live, {"type": "identify", "userId": "u1", "traits": traits})
    [plain] = admin.ok(PROFILES)["items"]
    assert plain["traits"]["email"] == "jo@example.com"
    assert {"type": "email", "value": "jo@example.com"} in plain["identities"]
    analyst = Api(live, "analyst")
    [masked] = analyst.ok(PROFILES)["items"]
    analyst.client.close()
    assert masked["traits"] == {"email": "j***@***", "plan": "pro"}
    assert {"type": "email", "value": "j***@***"} in masked["identities"]
    assert {"type": "user_id", "value": "u1"} in masked["identities"]
    assert "jo@example.com" not in str(masked)


# ---------------------------------------------------------------------------------------------
# the cursor codec


@given(st.from_regex(r"\Aprf_[0-9]{1,19}\Z"))
def test_a_cursor_decodes_to_the_profile_id_it_was_made_from(profile_id: str) -> None:
    cursor = encode_cursor(profile_id)
    assert decode_cursor(cursor) == profile_id
    assert "=" not in cursor and "/" not in cursor and "+" not in cursor


@given(st.text(max_size=60))
def test_any_other_cursor_is_refused_or_is_one_we_made(text: str) -> None:
    try:
        profile_id = decode_cursor(text)
    except BadRequest as error:
        assert repr(text[:40]) in error.message
    else:
        assert encode_cursor(profile_id) == text


def test_an_updated_since_pull_reads_the_index_not_every_profile(engine: Engine) -> None:
    """The page query of `updated_since` finds the few recently updated profiles through
    `ix_profiles_merged_into_updated_at` on both backends, instead of reading (and, on
    SQLite, sorting) every surviving profile for each page."""
    old = datetime(2026, 1, 1, tzinfo=UTC)
    recent = old + timedelta(days=30)
    rows = [
        {
            "id": f"prf_{n:06d}",
            "created_seq": n,
            "created_at": old,
            "updated_at": recent if n % 1000 == 7 else old + timedelta(seconds=n),
            "event_count": 1,
        }
        for n in range(5000)
    ]
    with engine.begin() as conn:
        conn.execute(profiles.insert(), rows)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE profiles")
    statements: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        statements.append((args[2], args[3]))  # statement, parameters

    since = recent - timedelta(days=1)
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.connect() as conn:
            ids, last = list_profile_ids(
                conn, audience_id=None, updated_since=since, after=None, limit=100
            )
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert (ids, last) == ([f"prf_{n:06d}" for n in range(7, 5000, 1000)], None)
    statement, parameters = statements[-1]
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as conn:
        plan = "\n".join(
            str(row[-1]) for row in conn.exec_driver_sql(explain + statement, parameters)
        )
    assert "ix_profiles_merged_into_updated_at" in plan, plan
