"""The People list: search by a piece of an email, browse, columns, an audience's members,
and masking for analysts, through a live server."""

from __future__ import annotations

from contextlib import closing

from tessera.processor import wait_until_caught_up
from tests.conftest import LiveTessera
from tests.ingest.helpers import post
from tests.web.helpers import signed_in

PEOPLE = {
    "batch": [
        {
            "type": "identify",
            "userId": "u1",
            "traits": {"email": "jo.smith@example.com", "first_name": "Jo", "last_name": "Smith"},
        },
        {
            "type": "identify",
            "userId": "u2",
            "traits": {"email": "ann.lee@example.org", "first_name": "Ann", "last_name": "Lee"},
        },
        {"type": "page", "anonymousId": "visitor-1", "name": "Home"},
    ]
}


def _load(live: LiveTessera) -> None:
    assert post(live, "/v1/batch", PEOPLE).status_code == 200
    wait_until_caught_up(live.engine)


def test_find_and_browse_people(live: LiveTessera) -> None:
    with closing(signed_in(live.url, live.engine, "marketer")) as client:
        assert "No people yet" in client.get("/people").text
        _load(live)
        everyone = client.get("/people").text
        assert "Jo Smith" in everyone and "Ann Lee" in everyone
        assert "Anonymous visitor" not in everyone  # newest known people only
        recent = client.get("/people", params={"sort": "recent"}).text
        assert "Anonymous visitor" in recent and "Jo Smith" in recent
        found = client.get("/people", params={"q": "smi"}).text
        assert "Jo Smith" in found and "Ann Lee" not in found
        by_email = client.get("/people", params={"q": "ann.lee@"}).text
        assert "Ann Lee" in by_email and "Jo Smith" not in by_email
        nobody = client.get("/people", params={"q": "zzzz"}).text
        assert "Nobody matches" in nobody
        phone_column = client.get("/people", params=[("cols", "phone"), ("cols", "events")])
        assert ">Phone</th>" in phone_column.text and ">Email</th>" not in phone_column.text
        broken = client.get("/people", params={"sort": "recent", "after": "not|a|cursor"})
        assert broken.status_code == 200 and "page link is broken" in broken.text
        gone = client.get("/people", params={"audience": "aud_nope"})
        assert gone.status_code == 200 and "no longer exists" in gone.text


def test_analysts_see_people_masked(live: LiveTessera) -> None:
    _load(live)
    with closing(signed_in(live.url, live.engine, "analyst")) as client:
        page = client.get("/people").text
        assert "jo.smith@example.com" not in page and "Smith" not in page
        assert "masked for your role" in page
        # Personal data is not searchable for a role that may not read it.
        assert "Nobody matches" in client.get("/people", params={"q": "smi"}).text
        assert "/people/prf_" in client.get("/people", params={"q": "u1"}).text
