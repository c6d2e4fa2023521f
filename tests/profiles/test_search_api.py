"""`GET /api/v1/profiles/search` through a live server whose processor keeps the index (the
built-in batch stage, from its entry point): results, pages, refusals, and what an analyst
may match and see."""

from __future__ import annotations

from typing import Any

import httpx

from tessera.auth.tokens import create_token
from tessera.processor import wait_until_caught_up
from tests.conftest import LiveTessera
from tests.ingest.helpers import post

PEOPLE = [
    {
        "type": "identify",
        "userId": "cus-1",
        "anonymousId": "a-1",
        "traits": {
            "name": "Jo Smith",
            "email": "jo.smith@example.com",
            "phone": "+447911123456",
            "company": "Acme",
        },
    },
    {"type": "identify", "userId": "cus-10", "traits": {"name": "Sam Smithers"}},
]


def _search(live: LiveTessera, token: str | None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(
        f"{live.url}/api/v1/profiles/search", headers=headers, params=params, timeout=30
    )


def _tokens(live: LiveTessera) -> tuple[str, str]:
    with live.engine.begin() as conn:
        admin, _ = create_token(conn, name="admin", role="admin")
        analyst, _ = create_token(conn, name="analyst", role="analyst")
    return admin, analyst


def _send(live: LiveTessera) -> None:
    response = post(live, "/v1/batch", {"batch": PEOPLE})
    assert response.status_code == 200, response.text
    wait_until_caught_up(live.engine)


def test_search_finds_people_as_the_processor_indexed_them(live: LiveTessera) -> None:
    admin, _ = _tokens(live)
    _send(live)
    for _ in range(2):  # the second request comes with a token the lean lookup path holds
        response = _search(live, admin, q="smi")
        assert response.status_code == 200, response.text
        names = [item["name"] for item in response.json()["items"]]
        assert names == ["Sam Smithers", "Jo Smith"]
    (jo,) = _search(live, admin, q="+44 7911").json()["items"]
    assert jo["email"] == "jo.smith@example.com" and jo["phone"] == "+447911123456"
    assert jo["company"] == "Acme" and jo["id"].startswith("prf_")
    first = _search(live, admin, q="cus-1", limit=1).json()
    assert [item["name"] for item in first["items"]] == ["Jo Smith"]  # the exact id first
    rest = _search(live, admin, q="cus-1", limit=1, cursor=first["next_cursor"]).json()
    assert [item["name"] for item in rest["items"]] == ["Sam Smithers"]
    assert rest["next_cursor"] is None
    assert _search(live, admin, q='"*NEAR(').json() == {"items": [], "next_cursor": None}


def test_analysts_match_identifiers_only_and_see_personal_data_masked(live: LiveTessera) -> None:
    admin, analyst = _tokens(live)
    _send(live)
    response = _search(live, analyst, q="cus-1")
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [item["company"] for item in items] == ["Acme", None]
    jo = items[0]
    assert (jo["name"], jo["email"], jo["phone"]) == ("J***", "j***@***", "+***")
    # Personal data finds nothing: a search would tell who is a customer.
    for typed in ("jo smith", "jo.smith@example.com", "+447911123456"):
        assert _search(live, analyst, q=typed).json()["items"] == [], typed
    assert _search(live, admin, q="jo smith").json()["items"][0]["id"] == jo["id"]


def test_bad_requests_are_refused_with_a_reason(live: LiveTessera) -> None:
    admin, _ = _tokens(live)
    assert _search(live, None, q="jo").status_code == 401
    missing = _search(live, admin)
    assert missing.status_code == 422 and "q" in str(missing.json()["problems"])
    bad = _search(live, admin, q="jo", cursor="not-a-cursor")
    assert bad.status_code == 400 and "cursor" in bad.json()["message"]
    assert _search(live, admin, q="jo", limit=1000).status_code == 422
    assert _search(live, admin, q="x" * 201).status_code == 422
