"""The schema batch stage: what a batch shows of its events' shapes lands in the catalog,
bounded against hostile payloads, and a rebuild (or an unmerge) leaves the same catalog."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from tessera.processor import reset_derived_state, unmerge
from tessera.schema import service, stage
from tessera.schema.observe import MAX_DEPTH, MAX_PATHS, MAX_TEXT
from tests.examples import examples
from tests.identity.helpers import process, profile_id
from tests.schema.helpers import NOW, catalog, schema_pipeline, send

MIXED: list[dict[str, Any]] = [
    {
        "type": "identify",
        "userId": "u1",
        "traits": {
            "email": "jo@example.com",
            "plan": "pro",
            "address": {"city": "Leeds", "postcode": "LS1"},
            "signed_up": "2026-01-02",
        },
    },
    {
        "type": "track",
        "userId": "u1",
        "event": "Order Completed",
        "properties": {"total": 49.9, "order_id": "o1", "products": [{"sku": "s1"}]},
        "context": {"campaign": {"source": "newsletter", "medium": "email"}},
    },
    {
        "type": "track",
        "userId": "u1",
        "event": "Order Completed",
        "properties": {"total": 10, "order_id": "o2", "coupon": None},
    },
    {"type": "page", "anonymousId": "a1", "name": "Home", "properties": {"path": "/"}},
    {"type": "screen", "anonymousId": "a2", "name": "Cart"},
    {"type": "group", "userId": "u1", "groupId": "g1", "traits": {"name": "Acme", "seats": 10}},
    {"type": "alias", "userId": "u1", "previousId": "a1"},
]


def types_of(paths: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    return {p["path"]: {t["type"]: t["count"] for t in p["types"]} for p in paths}


def test_a_mixed_batch_counts_each_event_and_types_each_path(engine: Engine) -> None:
    send(engine, MIXED, at=NOW - timedelta(minutes=5))
    send(engine, [MIXED[1]], at=NOW)
    process(engine, schema_pipeline())
    with engine.connect() as conn:
        page = service.list_event_types(conn, limit=100)
        seen = {(item["type"], item["name"]): item for item in page["items"]}
        order = service.get_event_properties(conn, name="Order Completed")
        pages = service.get_event_properties(conn, name=None, event_type="page")
        group = service.get_event_properties(conn, name=None, event_type="group")
        traits = types_of(service.list_traits(conn))
        context = types_of(service.list_context_fields(conn))
    assert {key: item["count"] for key, item in seen.items()} == {
        ("alias", None): 1,
        ("group", None): 1,
        ("identify", None): 1,
        ("page", None): 1,
        ("screen", None): 1,
        ("track", "Order Completed"): 3,
    }
    assert seen[("track", "Order Completed")]["first_seen"] == NOW - timedelta(minutes=5)
    assert seen[("track", "Order Completed")]["last_seen"] == NOW
    assert page["next_cursor"] is None
    assert types_of(order["properties"]) == {
        "coupon": {"null": 1},
        "order_id": {"string": 3},
        "products": {"array": 2},
        "total": {"number": 2, "integer": 1},
    }
    assert order["properties"][3]["types"][0] == {"type": "number", "count": 2}  # most seen
    assert types_of(pages["properties"]) == {"path": {"string": 1}}
    assert types_of(group["properties"]) == {"name": {"string": 1}, "seats": {"integer": 1}}
    assert traits == {
        "address.city": {"string": 1},
        "address.postcode": {"string": 1},
        "email": {"string": 1},
        "plan": {"string": 1},
        "signed_up": {"datetime": 1},
    }
    assert context == {"campaign.medium": {"string": 2}, "campaign.source": {"string": 2}}


def test_the_list_pages_by_name_and_searches(engine: Engine) -> None:
    send(engine, [{"type": "track", "userId": "u1", "event": f"Step {i}"} for i in range(5)])
    send(
        engine,
        [{"type": "page", "userId": "u1"}, {"type": "track", "userId": "u1", "event": "50%_off"}],
    )
    process(engine, schema_pipeline())
    with engine.connect() as conn:
        names, cursor = [], None
        while True:
            page = service.list_event_types(conn, limit=2, after=cursor)
            names += [item["name"] or item["type"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        found = service.list_event_types(conn, search="STEP 3")["items"]
        wildcard = service.list_event_types(conn, search="%_")["items"]
        by_type = service.list_event_types(conn, search="pag")["items"]
    assert names == ["page", "50%_off", "Step 0", "Step 1", "Step 2", "Step 3", "Step 4"]
    assert [item["name"] for item in found] == ["Step 3"]
    assert [item["name"] for item in wildcard] == ["50%_off"]  # % and _ are not wildcards
    assert [item["type"] for item in by_type] == ["page"]


def test_nested_properties_are_flattened_down_to_the_depth_limit(engine: Engine) -> None:
    deep: dict[str, Any] = {"leaf": True}
    for name in "hgfedcb":
        deep = {name: deep}
    send(
        engine,
        [
            {
                "type": "track",
                "userId": "u1",
                "event": "Nested",
                "properties": {"a": deep, "shipping": {"address": {"city": "Leeds"}}, "empty": {}},
            }
        ],
    )
    process(engine, schema_pipeline())
    with engine.connect() as conn:
        found = types_of(service.get_event_properties(conn, name="Nested")["properties"])
    assert found == {
        "a.b.c.d.e": {"object": 1},
        "empty": {"object": 1},
        "shipping.address.city": {"string": 1},
    }
    assert len(["a", "b", "c", "d", "e"]) == MAX_DEPTH


def test_hostile_payloads_stay_bounded_and_what_is_left_out_is_counted(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    wide = {f"k{i}": i for i in range(10_000)}
    deep: dict[str, Any] = {"x": 1}
    for _ in range(250):  # ingest refuses deeper than 254 levels
        deep = {"d": deep}
    send(
        engine,
        [
            {"type": "track", "userId": "u1", "event": "Wide", "properties": wide},
            {
                "type": "track",
                "userId": "u1",
                "event": "Long",
                "properties": {"x" * (MAX_TEXT + 1): 1, "nested": {"y" * MAX_TEXT: 2}, "ok": 3},
            },
            {"type": "track", "userId": "u1", "event": "Deep", "properties": deep},
            {"type": "identify", "userId": "u1", "traits": wide},
        ],
        max_bytes=1_000_000,
    )
    process(engine, schema_pipeline())
    with engine.connect() as conn:
        wide_seen = service.get_event_properties(conn, name="Wide")
        deep_seen = service.get_event_properties(conn, name="Deep")
        long_seen = service.get_event_properties(conn, name="Long")
        traits = service.list_traits(conn)
        left_out = service.list_event_types(conn)["left_out"]
    assert len(wide_seen["properties"]) == MAX_PATHS
    assert wide_seen["dropped_paths"] == 10_000 - MAX_PATHS
    assert types_of(deep_seen["properties"]) == {"d.d.d.d.d": {"object": 1}}
    # Paths longer than the catalog keeps (255 characters) are left out, and counted.
    assert types_of(long_seen["properties"]) == {"ok": {"integer": 1}}
    assert long_seen["dropped_paths"] == 2
    assert len(traits) == MAX_PATHS
    assert left_out == {"trait_paths": 10_000 - MAX_PATHS}


def test_the_catalog_keeps_to_its_limits_across_batches(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stage, "MAX_EVENT_NAMES", 4)
    monkeypatch.setattr(stage, "MAX_FIELDS", {"event": 3, "trait": 2, "context": 3})
    pipe = schema_pipeline()
    for batch in range(3):
        send(
            engine,
            [
                {
                    "type": "track",
                    "userId": "u1",
                    "event": f"Event {batch}-{i}",
                    "properties": {f"p{batch}": 1},
                }
                for i in range(2)
            ]
            + [{"type": "identify", "userId": "u1", "traits": {f"t{batch}": "x"}}]
            + [
                {
                    "type": "track",
                    "userId": "u1",
                    "event": "Kept",
                    "properties": {f"k{batch}": batch},
                }
            ],
        )
        process(engine, pipe)
    with engine.connect() as conn:
        names = [(i["type"], i["name"]) for i in service.list_event_types(conn)["items"]]
        kept = service.get_event_properties(conn, name="Kept")
        traits = [t["path"] for t in service.list_traits(conn)]
        left_out = service.list_event_types(conn)["left_out"]
    # identify is one of the 4 rows; non-track types never count against the names.
    assert names == [
        ("identify", None),
        ("track", "Event 0-0"),
        ("track", "Event 0-1"),
        ("track", "Kept"),
    ]
    assert left_out == {"event_names": 4, "trait_paths": 1}
    assert [p["path"] for p in kept["properties"]] == ["k0", "k1", "k2"]
    assert traits == ["t0", "t1"]

    # A rebuild empties the catalog; the same stage, which knew it full, fills it again.
    with engine.begin() as conn:
        before = catalog(engine)
        reset_derived_state(conn, stages=pipe.stages)
    process(engine, pipe)
    assert catalog(engine) == before


def test_an_unmerge_and_a_rebuild_leave_the_same_catalog(engine: Engine) -> None:
    pipe = schema_pipeline()
    send(
        engine,
        [{"type": "track", "anonymousId": "a1", "event": "Viewed", "properties": {"sku": "s1"}}],
    )
    send(engine, [{"type": "identify", "userId": "u1", "traits": {"email": "jo@example.com"}}])
    send(
        engine,
        [{"type": "identify", "userId": "u1", "anonymousId": "a1"}],
        at=NOW + timedelta(minutes=1),
    )
    process(engine, pipe, limit=1)
    merged = catalog(engine)
    person = profile_id(engine, "user_id:u1")
    with engine.begin() as conn:
        merge_id = conn.execute(sa.text("SELECT id FROM profile_merges")).scalar_one()
        unmerge(conn, pipe, profile_id=person, merge_id=merge_id, actor="test")
    assert catalog(engine) == merged  # the replayed events are not counted again
    with engine.begin() as conn:
        reset_derived_state(conn, stages=pipe.stages)
    assert catalog(engine)["event_types"] == []
    process(engine, pipe)
    assert catalog(engine) == merged


messages = st.lists(
    st.tuples(
        st.sampled_from(["track", "page", "identify", "group"]),
        st.sampled_from(["Viewed", "Bought"]),
        st.sampled_from(["u1", "u2", None]),
        st.dictionaries(
            st.sampled_from(["a", "b", "c"]),
            st.one_of(st.integers(-1000, 1000), st.text(max_size=3), st.none(), st.just({"x": 1})),
            max_size=3,
        ),
        st.integers(0, 90),  # minutes before NOW
    ),
    min_size=1,
    max_size=10,
)


@given(batch=messages, step=st.integers(1, 4))
@settings(
    max_examples=examples(15),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_the_catalog_built_batch_by_batch_equals_the_rebuilt_one(
    engine: Engine, batch: list[tuple[str, str, str | None, dict[str, Any], int]], step: int
) -> None:
    # An hour's minutes (some are too old), and the context of 1 event in 2.
    pipe = schema_pipeline(retention_days=1 / 24, context_sample=2)
    with engine.begin() as conn:
        reset_derived_state(conn, stages=pipe.stages)
        conn.execute(sa.text("DELETE FROM events"))
    for kind, name, user, body, minutes in batch:
        message: dict[str, Any] = {
            "type": kind,
            "anonymousId": "a1",
            **({"userId": user} if user else {}),
        }
        if kind == "track":
            message |= {"event": name, "properties": body}
        elif kind == "page":
            message |= {"properties": body}
        elif kind == "group":
            message |= {"groupId": "g1", "traits": body}
        else:
            message |= {"traits": body}
        message["context"] = {"page": {"path": f"/{name}"}, "library": {"name": "js"}}
        send(engine, [message], at=NOW - timedelta(minutes=minutes))
    process(engine, pipe, limit=step)
    incremental = catalog(engine)
    assert sum(row[2] for row in incremental["event_types"]) == len(batch)
    assert sum(row[2] for row in incremental["minutes"]) == sum(1 for *_, m in batch if m <= 60)
    with engine.begin() as conn:
        reset_derived_state(conn, stages=pipe.stages)
    process(engine, pipe)
    assert catalog(engine) == incremental


def test_context_is_read_from_a_sample_of_events(engine: Engine) -> None:
    send(
        engine,
        [
            {"type": "track", "userId": "u1", "event": "Viewed", "context": {"locale": "en-GB"}}
            for _ in range(160)
        ],
    )
    process(engine, schema_pipeline(context_sample=16))
    with engine.connect() as conn:
        (locale,) = service.list_context_fields(conn)
        seqs = [seq for (seq,) in conn.execute(sa.text("SELECT seq FROM events"))]
    assert locale["path"] == "locale"
    assert locale["count"] == sum(1 for seq in seqs if stage.sampled(seq, 16))
    assert 3 <= locale["count"] <= 25  # about 1 in 16 of 160
