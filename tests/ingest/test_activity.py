"""The record of what the tracking API did per source: counts, refusals kept within their
bound, excerpts that never hold a write key, and the live view's cursor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from tessera.errors import BadRequest
from tessera.ingest.activity import (
    EXCERPT_CHARS,
    IngestActivity,
    Refusal,
    activity_by_source,
    excerpt_of_body,
    excerpt_of_message,
    list_refusals,
)
from tessera.ingest.live import Cursor, parse_cursor
from tessera.ingest.sources import create_source, new_write_key
from tessera.store import create_store_engine

UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/none"


def refusal(source_id: int, reason: str, at: datetime | None = None) -> Refusal:
    return Refusal(source_id, at or datetime.now(UTC), 400, "bad_request", reason)


def test_each_source_keeps_its_newest_refusals(engine: Engine) -> None:
    with engine.begin() as conn:
        web, app = (create_source(conn, name=name).id for name in ("web", "app"))
    activity = IngestActivity(engine, keep=5, max_refusals_per_flush=3)
    for round_ in range(4):
        for i in range(4):  # one more than a flush keeps: the oldest waiting one goes
            activity.refused(refusal(web, f"web {round_}.{i}"))
        activity.refused(refusal(app, f"app {round_}"))
        activity.flush()
    with engine.connect() as conn:
        kept = [row["reason"] for row in list_refusals(conn, source_id=web, limit=100)]
        others = [row["reason"] for row in list_refusals(conn, source_id=app, limit=100)]
    assert kept == ["web 2.2", "web 2.3", "web 3.1", "web 3.2", "web 3.3"]
    assert others == ["app 0", "app 1", "app 2", "app 3"]
    assert activity.stats.refusals_not_kept == 4 and activity.stats.refusals_written == 16


def test_counts_add_up_by_source_and_day_across_processes(engine: Engine) -> None:
    with engine.begin() as conn:
        web = create_source(conn, name="web").id
    now = datetime.now(UTC)
    first, second = IngestActivity(engine), IngestActivity(engine)  # two API processes
    first.accepted(web, 10, now - timedelta(days=1))
    first.accepted(web, 3, now)
    second.accepted(web, 4, now)
    second.refused(refusal(web, "no"))
    for activity in (first, second, first):
        activity.flush()
    with engine.connect() as conn:
        [(source_id, today)] = activity_by_source(conn).items()
    assert source_id == web
    assert (today.accepted_today, today.refused_today) == (7, 1)
    assert today.last_accepted_at is not None and today.last_refused_at is not None
    assert abs(today.last_accepted_at - now) < timedelta(seconds=1)


def test_a_flush_that_fails_keeps_the_counts_for_the_next(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with engine.begin() as conn:
        web = create_source(conn, name="web").id
    activity = IngestActivity(engine)
    activity.accepted(web, 2, datetime.now(UTC))
    activity.refused(refusal(web, "lost"))
    with monkeypatch.context() as patch:  # the store is away for one flush
        patch.setattr(activity, "_engine", create_store_engine(UNREACHABLE))
        assert activity.flush() == 0
    activity.accepted(web, 1, datetime.now(UTC))
    activity.flush()
    with engine.connect() as conn:
        assert activity_by_source(conn)[web].accepted_today == 3
        assert list_refusals(conn, source_id=web) == []  # refusals are not held back
    assert activity.stats.failed_flushes == 1 and activity.stats.refusals_not_kept == 1


KEY = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
    min_size=32,
    max_size=32,
)


@given(key=KEY, before=st.text(max_size=3000), after=st.text(max_size=3000))
def test_an_excerpt_of_a_body_never_holds_its_write_key(key: str, before: str, after: str) -> None:
    body = f'{before}{{"writeKey": "{key}", "userId": {after!r}}} {key} {after}'.encode()
    excerpt = excerpt_of_body(body, key)
    assert excerpt is not None and len(excerpt) <= EXCERPT_CHARS
    assert key not in excerpt


@given(key=KEY, message=st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=40))
def test_an_excerpt_of_a_message_never_holds_its_write_key(
    key: str, message: dict[str, str]
) -> None:
    message = {**message, "writeKey": key, "properties": {"echo": key}}
    excerpt = excerpt_of_message(message, key)
    assert key not in excerpt and len(excerpt) <= EXCERPT_CHARS
    if len(excerpt) < EXCERPT_CHARS:
        assert "writeKey" not in orjson.loads(excerpt)


@pytest.mark.parametrize("cut", range(EXCERPT_CHARS - 40, EXCERPT_CHARS + 1, 7))
def test_no_part_of_a_key_is_left_where_the_excerpt_ends(cut: int) -> None:
    key = new_write_key()
    for body in (b"x" * cut + key.encode(), b"x" * cut + b'{"writeKey": "' + key.encode()):
        excerpt = excerpt_of_body(body, key) or ""
        assert key[:6] not in excerpt, excerpt[-40:]


@given(position=st.integers(0, 2**63 - 1), refusal_id=st.integers(0, 2**63 - 1))
def test_a_cursor_reads_back_as_it_was_sent(position: int, refusal_id: int) -> None:
    cursor = Cursor(position, refusal_id)
    assert parse_cursor(str(cursor)) == cursor


def test_a_plain_position_is_a_cursor_too() -> None:
    assert parse_cursor("1042") == Cursor(1042, -1)  # refusals from the newest


@pytest.mark.parametrize(
    "text", ["", "-", "1-", "a-1", "1-b", "1.5", "-3-4", "1-2-3", "²", "9" * 20, "1-" + "9" * 19]
)
def test_a_cursor_that_was_not_sent_is_a_400(text: str) -> None:
    with pytest.raises(BadRequest, match="not one this stream sent"):
        parse_cursor(text)
