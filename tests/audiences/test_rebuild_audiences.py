"""Computed traits and audience memberships maintained event by event, with time moving on
and definitions created part-way (so backfill and build take part), equal a rebuild."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from tessera.processor import reset_derived_state
from tests.audiences.test_stage import T0, Clock, define, derived, make_pipeline, settle
from tests.examples import examples
from tests.identity.helpers import ingest

# Few identifiers, often alone: profiles build up state apart, then merge.
users = st.sampled_from(["u1", "u2", None, None])
anons = st.sampled_from(["a1", "a2", None])


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["track", "track", "identify", "alias"]))
    user, anon = draw(users), draw(anons)
    if user is None and anon is None:
        anon = "a1"
    at = T0 + timedelta(days=draw(st.integers(-60, 20)), hours=draw(st.integers(0, 23)))
    message: dict[str, Any] = {"type": kind, "timestamp": at.isoformat()}
    if user:
        message["userId"] = user
    if anon:
        message["anonymousId"] = anon
    if kind == "track":
        message["event"] = draw(st.sampled_from(["Order Completed", "Product Viewed"]))
        message["properties"] = {"total": draw(st.sampled_from([5, 40, 120, "9.5", None]))}
    if kind == "identify":
        message["traits"] = {"plan": draw(st.sampled_from(["gold", "free"]))}
        if draw(st.booleans()):
            message["context"] = {"consent": {"categoryPreferences": {"marketing": True}}}
    if kind == "alias":
        message["userId"] = user or "u1"
        message["previousId"] = draw(st.sampled_from(["a1", "a2", "u2"]))
    return message


@given(
    bursts=st.lists(
        st.tuples(
            st.lists(messages(), min_size=1, max_size=6),
            st.integers(0, 20 * 24),  # hours the clock moves on after the burst
        ),
        min_size=1,
        max_size=5,
    ),
    define_at=st.integers(0, 5),
)
@settings(
    max_examples=examples(25),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_incremental_equals_rebuilt(
    engine: Engine, bursts: list[tuple[list[dict[str, Any]], int]], define_at: int
) -> None:
    with engine.begin() as conn:
        for table in ("audiences", "computed_traits"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
        reset_derived_state(conn)
        conn.execute(sa.text("DELETE FROM events"))
    clock = Clock(T0)
    pipe = make_pipeline(clock)
    defined = False
    for index, (batch, hours) in enumerate(bursts):
        if index == define_at:
            define(engine)
            defined = True
        ingest(engine, batch)
        settle(engine, pipe)
        clock.now += timedelta(hours=hours)
        settle(engine, pipe)
    if not defined:
        define(engine)
        settle(engine, pipe)
    incremental = derived(engine)
    with engine.begin() as conn:
        reset_derived_state(conn)
    settle(engine, make_pipeline(clock))
    assert derived(engine) == incremental
