"""Property-based tests: no body, however odd, gets a 5xx or crashes the normaliser."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.ingest.messages import (
    MESSAGE_TYPES,
    MessageError,
    corrected_timestamp,
    iso_utc,
    normalise_message,
)
from tests.conftest import LiveTessera
from tests.ingest.helpers import stored

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(
        ["", "u1", "2026-11-22T10:00:00Z", "not-a-date", "\x00", "0001-01-01T00:00:00+14:00"]
    ),
)
MESSAGE_KEYS = [
    "type",
    "userId",
    "anonymousId",
    "event",
    "name",
    "groupId",
    "previousId",
    "messageId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "properties",
    "traits",
    "context",
    "integrations",
]
messages = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(MESSAGE_KEYS), field_values, max_size=10),
    st.fixed_dictionaries(
        {"type": st.sampled_from(MESSAGE_TYPES), "userId": st.text(max_size=20)},
        optional={key: field_values for key in MESSAGE_KEYS[2:]},
    ),
)


@given(message=messages)
@settings(max_examples=400, deadline=None)
def test_normaliser_accepts_or_names_the_problem(message: Any) -> None:
    received = datetime.now(UTC)
    try:
        row = normalise_message(message, source_id=1, received_at=received)
    except MessageError as exc:
        assert exc.reason
        return
    assert row["type"] in MESSAGE_TYPES
    assert row["user_id"] or row["anonymous_id"]
    assert row["timestamp"].tzinfo is not None
    payload = orjson.loads(row["payload"])
    assert payload["messageId"] == row["message_id"]
    # The payload's times are the columns' (the normaliser formats some only once).
    assert payload["receivedAt"] == iso_utc(received)
    assert payload["timestamp"] == iso_utc(row["timestamp"])
    assert payload["sentAt"] == iso_utc(row["sent_at"])
    assert payload["originalTimestamp"] == iso_utc(row["original_timestamp"])


@given(
    received=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    original=st.datetimes(timezones=st.just(UTC)),
    skew=st.timedeltas(min_value=timedelta(days=-3650), max_value=timedelta(days=3650)),
)
def test_correction_preserves_the_client_side_delay(
    received: datetime, original: datetime, skew: timedelta
) -> None:
    try:
        sent = original + skew
    except OverflowError:
        return
    corrected = corrected_timestamp(received, sent, original)
    try:
        expected = received - skew
    except OverflowError:
        assert corrected == original
        return
    assert corrected == expected


bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(orjson.dumps),
    st.fixed_dictionaries(
        {"batch": st.lists(messages, max_size=5)},
        optional={"context": json_values, "sentAt": field_values, "integrations": json_values},
    ).map(orjson.dumps),
    messages.map(lambda m: orjson.dumps(m) if not isinstance(m, float) else b"1"),
)


@given(
    body=bodies,
    path=st.sampled_from(["/v1/batch", "/v1/track", "/v1/identify", "/v1/a", "/v1/g"]),
    zipped=st.booleans(),
)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_arbitrary_bodies_never_get_a_5xx(
    live: LiveTessera, body: bytes, path: str, zipped: bool
) -> None:
    headers = {"Content-Type": "application/json"}
    if zipped:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    response = httpx.post(
        f"{live.url}{path}", content=body, headers=headers, auth=(live.write_key, ""), timeout=30
    )
    assert response.status_code < 500, response.text
    assert response.status_code in (200, 400, 413)
    assert response.json()["success"] is (response.status_code == 200)
    if response.status_code == 400 and "rejected" in response.json():
        for item in response.json()["rejected"]:
            assert item["reason"]


def test_nothing_half_stored_after_hostile_batches(live: LiveTessera) -> None:
    hostile = [
        {"type": "track", "userId": "u", "event": "ok", "messageId": "a"},
        {"type": "track", "userId": ["x"], "event": "bad"},
    ]
    response = httpx.post(
        f"{live.url}/v1/batch", json={"batch": hostile}, auth=(live.write_key, "")
    )
    assert response.status_code == 400
    assert [row["message_id"] for row in stored(live)] == ["a"]
