"""Tokens, users and the audit log through the API; hardening of every response."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa

from tessera.auth.tokens import create_token
from tessera.processor import wait_until_caught_up
from tests.conftest import LiveTessera
from tests.ingest.helpers import post


@pytest.fixture
def admin(live: LiveTessera) -> str:
    with live.engine.begin() as conn:
        return create_token(conn, name="root", role="admin")[0]


def api(live: LiveTessera, method: str, path: str, token: str, **kwargs: object) -> httpx.Response:
    return httpx.request(
        method,
        f"{live.url}/api/v1/{path}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        **kwargs,
    )


def test_token_lifecycle_through_the_api_is_audited(live: LiveTessera, admin: str) -> None:
    created = api(live, "POST", "tokens", admin, json={"name": "crm-sync", "role": "sales"})
    assert created.status_code == 201, created.text
    body = created.json()
    token = body["token"]
    assert token.startswith("tsk_") and body["prefix"] == token[:8]
    listed = api(live, "GET", "tokens", admin).json()
    assert {item["name"] for item in listed} == {"root", "crm-sync"}
    assert all("token" not in item and "token_hash" not in item for item in listed)
    assert api(live, "GET", "auth/me", token).json()["role"] == "sales"
    me = api(live, "GET", "auth/me", token)
    assert me.status_code == 200
    assert api(live, "DELETE", f"tokens/{body['id']}", admin).status_code == 204
    assert api(live, "GET", "auth/me", token).status_code == 401
    assert api(live, "DELETE", f"tokens/{body['id']}", admin).status_code == 404
    used = {item["name"]: item["last_used_at"] for item in api(live, "GET", "tokens", admin).json()}
    assert used["crm-sync"] is not None
    log = api(live, "GET", "audit", admin, params={"actor": "token:root"}).json()["items"]
    assert [(entry["action"], entry["outcome"]) for entry in log] == [
        ("token.revoke", "success"),
        ("token.create", "success"),
    ]
    assert token not in str(log)


def test_users_and_role_changes_are_audited(live: LiveTessera, admin: str) -> None:
    created = api(
        live,
        "POST",
        "users",
        admin,
        json={"email": "Sam@Example.com", "password": "long enough password", "role": "support"},
    )
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["email"] == "sam@example.com"
    duplicate = api(
        live,
        "POST",
        "users",
        admin,
        json={"email": "sam@example.com", "password": "long enough password", "role": "support"},
    )
    assert duplicate.status_code == 409
    weak = api(
        live,
        "POST",
        "users",
        admin,
        json={"email": "x@example.com", "password": "short", "role": "support"},
    )
    assert weak.status_code == 400 and "12 characters" in weak.json()["message"]
    changed = api(live, "PATCH", f"users/{user['id']}", admin, json={"role": "sales"})
    assert changed.json()["role"] == "sales"
    assert api(live, "PATCH", "users/999999", admin, json={"role": "sales"}).status_code == 404
    [entry] = api(live, "GET", "audit", admin, params={"action": "user.role_change"}).json()[
        "items"
    ]
    assert entry["target"] == "sam@example.com"
    assert entry["details"] == {"role": {"from": "support", "to": "sales"}}
    assert entry["ip"] == "127.0.0.1"
    assert "long enough password" not in api(live, "GET", "audit", admin).text


def test_audit_log_pages_and_filters(live: LiveTessera, admin: str) -> None:
    for index in range(5):
        api(live, "POST", "tokens", admin, json={"name": f"t{index}", "role": "analyst"})
    first = api(live, "GET", "audit", admin, params={"action": "token.create", "limit": 2}).json()
    assert [entry["details"]["role"] for entry in first["items"]] == ["analyst", "analyst"]
    second = api(
        live,
        "GET",
        "audit",
        admin,
        params={"action": "token.create", "limit": 10, "cursor": first["next_cursor"]},
    ).json()
    assert len(first["items"]) + len(second["items"]) == 5
    assert {e["id"] for e in first["items"]}.isdisjoint({e["id"] for e in second["items"]})
    assert api(live, "GET", "audit", admin, params={"outcome": "failure"}).json()["items"] == []


def test_audit_times_out_of_range_in_utc_are_refused_with_400(
    live: LiveTessera, admin: str
) -> None:
    """Found by the schema fuzzer: a time near year 1 with a positive offset is before year
    1 in UTC, which neither Python nor the store can hold; it used to answer 500."""
    for name in ("since", "until"):
        response = api(live, "GET", "audit", admin, params={name: "0001-01-01T00:01:00+02:00"})
        assert response.status_code == 400, response.text
        assert name in response.text
    naive = api(live, "GET", "audit", admin, params={"since": "2026-01-01T00:00:00"})
    assert naive.status_code == 200


def test_the_audit_log_cannot_be_changed(live: LiveTessera, admin: str) -> None:
    api(live, "POST", "tokens", admin, json={"name": "x", "role": "analyst"})
    for statement in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"):
        with pytest.raises(sa.exc.DatabaseError, match="append-only"), live.engine.begin() as conn:
            conn.execute(sa.text(statement))


def test_unmerge_is_audited(live: LiveTessera, admin: str) -> None:
    batch = [
        {"type": "page", "anonymousId": "a"},
        {"type": "page", "anonymousId": "b"},
        {"type": "identify", "anonymousId": "a", "userId": "u"},
        {"type": "identify", "anonymousId": "b", "userId": "u"},
    ]
    assert post(live, "/v1/batch", {"batch": batch}).status_code == 200
    wait_until_caught_up(live.engine)
    [merge] = api(live, "GET", "profiles/user_id:u/merges", admin).json()
    assert (
        api(
            live, "POST", "profiles/user_id:u/unmerge", admin, json={"merge_id": merge["id"]}
        ).status_code
        == 200
    )
    [entry] = api(live, "GET", "audit", admin, params={"action": "profile.unmerge"}).json()["items"]
    assert entry["actor"] == "token:root" and entry["details"]["merge_id"] == merge["id"]


def test_analysts_see_personal_data_masked(live: LiveTessera) -> None:
    batch = [
        {
            "type": "identify",
            "userId": "u1",
            "traits": {"email": "jo@example.com", "name": "Jo Smith", "plan": "pro"},
            "context": {"ip": "10.1.2.3"},
        },
        {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"total": 5}},
    ]
    assert post(live, "/v1/batch", {"batch": batch}).status_code == 200
    wait_until_caught_up(live.engine)
    with live.engine.begin() as conn:
        analyst = create_token(conn, name="bi", role="analyst")[0]
    body = api(live, "GET", "profiles/user_id:u1", analyst).json()
    assert body["traits"] == {"email": "j***@***", "name": "J***", "plan": "pro"}
    assert {"type": "email", "value": "j***@***"} in body["identities"]
    events = api(live, "GET", "profiles/user_id:u1/events", analyst).json()["items"]
    assert "jo@example.com" not in str(events) and "10.1.2.3" not in str(events)
    assert events[0]["properties"] == {"total": 5}
    by_email = api(live, "GET", "profiles/email:jo@example.com", analyst)
    assert by_email.status_code == 403


def test_every_response_carries_security_headers(live: LiveTessera, admin: str) -> None:
    for response in (
        httpx.get(f"{live.url}/healthz"),
        api(live, "GET", "auth/me", admin),
        api(live, "GET", "auth/me", "tsk_wrong"),
        httpx.post(f"{live.url}/v1/track", json={}),
    ):
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"


def test_management_bodies_are_size_limited(live: LiveTessera, admin: str) -> None:
    huge = {"name": "x" * (2 * 1024 * 1024), "role": "analyst"}
    response = api(live, "POST", "tokens", admin, json=huge)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"

    def chunks() -> object:
        for _ in range(40):
            yield b"x" * 65536

    streamed = httpx.post(
        f"{live.url}/api/v1/tokens",
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
        content=chunks(),
    )
    assert streamed.status_code == 413


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "audit", {"params": {"actor": "a\x00b"}}, 400),
        ("GET", "profiles/user_id:u%001", {}, 400),
        ("POST", "tokens", {"json": {"name": "a\x00b", "role": "analyst"}}, 400),
        ("POST", "auth/login", {"json": {"email": "a\x00b@example.com", "password": "x"}}, 400),
        ("DELETE", f"tokens/{2**63}", {}, 422),
        ("PATCH", f"users/{2**31}", {"json": {"active": True}}, 422),
        ("POST", "profiles/user_id:u/unmerge", {"json": {"merge_id": 2**63}}, 422),
    ],
)
def test_values_the_store_cannot_hold_are_refused_up_front(
    live: LiveTessera, admin: str, *, method: str, path: str, kwargs: dict[str, object], status: int
) -> None:
    response = api(live, method, path, admin, **kwargs)
    assert response.status_code == status, response.text
