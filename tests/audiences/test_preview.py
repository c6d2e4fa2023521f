"""A draft's preview agrees with the audience it becomes, without saving anything."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from tessera.audiences import preview, service
from tessera.audiences.preview import key_windows, preview_audience, visiting_order
from tests.audiences.test_stage import T0, Clock, make_pipeline, members, order, settle
from tests.identity.helpers import ingest

DRAFT: dict[str, Any] = {
    "and": [
        {"trait": "plan", "op": "in", "value": ["gold", "silver"]},
        {
            "event": "Order Completed",
            "where": {"property": "total", "op": "gt", "value": 20},
            "count": {"op": "gte", "value": 2},
            "window": {"days": 30},
        },
    ]
}


def populate(engine: Engine) -> Clock:
    clock = Clock(T0)
    messages: list[dict[str, Any]] = []
    for n in range(60):
        user = f"p{n}"
        messages.append(
            {
                "type": "identify",
                "userId": user,
                "traits": {"plan": ["gold", "silver", "free"][n % 3]},
            }
        )
        for k in range(n % 4):
            messages.append(order(user, 10 + 15 * k, T0 - timedelta(days=k * 9)))
    ingest(engine, messages)
    settle(engine, make_pipeline(clock))
    return clock


def counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (
            conn.execute(sa.text("SELECT count(*) FROM computed_traits")).scalar_one(),
            conn.execute(sa.text("SELECT count(*) FROM audiences")).scalar_one(),
        )


def test_preview_matches_the_built_audience(engine: Engine) -> None:
    clock = populate(engine)
    with engine.connect() as conn:
        preview = preview_audience(conn, document=DRAFT, now=clock.now, sample_size=5)
    assert counts(engine) == (0, 0)  # nothing saved
    assert preview["exact"] is True
    assert preview["computed_from_events"]  # the event condition was computed on the fly
    with engine.begin() as conn:
        audience = service.create_audience(
            conn, name="draft", description="", document=DRAFT, actor=None
        )
    settle(engine, make_pipeline(clock))
    built = members(engine, audience["id"])
    assert preview["size"] == len(built) > 0
    assert set(preview["sample"]) <= built and len(preview["sample"]) == min(5, len(built))
    # Now the event condition is a ready computed trait, and the preview reads it.
    with engine.connect() as conn:
        again = preview_audience(conn, document=DRAFT, now=clock.now)
    assert again["computed_from_events"] == [] and again["size"] == len(built)


def test_past_its_budget_the_preview_estimates_and_says_so(engine: Engine) -> None:
    clock = populate(engine)
    with engine.connect() as conn:
        exact = preview_audience(conn, document=DRAFT, now=clock.now)
        preview = preview_audience(
            conn, document=DRAFT, now=clock.now, budget_seconds=0.0, window_profiles=10
        )
    assert preview["exact"] is False and exact["exact"] is True and exact["margin"] == 0
    # One window of about ten profiles, taken from the whole key space, scaled up.
    assert 0 < preview["evaluated_profiles"] < 60 and preview["profiles"] == 60
    assert preview["margin"] is None  # one window says nothing of the spread
    with engine.connect() as conn:
        wider = preview_audience(
            conn, document=DRAFT, now=clock.now, budget_seconds=0.0, window_profiles=1
        )
    assert wider["exact"] is False
    assert set(wider["sample"]) <= set(exact["sample"])


def test_a_window_still_reading_past_the_deadline_is_left_out(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = populate(engine)
    monkeypatch.setattr(preview, "GRACE_SECONDS", -1e9)  # every deadline has passed
    with engine.connect() as conn:
        first = preview_audience(
            conn, document=DRAFT, now=clock.now, budget_seconds=1e9, window_profiles=10
        )
    # The first window with profiles is always evaluated, so there is something to say.
    assert first["exact"] is False and 0 < first["evaluated_profiles"] < 60
    assert first["computed_from_events"]  # its events were read; the next window's were not


@given(
    ids=st.lists(st.integers(1, 10**9), min_size=1, max_size=50),
    count=st.integers(1, 3000),
)
def test_key_windows_hold_every_profile_id_once(ids: list[int], count: int) -> None:
    windows = key_windows(count)
    assert len(windows) == count
    for n in ids:
        pid = f"prf_{n}"
        assert sum(low < pid <= high for low, high in windows) == 1


@given(count=st.integers(1, 5000))
def test_windows_are_visited_once_each_in_a_repeatable_order(count: int) -> None:
    order = visiting_order(count)
    assert sorted(order) == list(range(count))
    assert visiting_order(count) == order  # the same draft answers the same
