"""A draft's preview agrees with the audience it becomes, without saving anything."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tessera.audiences import service
from tessera.audiences.preview import preview_audience
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


def test_past_its_budget_the_preview_extrapolates(engine: Engine) -> None:
    clock = populate(engine)
    with engine.connect() as conn:
        preview = preview_audience(
            conn, document=DRAFT, now=clock.now, budget_seconds=0.0, chunk=10
        )
    assert preview["exact"] is False
    assert preview["evaluated_profiles"] == 10 and preview["profiles"] == 60
