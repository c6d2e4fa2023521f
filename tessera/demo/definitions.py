"""The computed traits and audiences a demo shop starts with, so the audience pages, the
profile and the destinations have something real to show: what a marketer would define
first for a fashion shop's customers.

Defined before the demo's events are sent, so the processor keeps them up to date event by
event, as it would in production; defined again by a second `tessera demo`, they are left
as they are (matched by name).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tessera.audiences import admin
from tessera.audiences.catalog import READY
from tessera.audiences.models import audiences
from tessera.profiles.models import computed_traits

ACTOR = "cli:demo"

COMPUTED_TRAITS: list[dict[str, Any]] = [
    {"name": "lifetime_value", "kind": "sum", "event": {"name": "Order Completed"},
     "property": "total"},
    {"name": "orders_count", "kind": "count", "event": {"name": "Order Completed"}},
    {"name": "last_order_at", "kind": "last_time", "event": {"name": "Order Completed"}},
    {"name": "favourite_category", "kind": "most_frequent", "event": {"name": "Product Viewed"},
     "property": "category"},
    {"name": "products_viewed_90d", "kind": "count", "event": {"name": "Product Viewed"},
     "window": {"days": 90}},
]  # fmt: skip

# (name, description, definition); "@Name" stands for the id of the audience named Name.
AUDIENCES: list[tuple[str, str, Any]] = [
    (
        "Customers",
        "Everyone who has placed an order",
        {"computed": "orders_count", "op": "gte", "value": 1},
    ),
    (
        "Big spenders",
        "Customers who spent 150 or more in all",
        {"computed": "lifetime_value", "op": "gte", "value": 150},
    ),
    (
        "Window shoppers",
        "Browse a lot, never bought: candidates for a first-order offer",
        {
            "and": [
                {"event": "Product Viewed", "count": {"op": "gte", "value": 3}},
                {"not": {"event": "Order Completed", "performed": True}},
            ]
        },
    ),
    (
        "Abandoned checkout",
        "Started a checkout of 50 or more and did not order",
        {
            "and": [
                {
                    "event": "Checkout Started",
                    "where": {"property": "value", "op": "gte", "value": 50},
                    "performed": True,
                },
                {"event": "Order Completed", "performed": False},
            ]
        },
    ),
    (
        "Engaged big spenders",
        "Big spenders who open or click our emails",
        {
            "and": [
                {"audience": "@Big spenders"},
                {
                    "or": [
                        {"event": "Email Opened", "count": {"op": "gte", "value": 2}},
                        {"event": "Email Link Clicked", "performed": True},
                    ]
                },
            ]
        },
    ),
]


def _resolve(document: Any, ids: dict[str, str]) -> Any:
    if isinstance(document, dict):
        return {key: _resolve(value, ids) for key, value in document.items()}
    if isinstance(document, list):
        return [_resolve(item, ids) for item in document]
    if isinstance(document, str) and document.startswith("@"):
        return ids[document[1:]]
    return document


def define_examples(conn: Connection) -> tuple[int, int]:
    """Define the example computed traits and audiences that do not exist yet; return how
    many of each were defined."""
    traits = set(conn.execute(sa.select(computed_traits.c.name)).scalars())
    made_traits = 0
    for document in COMPUTED_TRAITS:
        if document["name"] not in traits:
            admin.create_computed_trait(conn, actor=ACTOR, ip=None, document=document)
            made_traits += 1
    ids = dict(conn.execute(sa.select(audiences.c.name, audiences.c.id)).all())
    made_audiences = 0
    for name, description, definition in AUDIENCES:
        if name in ids:
            continue
        created = admin.create_audience(
            conn,
            actor=ACTOR,
            ip=None,
            name=name,
            description=description,
            document=_resolve(definition, ids),
        )
        ids[name] = created["id"]
        made_audiences += 1
    return made_traits, made_audiences


def wait_until_ready(engine: Engine, *, timeout: float = 600.0) -> None:
    """Block until every computed trait is backfilled and every audience built, so the
    demo ends with sizes to show (the processor builds them after the log catches up)."""
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            waiting = (
                conn.execute(
                    sa.select(sa.func.count()).where(computed_traits.c.status != READY)
                ).scalar_one()
                + conn.execute(
                    sa.select(sa.func.count()).where(audiences.c.status != READY)
                ).scalar_one()
            )
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{waiting} computed traits and audiences are still not ready")
        time.sleep(0.05)
