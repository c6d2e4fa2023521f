"""The audience benchmark's definitions: 12 named computed traits and 50 audiences of mixed
shapes on the demo's retail data, at a fixed clock; `TARGET` is the audience recomputed over
1M profiles. benchmarks/pipeline.py creates the same through the API."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from tessera.config import Settings
    from tessera.processor import Pipeline


NOW = datetime(2026, 10, 31, 1, 0, tzinfo=UTC)  # generator: 2026-09-01 + 60 days, plus an hour

NAMED_TRAITS: list[dict[str, Any]] = [
    {"name": "orders_30d", "kind": "count", "event": {"name": "Order Completed"},
     "window": {"days": 30}},
    {"name": "spend", "kind": "sum", "event": {"name": "Order Completed"}, "property": "total"},
    {"name": "avg_order", "kind": "avg", "event": {"name": "Order Completed"},
     "property": "total"},
    {"name": "max_order", "kind": "max", "event": {"name": "Order Completed"},
     "property": "total"},
    {"name": "last_order_at", "kind": "last_time", "event": {"name": "Order Completed"}},
    {"name": "first_seen_at", "kind": "first_time"},  # any event at all
    {"name": "categories_viewed", "kind": "unique_list", "event": {"name": "Product Viewed"},
     "property": "category", "limit": 10},
    {"name": "favourite_category", "kind": "most_frequent",
     "event": {"name": "Product Viewed"}, "property": "category"},
    {"name": "views_7d", "kind": "count", "event": {"name": "Product Viewed"},
     "window": {"days": 7}},
    {"name": "last_campaign", "kind": "last", "event": {"name": "Email Opened"},
     "property": "campaign_name"},
    {"name": "pages_14d", "kind": "count", "event": {"type": "page"}, "window": {"days": 14}},
    {"name": "refunds", "kind": "count", "event": {"name": "Order Refunded"}},
]  # fmt: skip


def _ev(name: str, **rest: Any) -> dict[str, Any]:
    return {"event": name, **rest}


def _days(n: int) -> dict[str, int]:
    return {"days": n}


def _gte(n: int) -> dict[str, Any]:
    return {"op": "gte", "value": n}


TARGET_NAME = "big-order repeaters, not browsing"
TARGET: dict[str, Any] = {
    "and": [
        _ev(
            "Order Completed",
            where={"property": "total", "op": "gt", "value": 50},
            count=_gte(2),
            window=_days(30),
        ),
        {"not": _ev("Cart Viewed", performed=True, window=_days(7))},
        {"not": _ev("Product Added", performed=True, window=_days(7))},
    ]
}
# The PATCH of part 3: a stricter count on the same implicit trait (nothing to backfill).
TARGET_CHANGED: dict[str, Any] = {
    "and": [
        {**TARGET["and"][0], "count": _gte(3)},
        *TARGET["and"][1:],
    ]
}
# "@name" refers to an audience defined earlier in the list.
AUDIENCES: list[tuple[str, dict[str, Any]]] = [
    ("repeat buyers", {"computed": "orders_30d", "op": "gte", "value": 2}),
    ("big spenders", {"computed": "spend", "op": "gte", "value": 300}),
    ("high basket", {"computed": "avg_order", "op": "gt", "value": 120}),
    ("recent buyers", {"computed": "last_order_at", "op": "within_last_days", "value": 14}),
    ("lapsed buyers", {"and": [
        {"computed": "spend", "op": "gt", "value": 0},
        _ev("Order Completed", performed=False, window=_days(30))]}),
    ("window shoppers", {"and": [
        _ev("Product Viewed", count=_gte(5), window=_days(30)),
        _ev("Order Completed", performed=False)]}),
    ("cart abandoners", {"and": [
        _ev("Cart Viewed", performed=True, window=_days(7)),
        {"not": _ev("Order Completed", performed=True, window=_days(7))}]}),
    ("checkout abandoners", {"and": [
        _ev("Checkout Started", performed=True, window={"hours": 72}),
        {"not": _ev("Order Completed", performed=True, window={"hours": 72})}]}),
    (TARGET_NAME, TARGET),
    ("marketing opt-in", {"consent": "marketing"}),
    ("marketable repeat buyers", {"and": [{"audience": "@repeat buyers"},
                                          {"consent": "marketing"}]}),
    ("new yorkers", {"trait": "city", "op": "eq", "value": "New York"}),
    ("west coast", {"trait": "city", "op": "in",
                    "value": ["Los Angeles", "San Francisco", "Seattle", "Portland"]}),
    ("international", {"and": [{"trait": "country", "op": "exists"},
                               {"trait": "country", "op": "neq", "value": "US"}]}),
    ("example.com emails", {"trait": "email", "op": "contains", "value": "example.com"}),
    ("signed up lately", {"trait": "created_at", "op": "within_last_days", "value": 14}),
    ("early sign-ups", {"trait": "created_at", "op": "before", "value": "2026-09-15"}),
    ("phone known", {"trait": "phone", "op": "exists"}),
    ("anonymous", {"trait": "email", "op": "is_empty"}),
    ("shoe browsers", {"computed": "categories_viewed", "op": "contains", "value": "Shoes"}),
    ("dress lovers", {"computed": "favourite_category", "op": "eq", "value": "Dresses"}),
    ("newsletter readers", _ev("Email Opened", count=_gte(2), window=_days(30))),
    ("campaign clickers", _ev("Email Link Clicked", performed=True, window=_days(14))),
    ("aw26 readers", {"computed": "last_campaign", "op": "eq", "value": "aw26-launch"}),
    ("refunders", {"computed": "refunds", "op": "gte", "value": 1}),
    ("clean big spenders", {"and": [{"audience": "@big spenders"},
                                    {"computed": "refunds", "op": "eq", "value": 0}]}),
    ("support seekers", _ev("Support Ticket Opened", performed=True, window=_days(30))),
    ("unhappy", {"and": [{"audience": "@support seekers"}, {"audience": "@refunders"}]}),
    ("buying or carting", {"or": [{"audience": "@recent buyers"},
                                  _ev("Cart Viewed", performed=True, window={"hours": 48})]}),
    ("searchers", _ev("Products Searched", count=_gte(1), window=_days(14))),
    ("searched, did not buy", {"and": [
        {"audience": "@searchers"},
        {"not": _ev("Order Completed", performed=True, window=_days(14))}]}),
    ("heavy browsers", {"computed": "views_7d", "op": "gte", "value": 5}),
    ("page readers", {"computed": "pages_14d", "op": "gt", "value": 10}),
    ("new visitors", {"computed": "first_seen_at", "op": "within_last_days", "value": 7}),
    ("old timers", {"computed": "first_seen_at", "op": "before", "value": "2026-09-20"}),
    ("signed in lately", _ev("Signed In", performed=True, window=_days(30))),
    ("luxury viewers", _ev("Product Viewed", where={"property": "price", "op": "gt", "value": 150},
                           count=_gte(2), window=_days(30))),
    ("knitwear viewers", _ev("Product Viewed",
                             where={"property": "category", "op": "eq", "value": "Knitwear"},
                             performed=True, window=_days(14))),
    ("premium first item", _ev("Order Completed",
                               where={"property": "products.0.price", "op": "gte", "value": 100},
                               performed=True)),
    ("free shipping", _ev("Order Completed",
                          where={"property": "shipping", "op": "eq", "value": 0},
                          count=_gte(1), window=_days(30))),
    ("small baskets only", {"and": [{"computed": "orders_30d", "op": "gte", "value": 1},
                                    {"computed": "max_order", "op": "lt", "value": 50}]}),
    ("vip", {"and": [{"audience": "@big spenders"}, {"audience": "@repeat buyers"},
                     {"consent": "marketing"}]}),
    ("vip outside new york", {"and": [{"audience": "@vip"},
                                      {"not": {"audience": "@new yorkers"}}]}),
    ("win back", {"and": [{"audience": "@lapsed buyers"}, {"consent": "marketing"},
                          {"not": {"audience": "@unhappy"}}]}),
    ("first order this month", _ev("Order Completed",
                                   first_time={"op": "within_last_days", "value": 30})),
    ("quiet since september", _ev("Order Completed",
                                  last_time={"op": "before", "value": "2026-10-01"})),
    ("reachable", {"or": [{"trait": "phone", "op": "exists"}, {"consent": "analytics"}]}),
    ("measured browsers", {"and": [{"consent": "analytics"},
                                   {"computed": "views_7d", "op": "gte", "value": 1}]}),
    ("regional repeaters", {"or": [
        {"and": [{"trait": "country", "op": "eq", "value": "GB"},
                 {"audience": "@repeat buyers"}]},
        {"and": [{"trait": "country", "op": "eq", "value": "US"},
                 {"computed": "spend", "op": "gte", "value": 500}]}]}),
    ("engaged", {"or": [{"audience": "@window shoppers"}, {"audience": "@cart abandoners"},
                        {"audience": "@newsletter readers"}, {"audience": "@heavy browsers"}]}),
]  # fmt: skip


def resolve(document: Any, ids: dict[str, str]) -> Any:
    """The document with "@name" audience references replaced by their ids."""
    if isinstance(document, dict):
        out = {key: resolve(value, ids) for key, value in document.items()}
        ref = out.get("audience")
        if isinstance(ref, str) and ref.startswith("@"):
            out["audience"] = ids[ref[1:]]
        return out
    if isinstance(document, list):
        return [resolve(item, ids) for item in document]
    return document


def define(engine: Engine, *, only_target: bool = False) -> dict[str, str]:
    """Create the definitions through the service (one transaction); audience name → id."""
    from tessera.audiences import service

    ids: dict[str, str] = {}
    with engine.begin() as conn:
        if not only_target:
            for document in NAMED_TRAITS:
                service.create_computed_trait(conn, document=document)
        for name, document in AUDIENCES:
            if only_target and name != TARGET_NAME:
                continue
            created = service.create_audience(
                conn,
                name=name,
                description="benchmarks/audiences.py",
                document=resolve(document, ids),
                actor=None,
            )
            ids[name] = created["id"]
    return ids


def make_pipeline(settings: Settings) -> Pipeline:
    """The pipeline `tessera serve` builds, on the fixed clock."""
    from tessera.processor import Pipeline

    return Pipeline(Pipeline.from_settings(settings).config, clock=lambda: NOW)


def add_consent(messages: list[dict[str, Any]]) -> None:
    """Segment consent on every identify call, decided by a hash of its messageId."""
    for message in messages:
        if message.get("type") == "identify":
            h = zlib.crc32(message["messageId"].encode())
            preferences = {"marketing": h % 10 < 6, "analytics": (h // 10) % 10 < 8}
            context = message.get("context") or {}
            message["context"] = {**context, "consent": {"categoryPreferences": preferences}}
