"""The Schema pages and the Home dashboard, on what the processor catalogued from events
sent through the tracking API."""

from __future__ import annotations

from contextlib import closing

from tessera.processor import wait_until_caught_up
from tests.conftest import LiveTessera
from tests.ingest.helpers import post
from tests.web.helpers import signed_in

BATCH = {
    "batch": [
        {"type": "identify", "userId": "u1", "traits": {"email": "jo@example.com", "plan": "pro"}},
        {
            "type": "track",
            "userId": "u1",
            "event": "Order Completed",
            "properties": {"total": 42.5, "items": 2, "shipping": {"city": "Lyon"}},
        },
        {"type": "page", "anonymousId": "a1", "name": "Home"},
    ]
}


def _load(live: LiveTessera) -> None:
    assert post(live, "/v1/batch", BATCH).status_code == 200
    wait_until_caught_up(live.engine)


def test_the_schema_lists_what_arrived(live: LiveTessera) -> None:
    _load(live)
    with closing(signed_in(live.url, live.engine, "analyst")) as client:
        events = client.get("/schema")
        assert events.status_code == 200
        assert "Order Completed" in events.text and "Page calls" in events.text
        found = client.get("/schema", params={"q": "order"}).text
        assert "Order Completed" in found and "Page calls" not in found
        assert "No event matches" in client.get("/schema", params={"q": "zzz"}).text
        event = client.get("/schema/events/track", params={"name": "Order Completed"})
        assert event.status_code == 200
        for path in ("total", "items", "shipping.city"):
            assert f'<td class="mono">{path}</td>' in event.text
        assert "number" in event.text and "integer" in event.text
        missing = client.get("/schema/events/track", params={"name": "Never Sent"})
        assert missing.status_code == 404 and "no track event" in missing.text.lower()
        bad = client.get("/schema/events/nonsense")
        assert bad.status_code == 400
        traits = client.get("/schema/traits").text
        assert '<td class="mono">email</td>' in traits and '<td class="mono">plan</td>' in traits
        assert client.get("/schema", params={"after": "not-a-cursor"}).status_code == 200


def test_home_shows_the_day(live: LiveTessera) -> None:
    with closing(signed_in(live.url, live.engine, "marketer")) as client:
        empty = client.get("/").text
        assert "No events in the last 24 hours" in empty and "Set up a source" in empty
        _load(live)
        home = client.get("/").text
        assert "Events, last 24 hours" in home and ">3<" in home
        assert "events-chart" in home and "No audiences yet" in home
        assert "Delivery health" in home
    with closing(signed_in(live.url, live.engine, "sales")) as sales:
        # Delivery health needs destinations:read, which sales does not have.
        assert "Delivery health" not in sales.get("/").text
