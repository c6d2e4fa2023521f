"""Dedupe on messageId per source, and Segment's clock-skew correction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tessera.ingest.sources import create_source
from tests.conftest import LiveTessera
from tests.ingest.helpers import post, stored


def test_duplicate_message_is_acknowledged_and_stored_once(live: LiveTessera) -> None:
    message = {"userId": "u", "event": "E", "messageId": "dup-1"}
    assert post(live, "/v1/track", message).status_code == 200
    assert post(live, "/v1/track", {**message, "event": "Changed"}).status_code == 200
    batch = {
        "batch": [
            {**message, "type": "track"},
            {**message, "type": "track"},
            {"type": "track", "userId": "u", "event": "New", "messageId": "dup-2"},
        ]
    }
    assert post(live, "/v1/batch", batch).status_code == 200
    rows = stored(live)
    assert [(r["message_id"], r["name"]) for r in rows] == [("dup-1", "E"), ("dup-2", "New")]


def test_dedupe_is_per_source(live: LiveTessera) -> None:
    with live.engine.begin() as conn:
        other = create_source(conn, name="other")
    message = {"userId": "u", "event": "E", "messageId": "same"}
    assert post(live, "/v1/track", message).status_code == 200
    assert post(live, "/v1/track", message, auth=(other.write_key, "")).status_code == 200
    assert sorted(r["source_id"] for r in stored(live)) == sorted([live.source.id, other.id])


def test_duplicate_holds_after_seven_days(live: LiveTessera) -> None:
    old = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    message = {"userId": "u", "event": "E", "messageId": "old", "timestamp": old}
    assert post(live, "/v1/track", message).status_code == 200
    assert post(live, "/v1/track", message).status_code == 200
    assert len(stored(live)) == 1


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_timestamp_is_corrected_for_client_clock_skew(live: LiveTessera) -> None:
    # The client's clock runs two hours fast: it stamped the event 5 s before sending it.
    client_now = datetime.now(UTC) + timedelta(hours=2)
    original = client_now - timedelta(seconds=5)
    message = {"userId": "u", "event": "E", "timestamp": _iso(original), "sentAt": _iso(client_now)}
    assert post(live, "/v1/track", message).status_code == 200
    [row] = stored(live)
    expected = row["received_at"] - timedelta(seconds=5)
    assert abs(row["timestamp"] - expected) < timedelta(milliseconds=2)
    assert row["original_timestamp"] == original.replace(
        microsecond=original.microsecond // 1000 * 1000
    ) or abs(row["original_timestamp"] - original) < timedelta(milliseconds=1)
    assert abs(row["sent_at"] - client_now) < timedelta(milliseconds=1)
    payload = row["payload"]
    assert payload["originalTimestamp"] == original.isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )
    assert datetime.fromisoformat(payload["timestamp"]) == row["timestamp"].replace(
        microsecond=row["timestamp"].microsecond // 1000 * 1000
    )


def test_batch_sent_at_applies_to_items(live: LiveTessera) -> None:
    client_now = datetime.now(UTC) - timedelta(days=1)  # a clock a day slow
    body = {
        "sentAt": _iso(client_now),
        "batch": [
            {
                "type": "track",
                "userId": "u",
                "event": "A",
                "timestamp": _iso(client_now - timedelta(minutes=10)),
            },
            {
                "type": "track",
                "userId": "u",
                "event": "B",
                "timestamp": _iso(client_now - timedelta(minutes=1)),
                "sentAt": _iso(client_now - timedelta(seconds=30)),
            },
        ],
    }
    assert post(live, "/v1/batch", body).status_code == 200
    first, second = stored(live)
    assert abs(first["timestamp"] - (first["received_at"] - timedelta(minutes=10))) < timedelta(
        milliseconds=2
    )
    # An item's own sentAt wins over the batch's.
    assert abs(second["timestamp"] - (second["received_at"] - timedelta(seconds=30))) < timedelta(
        milliseconds=2
    )


def test_without_sent_at_the_client_timestamp_is_kept(live: LiveTessera) -> None:
    historical = datetime(2019, 5, 1, 12, 0, tzinfo=UTC)
    assert (
        post(
            live, "/v1/track", {"userId": "u", "event": "Import", "timestamp": _iso(historical)}
        ).status_code
        == 200
    )
    [row] = stored(live)
    assert row["timestamp"] == historical
    assert row["sent_at"] is None


def test_without_any_client_time_timestamp_is_received_at(live: LiveTessera) -> None:
    assert post(live, "/v1/track", {"userId": "u", "event": "E"}).status_code == 200
    [row] = stored(live)
    assert row["timestamp"] == row["received_at"]
    assert row["original_timestamp"] is None


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-11-22T10:00:00+05:30",
        "2026-11-22T04:30:00Z",
        "2026-11-22T04:30:00.000000+00:00",
        "2026-11-22T04:30:00",
    ],
)
def test_timezones_are_normalised_to_utc(live: LiveTessera, stamp: str) -> None:
    assert (
        post(live, "/v1/track", {"userId": "u", "event": "E", "timestamp": stamp}).status_code
        == 200
    )
    [row] = stored(live)
    assert row["timestamp"] == datetime(2026, 11, 22, 4, 30, tzinfo=UTC)


def test_absurd_skew_is_not_rejected(live: LiveTessera) -> None:
    message = {
        "userId": "u",
        "event": "E",
        "timestamp": "0001-01-01T00:00:00Z",
        "sentAt": "9999-12-31T23:59:59Z",
    }
    response = httpx.post(f"{live.url}/v1/track", auth=(live.write_key, ""), json=message)
    assert response.status_code == 200
    [row] = stored(live)
    assert row["timestamp"].year == 1
