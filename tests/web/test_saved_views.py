"""Saved views: a list's filters kept by name, one's own or shared, never the page cursor."""

from __future__ import annotations

import re
from contextlib import closing

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from tessera.auth.users import create_user
from tessera.errors import BadRequest, NotFound
from tessera.web import saved_views
from tests.conftest import LiveTessera
from tests.web.helpers import csrf_of, signed_in


def _user(engine: Engine, email: str) -> int:
    with engine.begin() as conn:
        return create_user(conn, email=email, password="a long enough password", role="admin").id


def test_views_are_ones_own_unless_shared(engine: Engine) -> None:
    ann, bob = _user(engine, "ann@example.com"), _user(engine, "bob@example.com")
    with engine.begin() as conn:
        saved_views.save_view(
            conn,
            page="/people",
            user_id=ann,
            name="  Paris  VIPs ",
            query="city=Paris&cursor=abc&tier=vip",
            shared=False,
        )
        saved_views.save_view(
            conn,
            page="/people",
            user_id=ann,
            name="Everyone new",
            query="sort=-created",
            shared=True,
        )
        mine = saved_views.list_views(conn, page="/people", user_id=ann)
        theirs = saved_views.list_views(conn, page="/people", user_id=bob)
        assert [(v["name"], v["query"], v["mine"]) for v in mine] == [
            ("Everyone new", "sort=-created", True),
            ("Paris VIPs", "city=Paris&tier=vip", True),
        ]
        assert [(v["name"], v["mine"]) for v in theirs] == [("Everyone new", False)]
        # The same name replaces the view; another person cannot delete it.
        saved_views.save_view(
            conn, page="/people", user_id=ann, name="Paris VIPs", query="city=Paris", shared=False
        )
        assert [
            v["query"]
            for v in saved_views.list_views(conn, page="/people", user_id=ann)
            if v["name"] == "Paris VIPs"
        ] == ["city=Paris"]
        shared_id = int(theirs[0]["id"])
        with pytest.raises(NotFound):
            saved_views.delete_view(conn, view_id=shared_id, user_id=bob)
        assert saved_views.delete_view(conn, view_id=shared_id, user_id=ann) == "/people"
        with pytest.raises(BadRequest, match="name"):
            saved_views.save_view(
                conn, page="/people", user_id=ann, name="   ", query="", shared=False
            )


@given(st.text(max_size=200))
def test_a_cleaned_query_never_keeps_the_page_position(query: str) -> None:
    cleaned = saved_views.clean_query(query)
    assert "cursor=" not in cleaned.split("&")[0] or not cleaned.startswith("cursor=")
    assert not any(
        part.startswith(("cursor=", "after=", "csrf_token=")) for part in cleaned.split("&")
    )
    assert saved_views.clean_query(cleaned) == cleaned


def test_saving_a_view_from_a_list_page(live: LiveTessera) -> None:
    with closing(signed_in(live.url, live.engine, "admin")) as admin:
        page = admin.get("/settings/audit", params={"action": "auth.login"})
        assert "Save this view" in page.text
        saved = admin.post(
            "/saved-views",
            data={
                "page": "/settings/audit",
                "query": "action=auth.login",
                "name": "Sign-ins",
                "csrf_token": csrf_of(page.text),
            },
        )
        assert saved.status_code == 303
        assert saved.headers["location"] == "/settings/audit?action=auth.login"
        listed = admin.get("/settings/audit").text
        assert re.search(r'href="/settings/audit\?action=auth.login">Sign-ins</a>', listed)
        view_id = re.search(r"/saved-views/(\d+)/delete", listed)
        assert view_id
        admin.post(f"/saved-views/{view_id.group(1)}/delete", data={"csrf_token": csrf_of(listed)})
        assert "Sign-ins</a>" not in admin.get("/settings/audit").text
        unnamed = admin.post(
            "/saved-views",
            data={
                "page": "/settings/audit",
                "query": "action=x",
                "name": "",
                "csrf_token": csrf_of(listed),
            },
        )
        assert unnamed.status_code == 303
        assert "Give the view a name" in admin.get(unnamed.headers["location"]).text
