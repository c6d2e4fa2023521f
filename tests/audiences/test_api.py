"""The computed-trait and audience API through a live server: round trips, every class of bad
input with the JSON path it names, permissions, members pages, and the processor end to end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from tessera.audiences.models import audience_members
from tessera.audiences.sizes import count_members
from tessera.auth.tokens import create_token
from tessera.config import Settings
from tessera.processor import wait_until_caught_up
from tests.conftest import LiveTessera, start_live
from tests.ingest.helpers import post

TRAITS = "/api/v1/computed-traits"
AUDIENCES = "/api/v1/audiences"
ORDERS_30D = {
    "name": "orders_30d",
    "kind": "count",
    "event": {"name": "Order Completed"},
    "window": {"days": 30},
}
SPEND = {"name": "spend", "kind": "sum", "event": {"name": "Order Completed"}, "property": "total"}


class Api:
    """An httpx client for one role's token, with the JSON shortcuts the tests use."""

    def __init__(self, live: LiveTessera, role: str) -> None:
        with live.engine.begin() as conn:
            token, _ = create_token(conn, name=f"tests-{role}", role=role)
        self.client = httpx.Client(
            base_url=live.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        if body is not None:
            kwargs["json"] = body
        return self.client.request(method, path, **kwargs)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200, **kw: Any) -> Any:
        response = self.request(method, path, body, **kw)
        assert response.status_code == status, f"{method} {path}: {response.text}"
        return response.json() if response.content else None

    def raw(self, method: str, path: str, content: bytes) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        return self.client.request(method, path, content=content, headers=headers)


@pytest.fixture
def admin(live: LiveTessera) -> Iterator[Api]:
    api = Api(live, "admin")
    yield api
    api.client.close()


def audit_actions(api: Api, target: str) -> list[str]:
    entries = api.ok("GET", "/api/v1/audit", params={"limit": 100})["items"]
    return [entry["action"] for entry in reversed(entries) if entry["target"] == target]


# ---------------------------------------------------------------------------------------------
# round trips


def test_computed_trait_round_trip(admin: Api) -> None:
    created = admin.ok("POST", TRAITS, ORDERS_30D, status=201)
    assert created["name"] == "orders_30d"
    # The canonical definition: defaults filled in (a named event is a track event).
    assert created["definition"] == {
        "name": "orders_30d",
        "kind": "count",
        "event": {"name": "Order Completed", "type": "track"},
        "window": {"days": 30},
    }
    assert created["implicit"] is False
    assert created["status"] in ("backfilling", "ready")
    assert set(created["backfill"]) == {"through_seq", "log_head_seq", "progress"}
    assert created["created_at"] == created["updated_at"]

    assert admin.ok("GET", f"{TRAITS}/orders_30d")["definition"] == created["definition"]
    assert [trait["name"] for trait in admin.ok("GET", TRAITS)] == ["orders_30d"]

    # PUT takes the definition without its name, or with the same one.
    changed = admin.ok(
        "PUT", f"{TRAITS}/orders_30d", {"kind": "count", "event": {"name": "Order Completed"}}
    )
    assert "window" not in changed["definition"]
    assert changed["status"] in ("backfilling", "ready")
    again = admin.ok("PUT", f"{TRAITS}/orders_30d", {**ORDERS_30D, "window": {"hours": 36}})
    assert again["definition"]["window"] == {"hours": 36}
    assert admin.ok("GET", f"{TRAITS}/orders_30d")["definition"]["window"] == {"hours": 36}

    assert admin.request("DELETE", f"{TRAITS}/orders_30d").status_code == 204
    assert admin.request("GET", f"{TRAITS}/orders_30d").status_code == 404
    assert admin.ok("GET", TRAITS) == []
    assert audit_actions(admin, "computed_trait:orders_30d") == [
        "computed_trait.create",
        "computed_trait.update",
        "computed_trait.update",
        "computed_trait.delete",
    ]


def test_audience_round_trip(admin: Api) -> None:
    admin.ok("POST", TRAITS, SPEND, status=201)
    definition = {
        "and": [
            {"computed": "spend", "op": "gt", "value": 100},
            {"event": "Order Completed", "count": {"op": "gte", "value": 2}, "window": {"days": 7}},
        ]
    }
    body = {"name": "Big spenders", "description": "Over 100", "definition": definition}
    created = admin.ok("POST", AUDIENCES, body, status=201)
    audience_id = created["id"]
    assert audience_id.startswith("aud_")
    assert created["name"] == "Big spenders" and created["description"] == "Over 100"
    assert created["definition"] == definition
    assert created["status"] in ("building", "ready")
    assert created["size"] == 0
    assert set(created["build"]) == {"evaluated_profiles", "profiles", "progress"}
    assert created["created_by"] == "token:tests-admin"

    assert admin.ok("GET", f"{AUDIENCES}/{audience_id}")["definition"] == definition
    assert [a["id"] for a in admin.ok("GET", AUDIENCES)] == [audience_id]

    # The event condition reads an implicit trait, listed only on request.
    assert [t["name"] for t in admin.ok("GET", TRAITS)] == ["spend"]
    listed = admin.ok("GET", TRAITS, params={"include_implicit": "true"})
    implicit = [t for t in listed if t["implicit"]]
    assert len(implicit) == 1 and implicit[0]["name"].startswith("_evt_")
    implicit_name = implicit[0]["name"]
    assert admin.ok("GET", f"{TRAITS}/{implicit_name}")["implicit"] is True
    # It belongs to the audience: not to be changed or deleted on its own.
    for method, payload in (("PUT", {"kind": "count"}), ("DELETE", None)):
        refused = admin.request(method, f"{TRAITS}/{implicit_name}", payload)
        assert refused.status_code == 400, refused.text
        assert refused.json()["code"] == "bad_request"

    renamed = admin.ok("PATCH", f"{AUDIENCES}/{audience_id}", {"name": "Whales"})
    assert renamed["name"] == "Whales" and renamed["definition"] == definition
    described = admin.ok("PATCH", f"{AUDIENCES}/{audience_id}", {"description": ""})
    assert described["description"] == "" and described["name"] == "Whales"
    simpler = {"computed": "spend", "op": "gte", "value": 500}
    rebuilt = admin.ok("PATCH", f"{AUDIENCES}/{audience_id}", {"definition": simpler})
    assert rebuilt["definition"] == simpler
    assert rebuilt["status"] in ("building", "ready")
    # The event condition is gone, and so is the implicit trait it read.
    assert [t["name"] for t in admin.ok("GET", TRAITS, params={"include_implicit": True})] == [
        "spend"
    ]

    assert admin.request("DELETE", f"{AUDIENCES}/{audience_id}").status_code == 204
    assert admin.request("GET", f"{AUDIENCES}/{audience_id}").status_code == 404
    assert admin.ok("GET", AUDIENCES) == []
    assert audit_actions(admin, f"audience:{audience_id}") == [
        "audience.create",
        "audience.update",
        "audience.update",
        "audience.update",
        "audience.delete",
    ]


# ---------------------------------------------------------------------------------------------
# bad input


def assert_invalid(response: httpx.Response, path: str, words: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_definition", body
    assert body["path"] == path, body
    assert body["message"].startswith(f"{path}: "), body
    assert words in body["message"], body


def test_invalid_computed_traits_name_their_path(admin: Api) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({**ORDERS_30D, "name": "Orders 30d"}, "$.name", "lowercase"),
        ({"kind": "count"}, "$.name", "not None"),
        ({**ORDERS_30D, "kind": "median"}, "$.kind", "unknown kind 'median'"),
        ({**SPEND, "property": None}, "$.property", "sum reads a property"),
        ({**ORDERS_30D, "property": "total"}, "$.property", "count takes no property"),
        ({**ORDERS_30D, "window": {"weeks": 2}}, "$.window", "'weeks'"),
        ({**ORDERS_30D, "window": {"days": 0}}, "$.window.days", "from 1 to 3650"),
        ({**ORDERS_30D, "limit": 5}, "$.limit", "only unique_list"),
        ({**ORDERS_30D, "event": {"name": "Signed Up", "type": "identify"}}, "$.event.name", ""),
        (
            {**ORDERS_30D, "event": {"where": {"property": "total", "op": "bigger", "value": 1}}},
            "$.event.where.op",
            "bigger",
        ),
        ({**ORDERS_30D, "colour": "red"}, "$", "'colour'"),
        # What JSON can say but the store cannot keep:
        (
            {**SPEND, "event": {"where": {"property": "n", "op": "eq", "value": 2**64}}},
            "$.event.where.value",
            "64 bits",
        ),
    ]
    for document, path, words in cases:
        assert_invalid(admin.request("POST", TRAITS, document), path, words)
    # Python's JSON reader takes NaN, 1e400 (infinity) and lone surrogates; none is stored.
    nan = b'{"name": "n", "kind": "count", "event": {"where": '
    nan += b'{"property": "total", "op": "gt", "value": NaN}}}'
    assert_invalid(admin.raw("POST", TRAITS, nan), "$.event.where.value", "finite")
    huge = b'{"name": "n", "kind": "count", "event": {"where": '
    huge += b'{"property": "total", "op": "gt", "value": 1e400}}}'
    assert_invalid(admin.raw("POST", TRAITS, huge), "$.event.where.value", "finite")
    surrogate = b'{"name": "n", "kind": "count", "event": {"name": "Order \\ud800"}}'
    assert_invalid(admin.raw("POST", TRAITS, surrogate), "$.event.name", "Unicode")

    admin.ok("POST", TRAITS, ORDERS_30D, status=201)
    bad_put = admin.request("PUT", f"{TRAITS}/orders_30d", {"kind": "sum"})
    assert_invalid(bad_put, "$.property", "sum reads a property")
    renamed = admin.request("PUT", f"{TRAITS}/orders_30d", {**ORDERS_30D, "name": "orders_7d"})
    assert_invalid(renamed, "$.name", "cannot be renamed")
    # Nothing refused was stored, and the trait kept its definition.
    assert [t["name"] for t in admin.ok("GET", TRAITS, params={"include_implicit": True})] == [
        "orders_30d"
    ]
    assert admin.ok("GET", f"{TRAITS}/orders_30d")["definition"]["window"] == {"days": 30}


def test_invalid_audience_definitions_name_their_path(admin: Api) -> None:
    admin.ok("POST", TRAITS, ORDERS_30D, status=201)
    deep: dict[str, Any] = {"trait": "plan", "op": "eq", "value": "pro"}
    for _ in range(20):
        deep = {"not": deep}
    cases: list[tuple[Any, str, str]] = [
        (None, "$", "a condition is an object"),
        ([], "$", "a condition is an object"),
        ({"colour": "red"}, "$", "one of the keys"),
        ({"and": []}, "$.and", "non-empty list"),
        (
            {"and": [{"trait": "plan", "op": "eq", "value": "pro"}, {"trait": "plan", "op": "?"}]},
            "$.and[1].op",
            "unknown operator '?'",
        ),
        ({"computed": "orders_7d", "op": "gt", "value": 1}, "$.computed", "orders_30d"),
        ({"computed": "orders_30d", "op": "gt", "value": "x"}, "$.value", "compares with numbers"),
        ({"computed": "orders_30d", "op": "contains", "value": 1}, "$.op", "cannot use"),
        ({"event": "Order Completed"}, "$", "exactly one of count"),
        ({"event": "Order Completed", "performed": "yes"}, "$.performed", "true or false"),
        ({"or": [{"audience": "aud_nope"}]}, "$.or[0].audience", "unknown audience"),
        ({"trait": "last_seen", "op": "before", "value": "soon"}, "$.value", "ISO-8601"),
        ({"trait": "n", "op": "eq", "value": 2**70}, "$.value", "64 bits"),
        (deep, "$" + ".not" * 16, "deeper than 16"),
    ]
    for definition, path, words in cases:
        body = {"name": "a", "definition": definition}
        assert_invalid(admin.request("POST", AUDIENCES, body), path, words)
    nan = b'{"name": "a", "definition": {"trait": "n", "op": "gt", "value": NaN}}'
    assert_invalid(admin.raw("POST", AUDIENCES, nan), "$.value", "finite")

    first = admin.ok(
        "POST", AUDIENCES, {"name": "first", "definition": {"consent": "email"}}, status=201
    )
    second = admin.ok(
        "POST", AUDIENCES, {"name": "second", "definition": {"audience": first["id"]}}, status=201
    )
    itself = {"definition": {"and": [{"consent": "sms"}, {"audience": first["id"]}]}}
    assert_invalid(
        admin.request("PATCH", f"{AUDIENCES}/{first['id']}", itself),
        "$.and[1].audience",
        "cannot include itself",
    )
    cycle = {"definition": {"audience": second["id"]}}
    assert_invalid(
        admin.request("PATCH", f"{AUDIENCES}/{first['id']}", cycle),
        "$.audience",
        f"{first['id']} → {second['id']} → {first['id']}",
    )
    null = admin.request("PATCH", f"{AUDIENCES}/{first['id']}", {"definition": None})
    assert_invalid(null, "$", "a condition is an object")
    # Nothing refused was stored.
    assert [a["name"] for a in admin.ok("GET", AUDIENCES)] == ["first", "second"]
    assert admin.ok("GET", f"{AUDIENCES}/{first['id']}")["definition"] == {"consent": "email"}


def assert_refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is False and body["code"] == code, body
    return body


def test_malformed_requests_are_refused_like_everywhere_else(admin: Api) -> None:
    audience = admin.ok(
        "POST", AUDIENCES, {"name": "a", "definition": {"consent": "email"}}, status=201
    )
    one = f"{AUDIENCES}/{audience['id']}"
    # Not JSON, or not the body's shape: 422 `invalid_request`, as on every route.
    for method, path, content in (
        ("POST", TRAITS, b"{not json"),
        ("POST", TRAITS, b"[1, 2]"),
        ("POST", TRAITS, b'"count"'),
        ("PUT", f"{TRAITS}/x", b"{"),
        ("POST", AUDIENCES, b"{not json"),
        ("POST", AUDIENCES, b'{"name": "b"}'),  # no definition
        ("POST", AUDIENCES, b'{"name": "b", "definition": {}, "colour": 1}'),
        ("POST", AUDIENCES, b'{"name": 5, "definition": {"consent": "email"}}'),
        ("POST", AUDIENCES, b'{"name": "", "definition": {"consent": "email"}}'),
        ("POST", AUDIENCES, b'{"name": "' + b"x" * 201 + b'", "definition": {"consent": "e"}}'),
        ("POST", AUDIENCES, b'{"name": "\\ud800", "definition": {"consent": "email"}}'),
        ("PATCH", one, b'{"name": null}'),
        ("PATCH", one, b'{"description": null}'),
        ("PATCH", one, b'{"owner": "me"}'),
        ("PATCH", one, b"[]"),
    ):
        body = assert_refused(admin.raw(method, path, content), 422, "invalid_request")
        assert body["problems"], body
    assert_refused(
        admin.request("POST", AUDIENCES, {"name": "   ", "definition": {"consent": "email"}}),
        400,
        "bad_request",
    )
    for params in ({"limit": 0}, {"limit": 1001}, {"limit": "ten"}, {"cursor": "x" * 201}):
        assert_refused(
            admin.request("GET", f"{one}/members", params=params), 422, "invalid_request"
        )
    for cursor in ("not-a-cursor", "YWJj", "!!!"):
        body = assert_refused(
            admin.request("GET", f"{one}/members", params={"cursor": cursor}), 400, "bad_request"
        )
        assert "cursor" in body["message"]
    assert_refused(
        admin.request("GET", TRAITS, params={"include_implicit": "perhaps"}), 422, "invalid_request"
    )
    assert [a["name"] for a in admin.ok("GET", AUDIENCES)] == ["a"]


def test_unknown_names_clashes_and_dependents(admin: Api) -> None:
    for method, path, body in (
        ("GET", f"{TRAITS}/orders_7d", None),
        ("PUT", f"{TRAITS}/orders_7d", {"kind": "count"}),
        ("DELETE", f"{TRAITS}/orders_7d", None),
        ("GET", f"{AUDIENCES}/aud_nope", None),
        ("PATCH", f"{AUDIENCES}/aud_nope", {"name": "x"}),
        ("DELETE", f"{AUDIENCES}/aud_nope", None),
        ("GET", f"{AUDIENCES}/aud_nope/members", None),
    ):
        found = assert_refused(admin.request(method, path, body), 404, "not_found")
        assert "nope" in found["message"] or "orders_7d" in found["message"]

    admin.ok("POST", TRAITS, ORDERS_30D, status=201)
    clash = assert_refused(admin.request("POST", TRAITS, ORDERS_30D), 409, "conflict")
    assert "orders_30d" in clash["message"]

    uses_trait = admin.ok(
        "POST",
        AUDIENCES,
        {"name": "Regulars", "definition": {"computed": "orders_30d", "op": "gte", "value": 3}},
        status=201,
    )
    refers = admin.ok(
        "POST",
        AUDIENCES,
        {"name": "Regulars by email", "definition": {"audience": uses_trait["id"]}},
        status=201,
    )
    clash = assert_refused(
        admin.request("POST", AUDIENCES, {"name": "Regulars", "definition": {"consent": "x"}}),
        409,
        "conflict",
    )
    assert "Regulars" in clash["message"]
    rename = admin.request("PATCH", f"{AUDIENCES}/{refers['id']}", {"name": "Regulars"})
    assert_refused(rename, 409, "conflict")

    in_use = assert_refused(admin.request("DELETE", f"{TRAITS}/orders_30d"), 409, "conflict")
    assert uses_trait["id"] in in_use["message"]
    referred = assert_refused(
        admin.request("DELETE", f"{AUDIENCES}/{uses_trait['id']}"), 409, "conflict"
    )
    assert refers["id"] in referred["message"]

    # Once the dependents are gone, so may the things they depended on be.
    assert admin.request("DELETE", f"{AUDIENCES}/{refers['id']}").status_code == 204
    assert admin.request("DELETE", f"{AUDIENCES}/{uses_trait['id']}").status_code == 204
    assert admin.request("DELETE", f"{TRAITS}/orders_30d").status_code == 204


def test_changing_a_traits_kind_under_an_audience_is_refused(admin: Api) -> None:
    admin.ok("POST", TRAITS, ORDERS_30D, status=201)
    audience = admin.ok(
        "POST",
        AUDIENCES,
        {"name": "Regulars", "definition": {"computed": "orders_30d", "op": "gte", "value": 3}},
        status=201,
    )
    # `gte` means nothing for a unique_list; the audience would no longer parse.
    changed = admin.request(
        "PUT", f"{TRAITS}/orders_30d", {"kind": "unique_list", "property": "sku"}
    )
    body = assert_refused(changed, 409, "conflict")
    assert audience["id"] in body["message"]


# ---------------------------------------------------------------------------------------------
# permissions


def test_analysts_read_and_marketers_write(live: LiveTessera, admin: Api) -> None:
    trait = admin.ok("POST", TRAITS, ORDERS_30D, status=201)
    audience = admin.ok(
        "POST", AUDIENCES, {"name": "a", "definition": {"consent": "email"}}, status=201
    )
    one = f"{AUDIENCES}/{audience['id']}"
    analyst = Api(live, "analyst")
    assert [t["definition"] for t in analyst.ok("GET", TRAITS)] == [trait["definition"]]
    assert analyst.ok("GET", f"{TRAITS}/orders_30d")["name"] == "orders_30d"
    assert [a["id"] for a in analyst.ok("GET", AUDIENCES)] == [audience["id"]]
    assert analyst.ok("GET", one)["name"] == "a"
    assert analyst.ok("GET", f"{one}/members") == {"items": [], "next_cursor": None}
    for method, path, body in (
        ("POST", TRAITS, {**ORDERS_30D, "name": "orders_7d"}),
        ("PUT", f"{TRAITS}/orders_30d", {"kind": "count"}),
        ("DELETE", f"{TRAITS}/orders_30d", None),
        ("POST", AUDIENCES, {"name": "b", "definition": {"consent": "email"}}),
        ("PATCH", one, {"name": "b"}),
        ("DELETE", one, None),
    ):
        refused = assert_refused(analyst.request(method, path, body), 403, "forbidden")
        assert "audiences write" in refused["message"]
    # Nothing changed.
    assert [t["definition"] for t in admin.ok("GET", TRAITS)] == [trait["definition"]]
    assert admin.ok("GET", one)["name"] == "a"

    marketer = Api(live, "marketer")
    marketer.ok("POST", TRAITS, {**ORDERS_30D, "name": "orders_7d"}, status=201)
    assert marketer.ok("PATCH", one, {"name": "b"})["name"] == "b"
    assert marketer.request("DELETE", f"{TRAITS}/orders_7d").status_code == 204
    for api in (analyst, marketer):
        api.client.close()


# ---------------------------------------------------------------------------------------------
# members, a page at a time


@pytest.fixture
def quiet(store_url: str, engine: Engine) -> Iterator[LiveTessera]:
    """A live server without a processor: members the test writes stay as written."""
    yield from start_live(Settings(database_url=store_url, processor_mode="off"), engine)


def test_members_page_by_page(quiet: LiveTessera) -> None:
    api = Api(quiet, "analyst")
    with quiet.engine.begin() as conn:
        token, _ = create_token(conn, name="writer", role="marketer")
    audience = httpx.post(
        f"{quiet.url}{AUDIENCES}",
        json={"name": "Everyone", "definition": {"consent": "email"}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()
    entered = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    ids = [f"prf_{n}" for n in range(1, 251)]
    with quiet.engine.begin() as conn:
        conn.execute(
            audience_members.insert(),
            [
                {"audience_id": audience["id"], "profile_id": pid, "entered_at": entered}
                for pid in ids
            ],
        )
        # Written by hand, as the processor writes members: the kept size moves with them.
        entries = [(audience["id"], pid, "test") for pid in ids]
        count_members(conn, exits=[], entries=entries, now=entered)
    members = f"{AUDIENCES}/{audience['id']}/members"
    assert api.ok("GET", f"{AUDIENCES}/{audience['id']}")["size"] == 250

    def walk(limit: int | None) -> list[list[dict[str, Any]]]:
        pages: list[list[dict[str, Any]]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {} if limit is None else {"limit": limit}
            if cursor is not None:
                params["cursor"] = cursor
            page = api.ok("GET", members, params=params)
            pages.append(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return pages
            assert len(pages) <= len(ids), "the pages never end"

    pages = walk(None)  # 100 by default
    assert [len(page) for page in pages] == [100, 100, 50]
    listed = [item["profile_id"] for page in pages for item in page]
    assert listed == sorted(ids)  # each once, in a stable order
    assert pages[0][0] == {"profile_id": "prf_1", "entered_at": "2026-11-01T12:00:00Z"}
    # A page that ends exactly at the last member says there is no next one.
    assert [len(page) for page in walk(125)] == [125, 125]
    assert [len(page) for page in walk(1000)] == [250]
    assert [len(page) for page in walk(1)] == [1] * 250
    api.client.close()


# ---------------------------------------------------------------------------------------------
# end to end, with the processor

JOURNEYS = [
    {"type": "identify", "userId": "u1", "traits": {"email": "u1@example.com", "plan": "pro"}},
    {"type": "identify", "userId": "u2", "traits": {"email": "u2@example.com", "plan": "free"}},
    {"type": "identify", "userId": "u3", "traits": {"email": "u3@example.com", "plan": "pro"}},
    *(
        {
            "type": "track",
            "userId": user,
            "event": "Order Completed",
            "properties": {"total": total},
        }
        for user, total in (("u1", 40), ("u1", 80), ("u1", 30), ("u2", 500), ("u3", 5))
    ),
]


def wait_ready(api: Api, path: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = api.ok("GET", path)
        if body["status"] == "ready":
            return body
        assert time.monotonic() < deadline, f"{path} not ready after {timeout} s: {body}"
        time.sleep(0.1)


def build_regulars(live: LiveTessera, admin: Api) -> dict[str, Any]:
    """Three users' orders, then a computed trait and an audience over them, once ready."""
    response = post(live, "/v1/batch", {"batch": JOURNEYS})
    assert response.status_code == 200, response.text
    wait_until_caught_up(live.engine)
    admin.ok("POST", TRAITS, SPEND, status=201)
    definition = {
        "and": [
            {"trait": "plan", "op": "eq", "value": "pro"},
            {"event": "Order Completed", "count": {"op": "gte", "value": 2}},
        ]
    }
    audience = admin.ok(
        "POST", AUDIENCES, {"name": "Pro regulars", "definition": definition}, status=201
    )
    trait = wait_ready(admin, f"{TRAITS}/spend")
    assert trait["backfill"]["progress"] == 1.0
    ready = wait_ready(admin, f"{AUDIENCES}/{audience['id']}")
    assert ready["build"]["progress"] == 1.0
    return ready


def profile_id(admin: Api, user: str) -> str:
    return str(admin.ok("GET", f"/api/v1/profiles/user_id:{user}")["id"])


def member_ids(admin: Api, audience_id: str) -> list[str]:
    page = admin.ok("GET", f"{AUDIENCES}/{audience_id}/members")
    return [item["profile_id"] for item in page["items"]]


def test_traits_backfill_and_audiences_build_then_follow_events(
    live: LiveTessera, admin: Api
) -> None:
    audience = build_regulars(live, admin)
    u1, u3 = profile_id(admin, "u1"), profile_id(admin, "u3")
    assert member_ids(admin, audience["id"]) == [u1]
    assert audience["size"] == 1
    # u3 orders again: the audience follows without a rebuild.
    more = {"type": "track", "userId": "u3", "event": "Order Completed", "properties": {"total": 1}}
    assert post(live, "/v1/track", more).status_code == 200
    wait_until_caught_up(live.engine)
    assert member_ids(admin, audience["id"]) == sorted([u1, u3])


def test_the_profile_shows_its_computed_traits_and_audiences(live: LiveTessera, admin: Api) -> None:
    audience = build_regulars(live, admin)
    u1 = admin.ok("GET", "/api/v1/profiles/user_id:u1")
    assert u1["computed_traits"]["spend"]["value"] == 150
    assert [(a["id"], a["name"]) for a in u1["audiences"]] == [(audience["id"], "Pro regulars")]
    u2 = admin.ok("GET", "/api/v1/profiles/user_id:u2")
    assert u2["computed_traits"]["spend"]["value"] == 500
    assert u2["audiences"] == []


def test_a_draft_preview_answers_what_the_audience_becomes(live: LiveTessera, admin: Api) -> None:
    response = post(live, "/v1/batch", {"batch": JOURNEYS})
    assert response.status_code == 200, response.text
    wait_until_caught_up(live.engine)
    draft = {
        "and": [
            {"trait": "plan", "op": "eq", "value": "pro"},
            {"event": "Order Completed", "count": {"op": "gte", "value": 2}},
        ]
    }
    preview = admin.ok("POST", f"{AUDIENCES}/preview", {"definition": draft})
    assert preview["exact"] is True and preview["profiles"] == 3
    assert preview["sample"] == [profile_id(admin, "u1")] and preview["size"] == 1
    assert preview["computed_from_events"]  # a new event condition, from the events
    assert admin.ok("GET", AUDIENCES) == []  # nothing saved
    analyst = Api(live, "analyst")
    assert analyst.ok("POST", f"{AUDIENCES}/preview", {"definition": draft})["size"] == 1
    refused = admin.request("POST", f"{AUDIENCES}/preview", {"definition": {"trait": "x"}})
    assert_invalid(refused, "$.op", "missing")
