"""Rebuilding from the log reaches exactly the state maintained event by event."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from tessera.processor import reset_derived_state
from tests.examples import examples
from tests.identity.helpers import ingest, pipeline, process, snapshot

users = st.sampled_from(["u1", "u2", "u3", None])
anons = st.sampled_from(["a1", "a2", "a3", "a4", "undefined", None])
emails = st.sampled_from(["x@example.org", "y@example.org", "X@Example.org ", None])
devices = st.sampled_from(["d1", "d2", None])
stamps = st.sampled_from(["2026-11-01T10:00:00Z", "2026-11-02T10:00:00Z", "2026-10-30T10:00:00Z"])


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["identify", "track", "page", "alias", "group"]))
    user, anon = draw(users), draw(anons)
    if user is None and anon is None:
        anon = "a1"
    message: dict[str, Any] = {"type": kind, "timestamp": draw(stamps)}
    if user:
        message["userId"] = user
    if anon:
        message["anonymousId"] = anon
    if kind == "identify":
        message["traits"] = {"email": draw(emails), "plan": draw(st.sampled_from(["free", "pro"]))}
    if kind == "track":
        message["event"] = "Order Completed"
    if kind == "alias":
        message["userId"] = user or "u1"
        message["previousId"] = draw(st.sampled_from(["a1", "a2", "u2", "u3"]))
    if kind == "group":
        message["groupId"] = draw(st.sampled_from(["acme", "globex"]))
    if device := draw(devices):
        message["context"] = {"device": {"id": device}}
    return message


def _clear(engine: Engine) -> None:
    with engine.begin() as conn:
        reset_derived_state(conn)
        conn.execute(sa.text("DELETE FROM events"))


@given(
    batches=st.lists(st.lists(messages(), min_size=1, max_size=6), min_size=1, max_size=5),
    step=st.integers(1, 4),
)
@settings(
    max_examples=examples(30),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_incremental_equals_rebuilt(
    engine: Engine, batches: list[list[dict[str, Any]]], step: int
) -> None:
    _clear(engine)
    pipe = pipeline()
    for batch in batches:  # events arrive in bursts; the processor applies `step` at a time
        ingest(engine, batch)
        process(engine, pipe, limit=step)
    incremental = snapshot(engine)
    with engine.begin() as conn:
        reset_derived_state(conn)
    process(engine, pipeline())
    assert snapshot(engine) == incremental
    # Every event is attributed exactly once, and every identifier has one owner.
    total = sum(len(batch) for batch in batches)
    assert len(incremental["attribution"]) <= total
    assert len({(kind, value) for kind, value, *_ in incremental["identities"]}) == len(
        incremental["identities"]
    )
    # Two different user_ids never share a profile.
    owners: dict[str, set[str]] = {}
    for kind, value, profile_id, _ in incremental["identities"]:
        if kind == "user_id":
            owners.setdefault(profile_id, set()).add(value)
    assert all(len(values) == 1 for values in owners.values())
