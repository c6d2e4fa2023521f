"""The audience and computed-trait pages through a live server, on both backends: lists and
their empty states, saving through the builder's form with the same audited services as the
API, the live preview against the API's, validation errors with their JSON path, members,
exports, and who may do what."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tessera.audiences.service import list_audiences
from tessera.audit.models import audit_log
from tessera.auth.tokens import create_token
from tessera.processor import wait_until_caught_up
from tests.conftest import LiveTessera
from tests.ingest.helpers import post
from tests.web.helpers import csrf_of, signed_in

PEOPLE = [
    {"type": "identify", "userId": "u1",
     "traits": {"email": "ada@example.com", "first_name": "Ada", "plan": "pro"}},
    {"type": "identify", "userId": "u2", "traits": {"email": "bo@example.com", "plan": "free"}},
    {"type": "identify", "userId": "u3", "traits": {"email": "cy@example.com", "plan": "pro"}},
    *(
        {"type": "track", "userId": user, "event": "Order Completed",
         "properties": {"total": total, "currency": "EUR"}}
        for user, total in (("u1", 40), ("u1", 80), ("u2", 500), ("u3", 5))
    ),
]  # fmt: skip
PRO_BUYERS = {
    "and": [
        {"trait": "plan", "op": "eq", "value": "pro"},
        {"event": "Order Completed", "count": {"op": "gte", "value": 2}},
    ]
}


@pytest.fixture
def shop(live: LiveTessera) -> LiveTessera:
    """Three people, two on the pro plan, and their orders, all processed."""
    response = post(live, "/v1/batch", {"batch": PEOPLE})
    assert response.status_code == 200, response.text
    wait_until_caught_up(live.engine)
    return live


@pytest.fixture
def admin(live: LiveTessera) -> Iterator[httpx.Client]:
    with closing(signed_in(live.url, live.engine, "admin")) as client:
        yield client


def api(live: LiveTessera, role: str = "admin") -> httpx.Client:
    with live.engine.begin() as conn:
        token, _ = create_token(conn, name=f"pages-{role}", role=role)
    return httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def actions(live: LiveTessera) -> list[str]:
    with live.engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.action).order_by(audit_log.c.id)).scalars())


def save(client: httpx.Client, path: str, **fields: Any) -> httpx.Response:
    """Post the builder's form as the browser does, with the page's CSRF token."""
    form_page = client.get("/audiences/new")
    data = {"csrf_token": csrf_of(form_page.text), "name": "", "description": "", **fields}
    if not isinstance(data.get("definition", ""), str):
        data["definition"] = json.dumps(data["definition"])
    return client.post(path, data=data)


def preview(client: httpx.Client, definition: Any) -> dict[str, Any]:
    token = csrf_of(client.get("/audiences/new").text)
    response = client.post(
        "/audiences/preview",
        json={"definition": definition},
        headers={"X-CSRF-Token": token, "Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def builder_data(page: str) -> dict[str, Any]:
    found = re.search(r'id="audience-builder-data">(.*?)</script>', page, re.S)
    assert found, "the builder page carries its data"
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def wait_ready(live: LiveTessera) -> None:
    import time

    deadline = time.monotonic() + 30
    while True:
        with live.engine.connect() as conn:
            if all(a["status"] == "ready" for a in list_audiences(conn)):
                return
        assert time.monotonic() < deadline, "the audiences were not built"
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------


def test_an_empty_list_says_what_to_do(live: LiveTessera, admin: httpx.Client) -> None:
    page = admin.get("/audiences")
    assert page.status_code == 200
    assert "No audiences yet" in page.text and 'href="/audiences/new"' in page.text
    traits = admin.get("/computed-traits")
    assert "No computed traits yet" in traits.text and 'href="/computed-traits/new"' in traits.text
    with closing(signed_in(live.url, live.engine, "analyst")) as analyst:
        page = analyst.get("/audiences")
        assert "No audiences yet" in page.text and "/audiences/new" not in page.text
        assert analyst.get("/audiences/new").status_code == 403


def test_the_preview_is_the_apis_and_names_the_bad_condition(
    shop: LiveTessera, admin: httpx.Client
) -> None:
    found = preview(admin, PRO_BUYERS)
    with closing(api(shop)) as client:
        expected = client.post("/api/v1/audiences/preview", json={"definition": PRO_BUYERS}).json()
    assert found["ok"] is True
    assert (found["size"], found["exact"]) == (expected["size"], expected["exact"]) == (1, True)
    assert [person["id"] for person in found["sample"]] == expected["sample"]
    # The sample shows who they are, for a role that may see it.
    assert found["sample"][0]["name"] == "Ada" and found["sample"][0]["email"] == "ada@example.com"

    broken = {"and": [PRO_BUYERS["and"][0], {"trait": "plan", "op": "equals", "value": "x"}]}
    refused = preview(admin, broken)
    assert refused["ok"] is False
    assert refused["error"]["path"] == "$.and[1].op"
    assert refused["error"]["message"].startswith("Unknown operator 'equals'")
    # Without the session's CSRF token the preview is refused, as every other post.
    bare = admin.post("/audiences/preview", json={"definition": PRO_BUYERS})
    assert bare.status_code == 403


def test_analysts_see_the_preview_masked(shop: LiveTessera) -> None:
    with closing(signed_in(shop.url, shop.engine, "analyst")) as analyst:
        found = preview(analyst, PRO_BUYERS)
    person = found["sample"][0]
    assert person["email"] == "a***@***" and person["name"] == "A***"


def test_save_an_audience_from_the_builder(shop: LiveTessera, admin: httpx.Client) -> None:
    created = save(admin, "/audiences", name="Pro buyers", description="Pros who order",
                   definition=PRO_BUYERS)  # fmt: skip
    assert created.status_code == 303, created.text
    location = created.headers["location"]
    audience_id = location.rsplit("/", 1)[-1]
    assert audience_id.startswith("aud_")
    assert actions(shop)[-1] == "audience.create"
    wait_ready(shop)

    listed = admin.get("/audiences").text
    assert "Pro buyers" in listed and f'href="/audiences/{audience_id}"' in listed
    detail = admin.get(location).text
    assert "Pros who order" in detail
    # The definition in words, and its one member linking to their profile.
    assert "plan is “pro”" in html.unescape(detail)
    assert "performed Order Completed at least 2 times" in html.unescape(detail)
    with shop.engine.connect() as conn:
        member = conn.execute(sa.text("SELECT profile_id FROM audience_members")).scalar_one()
    assert f'href="/people/{member}"' in detail and "ada@example.com" in detail

    # While a page polls, htmx asks for one block of it: only that block comes back.
    for target in ("audience-status", "audience-members", "audience-exports"):
        part = admin.get(location, headers={"HX-Request": "true", "HX-Target": target})
        assert part.status_code == 200 and f'id="{target}"' in part.text
        assert "<html" not in part.text
    table = admin.get("/audiences", headers={"HX-Request": "true", "HX-Target": "audience-table"})
    assert 'id="audience-table"' in table.text and "<html" not in table.text

    # The builder opens on the stored definition, exactly as the API stores it.
    edit = admin.get(f"/audiences/{audience_id}/edit")
    assert builder_data(edit.text)["definition"] == PRO_BUYERS
    with closing(api(shop)) as client:
        assert client.get(f"/api/v1/audiences/{audience_id}").json()["definition"] == PRO_BUYERS

    changed = save(admin, f"/audiences/{audience_id}", name="Pro buyers",
                   description="Pros who order", definition={"trait": "plan", "op": "eq",
                                                             "value": "pro"})  # fmt: skip
    assert changed.status_code == 303
    assert actions(shop)[-1] == "audience.update"
    # Nothing changed: nothing is audited.
    save(admin, f"/audiences/{audience_id}", name="Pro buyers", description="Pros who order",
         definition={"trait": "plan", "op": "eq", "value": "pro"})  # fmt: skip
    assert actions(shop)[-1] == "audience.update" and actions(shop).count("audience.update") == 1


def test_a_refused_save_shows_the_error_where_it_belongs(
    shop: LiveTessera, admin: httpx.Client
) -> None:
    bad = {
        "and": [
            {"trait": "plan", "op": "eq", "value": "pro"},
            {"computed": "nope", "op": "gt", "value": 1},
        ]
    }
    refused = save(admin, "/audiences", name="Broken", definition=bad)
    assert refused.status_code == 422
    data = builder_data(refused.text)
    assert data["error"]["path"] == "$.and[1].computed"
    assert "Unknown computed trait 'nope'" in data["error"]["message"]
    assert data["definition"] == bad  # the person's work is kept
    assert 'value="Broken"' in refused.text

    not_json = save(admin, "/audiences", name="Broken", definition='{"trait": "plan",')
    assert not_json.status_code == 422
    assert builder_data(not_json.text)["error"]["path"] == "json"
    assert "The JSON is not valid" in not_json.text
    assert "{&#34;trait&#34;: &#34;plan&#34;," in not_json.text  # the text as typed

    nameless = save(admin, "/audiences", name=" ", definition=PRO_BUYERS)
    assert nameless.status_code == 422 and 'id="error-name"' in nameless.text
    assert save(admin, "/audiences", name="Twice", definition=PRO_BUYERS).status_code == 303
    clash = save(admin, "/audiences", name="Twice", definition=PRO_BUYERS)
    assert clash.status_code == 422 and 'id="error-name"' in clash.text
    assert "exists" in clash.text
    assert "audience.create" in actions(shop) and actions(shop).count("audience.create") == 1


def test_members_page_by_page_and_masked_for_analysts(
    shop: LiveTessera, admin: httpx.Client
) -> None:
    created = save(admin, "/audiences", name="Everyone who ordered",
                   definition={"event": "Order Completed", "performed": True})  # fmt: skip
    location = created.headers["location"]
    wait_ready(shop)
    detail = admin.get(location).text
    assert detail.count('href="/people/prf_') == 3
    with closing(signed_in(shop.url, shop.engine, "analyst")) as analyst:
        masked = analyst.get(location).text
    assert "ada@example.com" not in masked and "a***@***" in masked
    assert "Export members" not in masked  # analysts may not export
    # The next page starts after the last member shown; past the end there is no next.
    with shop.engine.connect() as conn:
        ids = sorted(conn.execute(sa.text("SELECT profile_id FROM audience_members")).scalars())
    rest = admin.get(location, params={"members_after": ids[0]}).text
    assert ids[0] not in rest.split("Members", 1)[1] and ids[1] in rest
    assert admin.get(location, params={"members_after": "junk"}).status_code == 400


def test_export_and_delete_are_audited(shop: LiveTessera, admin: httpx.Client) -> None:
    created = save(admin, "/audiences", name="Buyers",
                   definition={"event": "Order Completed", "performed": True})  # fmt: skip
    location = created.headers["location"]
    audience_id = location.rsplit("/", 1)[-1]
    token = csrf_of(admin.get(location).text)
    queued = admin.post(f"{location}/exports", data={"csrf_token": token, "format": "csv"})
    assert queued.status_code == 303
    assert actions(shop)[-1] == "export.create"
    assert "CSV" in admin.get(location).text
    wrong = admin.post(f"{location}/exports", data={"csrf_token": token, "format": "xls"})
    assert wrong.status_code == 303 and actions(shop)[-1] == "export.create"

    # Another audience refers to it: deleting it is refused with the reason, in words.
    admin_api = api(shop)
    with closing(admin_api):
        admin_api.post(
            "/api/v1/audiences", json={"name": "Refers", "definition": {"audience": audience_id}}
        )
        refused = admin.post(f"{location}/delete", data={"csrf_token": token})
        assert refused.status_code == 303 and refused.headers["location"] == location
        assert "refer to" in admin.get(location).text
        refers = admin_api.get("/api/v1/audiences").json()
        other = next(a["id"] for a in refers if a["name"] == "Refers")
        assert (
            admin.post(f"/audiences/{other}/delete", data={"csrf_token": token}).status_code == 303
        )
    deleted = admin.post(f"{location}/delete", data={"csrf_token": token})
    assert deleted.status_code == 303 and deleted.headers["location"] == "/audiences"
    assert admin.get(location).status_code == 404
    assert actions(shop)[-1] == "audience.delete"


def test_marketers_write_and_others_read(shop: LiveTessera) -> None:
    with closing(signed_in(shop.url, shop.engine, "marketer")) as marketer:
        made = save(marketer, "/audiences", name="By a marketer", definition=PRO_BUYERS)
        assert made.status_code == 303
        location = made.headers["location"]
    with closing(signed_in(shop.url, shop.engine, "support")) as support:
        page = support.get(location)
        assert page.status_code == 200 and "By a marketer" in page.text
        assert f'href="{location}/edit"' not in page.text
        assert support.get(f"{location}/edit").status_code == 403
        token = csrf_of(page.text)
        refused = support.post(f"{location}/delete", data={"csrf_token": token})
        assert refused.status_code == 403


def test_the_pickers_offer_what_tessera_has_seen(shop: LiveTessera, admin: httpx.Client) -> None:
    with closing(api(shop)) as client:
        client.post(
            "/api/v1/computed-traits",
            json={"name": "spend", "kind": "sum", "event": {"name": "Order Completed"},
                  "property": "total"},
        )  # fmt: skip
    data = builder_data(admin.get("/audiences/new").text)
    catalogue = data["catalogue"]
    assert [event["name"] for event in catalogue["events"]] == ["Order Completed"]
    traits = {trait["name"]: trait["type"] for trait in catalogue["traits"]}
    assert traits["plan"] == "string" and traits["email"] == "string"
    assert catalogue["computed"] == [{"name": "spend", "kind": "sum"}]
    assert "marketing" in catalogue["consent"]
    found = admin.get("/audiences/catalogue/properties", params={"event": "Order Completed"}).json()
    assert {p["name"]: p["type"] for p in found["properties"]} == {
        "total": "integer",
        "currency": "string",
    }
    unseen = admin.get("/audiences/catalogue/properties", params={"event": "Nope"}).json()
    assert unseen["properties"] == []


# ---------------------------------------------------------------------------------------------
# computed traits


def trait_form(client: httpx.Client, path: str, **fields: str) -> httpx.Response:
    token = csrf_of(client.get("/computed-traits/new").text)
    blank = {"name": "", "kind": "count", "event_type": "", "event_name": "", "property": "",
             "window_unit": "", "window_amount": "30", "limit": "10", "where": ""}  # fmt: skip
    return client.post(path, data={**blank, **fields, "csrf_token": token})


def test_define_change_and_delete_a_computed_trait(shop: LiveTessera, admin: httpx.Client) -> None:
    where = {"property": "total", "op": "gt", "value": 30}
    made = trait_form(admin, "/computed-traits", name="big_orders", kind="count",
                      event_name="Order Completed", where=json.dumps(where),
                      window_unit="days", window_amount="30")  # fmt: skip
    assert made.status_code == 303, made.text
    assert made.headers["location"] == "/computed-traits/big_orders"
    assert actions(shop)[-1] == "computed_trait.create"
    with closing(api(shop)) as client:
        stored = client.get("/api/v1/computed-traits/big_orders").json()["definition"]
    assert stored == {
        "name": "big_orders",
        "kind": "count",
        "event": {"name": "Order Completed", "type": "track", "where": where},
        "window": {"days": 30},
    }
    listed = html.unescape(admin.get("/computed-traits").text)
    assert "Number of Order Completed events where total is more than 30, in the last 30 days" in (
        listed
    )
    page = admin.get("/computed-traits/big_orders").text
    part = admin.get(
        "/computed-traits/big_orders", headers={"HX-Request": "true", "HX-Target": "trait-status"}
    )
    assert 'id="trait-status"' in part.text and "<html" not in part.text
    rows = admin.get("/computed-traits", headers={"HX-Request": "true", "HX-Target": "trait-table"})
    assert 'id="trait-table"' in rows.text and "big_orders" in rows.text
    assert 'value="Order Completed"' in page
    assert json.loads(re.search(r'id="computed-trait-data">(.*?)</script>', page, re.S)
                      .group(1))["where"] == where  # fmt: skip

    changed = trait_form(admin, "/computed-traits/big_orders", kind="sum", property="total",
                         event_name="Order Completed")  # fmt: skip
    assert changed.status_code == 303
    assert actions(shop)[-1] == "computed_trait.update"
    deleted = trait_form(admin, "/computed-traits/big_orders/delete")
    assert deleted.status_code == 303 and deleted.headers["location"] == "/computed-traits"
    assert admin.get("/computed-traits/big_orders").status_code == 404
    assert actions(shop)[-1] == "computed_trait.delete"


def test_a_refused_computed_trait_names_its_field(shop: LiveTessera, admin: httpx.Client) -> None:
    bad_name = trait_form(admin, "/computed-traits", name="Big Orders", kind="count")
    assert bad_name.status_code == 422 and 'id="error-name"' in bad_name.text
    no_property = trait_form(admin, "/computed-traits", name="spend", kind="sum")
    assert no_property.status_code == 422 and 'id="error-property"' in no_property.text
    bad_window = trait_form(admin, "/computed-traits", name="spend", kind="count",
                            window_unit="days", window_amount="0")  # fmt: skip
    assert bad_window.status_code == 422 and 'id="error-window"' in bad_window.text
    bad_filter = trait_form(admin, "/computed-traits", name="spend", kind="count",
                            where=json.dumps({"property": "total", "op": "bigger",
                                              "value": 1}))  # fmt: skip
    assert bad_filter.status_code == 422
    data = json.loads(re.search(r'id="computed-trait-data">(.*?)</script>', bad_filter.text,
                                re.S).group(1))  # fmt: skip
    assert data["error"]["path"] == "$.op"  # inside the filter, for the filter editor
    assert "computed_trait.create" not in actions(shop)

    # In use by an audience, it cannot be deleted; the page says why.
    assert trait_form(admin, "/computed-traits", name="spend", kind="sum",
                      property="total").status_code == 303  # fmt: skip
    save(admin, "/audiences", name="Spenders",
         definition={"computed": "spend", "op": "gte", "value": 100})  # fmt: skip
    refused = trait_form(admin, "/computed-traits/spend/delete")
    assert refused.status_code == 303 and refused.headers["location"] == "/computed-traits/spend"
    page = admin.get("/computed-traits/spend").text
    assert "Spenders" in page and "cannot be deleted" in page


def test_the_list_finds_orders_and_pages(shop: LiveTessera, admin: httpx.Client) -> None:
    with closing(api(shop)) as client:
        for name, definition in (
            ("Zed pros", {"trait": "plan", "op": "eq", "value": "pro"}),
            ("Alpha buyers", {"event": "Order Completed", "performed": True}),
            ("Middle nobody", {"trait": "plan", "op": "eq", "value": "none"}),
        ):
            client.post("/api/v1/audiences", json={"name": name, "definition": definition})
    wait_ready(shop)

    def names(**params: str) -> list[str]:
        page = admin.get("/audiences", params=params).text
        return re.findall(r'class="strong-link" href="/audiences/aud_\w+">([^<]+)</a>', page)

    assert names() == ["Middle nobody", "Alpha buyers", "Zed pros"]  # newest first
    assert names(sort="name") == ["Alpha buyers", "Middle nobody", "Zed pros"]
    assert names(sort="size") == ["Alpha buyers", "Zed pros", "Middle nobody"]
    assert names(q="PRO") == ["Zed pros"]
    assert names(status="building") == []
    nothing = admin.get("/audiences", params={"q": "no such"}).text
    assert "No audience matches" in nothing and "Clear the filters" in nothing
    # Saving the current filters as a view offers it on the page.
    assert 'action="/saved-views"' in admin.get("/audiences", params={"sort": "name"}).text
