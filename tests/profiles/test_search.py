"""The people search on both backends: what finds whom, in which order, across merges,
unmerges and rebuilds; the index kept by the processor equals the one rebuilt from the log,
and no query text makes the database raise."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Connection, Engine

from tessera.errors import BadRequest
from tessera.processor import Pipeline, reset_derived_state, unmerge
from tessera.profiles.search import search_profiles
from tessera.profiles.search_index import ProfileSearchStage, index_all_profiles
from tests.examples import examples
from tests.identity.helpers import ingest, pipeline, process, profile_id


def _pipeline() -> Pipeline:
    return Pipeline(pipeline().config, stages=[ProfileSearchStage()])


def _found(engine: Engine, query: str, **options: Any) -> list[str]:
    with engine.connect() as conn:
        return [item["id"] for item in search_profiles(conn, query=query, **options)["items"]]


def _rows_of(conn: Connection) -> list[tuple[Any, ...]]:
    columns = "seq, profile_id, name, email, phone, company, terms"
    return sorted(
        tuple(row) for row in conn.execute(sa.text(f"SELECT {columns} FROM profile_search"))
    )


def _rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return _rows_of(conn)


JO = {
    "type": "identify",
    "userId": "u1",
    "anonymousId": "a-jo",
    "traits": {
        "firstName": "Jo",
        "lastName": "Smith",
        "email": "Jo.Smith@Example.com",
        "phone": "+44 7911 123456",
        "company": {"name": "Acme Trading"},
    },
}
ANN = {"type": "identify", "userId": "u10", "traits": {"name": "Ann Smithers"}}


def test_people_are_found_by_the_start_of_anything_a_person_would_type(engine: Engine) -> None:
    ingest(engine, [JO, ANN, {"type": "track", "anonymousId": "a-only", "event": "Viewed"}])
    process(engine, _pipeline())
    jo, ann = profile_id(engine, "user_id:u1"), profile_id(engine, "user_id:u10")
    for typed in ("jo smi", "smith@exa", "jo.smith", "+4479", "07911 123", "7911123456", "acme"):
        assert _found(engine, typed) == [jo], typed
    assert _found(engine, "smi") == [ann, jo]  # both start with it: newest first
    assert _found(engine, "u1") == [jo, ann]  # an exact identifier first, however old
    assert _found(engine, "a-jo") == [] and _found(engine, "a-only") == []  # anonymous ids
    with engine.connect() as conn:
        (item,) = search_profiles(conn, query="jo.smith@example.com")["items"]
    assert item == {
        "id": jo,
        "name": "Jo Smith",
        "email": "Jo.Smith@Example.com",
        "phone": "+44 7911 123456",
        "company": "Acme Trading",
        "updated_at": item["updated_at"],
    }
    assert item["updated_at"].tzinfo is not None


def test_without_personal_data_only_identifiers_and_companies_match(engine: Engine) -> None:
    ingest(engine, [JO])
    process(engine, _pipeline())
    for typed in ("jo", "smith", "jo.smith@example.com", "+447911123456"):
        assert _found(engine, typed, personal=False) == [], typed
    jo = profile_id(engine, "user_id:u1")
    assert _found(engine, "u1", personal=False) == [jo]
    assert _found(engine, "acme", personal=False) == [jo]


def test_pages_follow_on_without_repeats_and_bad_cursors_are_refused(engine: Engine) -> None:
    people = [{"type": "identify", "userId": f"user-{n}"} for n in range(7)]
    ingest(engine, [*people, {"type": "identify", "userId": "user"}])
    process(engine, _pipeline())
    seen, cursor = [], None
    with engine.connect() as conn:
        while True:
            page = search_profiles(conn, query="user", limit=3, after=cursor)
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen[0] == profile_id(engine, "user_id:user")  # the exact match leads
        assert len(seen) == len(set(seen)) == 8
        for bad in ("x", "2.5", "1.-4", "0.99999999999999999999", "1.5 OR 1=1"):
            with pytest.raises(BadRequest, match="cursor"):
                search_profiles(conn, query="user", after=bad)
        with pytest.raises(BadRequest, match="limit"):
            search_profiles(conn, query="user", limit=0)


def test_a_merge_leaves_only_the_survivor_with_both_profiles_identifiers(engine: Engine) -> None:
    pipe = _pipeline()
    ingest(
        engine,
        [
            {"type": "identify", "anonymousId": "a1", "traits": {"email": "kim@example.com"}},
            {"type": "identify", "userId": "kim-1", "traits": {"name": "Kim Lee"}},
        ],
    )
    process(engine, pipe)
    assert len(_found(engine, "kim")) == 2
    ingest(engine, [{"type": "identify", "userId": "kim-1", "anonymousId": "a1"}])
    process(engine, pipe)
    survivor = profile_id(engine, "user_id:kim-1")
    assert profile_id(engine, "email:kim@example.com") == survivor
    for typed in ("kim", "kim@example.com", "kim-1", "lee"):
        assert _found(engine, typed) == [survivor], typed
    assert [row[1] for row in _rows(engine)] == [survivor]


def test_rebuild_and_unmerge_give_the_same_answers(engine: Engine) -> None:
    pipe = _pipeline()
    ingest(
        engine,
        [
            JO,
            ANN,
            {"type": "identify", "anonymousId": "a2", "traits": {"email": "ann@example.org"}},
            {"type": "identify", "userId": "u10", "anonymousId": "a2"},
        ],
    )
    process(engine, pipe)
    queries = ("smi", "u1", "ann@example.org", "+4479", "acme")
    before = {query: _found(engine, query) for query in queries}
    rows = _rows(engine)
    with engine.begin() as conn:
        reset_derived_state(conn, stages=pipe.stages)
    assert _rows(engine) == [] and _found(engine, "smi") == []
    process(engine, pipe)
    assert _rows(engine) == rows
    assert {query: _found(engine, query) for query in queries} == before

    ann = profile_id(engine, "user_id:u10")
    with engine.begin() as conn:
        merge_id = conn.execute(sa.text("SELECT id FROM profile_merges")).scalar_one()
        split = unmerge(conn, pipe, profile_id=ann, merge_id=merge_id, actor="test")
    assert _found(engine, "ann@example.org") == [split.restored_id]
    assert _found(engine, "ann smithers") == [split.survivor_id]


def test_the_backfill_of_an_existing_store_equals_the_processors_index(engine: Engine) -> None:
    ingest(engine, [JO, ANN, {"type": "group", "userId": "u10", "groupId": "g1",
                              "traits": {"name": "Globex"}}])  # fmt: skip
    process(engine, _pipeline())
    kept = _rows(engine)
    assert any(row[5] == "Globex" for row in kept)  # an account's name is the company
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM profile_search"))
        assert index_all_profiles(conn) == len(kept)
    assert _rows(engine) == kept
    assert _found(engine, "glob") == [profile_id(engine, "user_id:u10")]


def test_traits_only_sent_in_context_are_searchable(engine: Engine) -> None:
    ingest(
        engine,
        [
            {
                "type": "track",
                "userId": "u7",
                "event": "Signed Up",
                "context": {"traits": {"email": "pat@example.net", "name": "Pat Doe"}},
            }
        ],
    )
    process(engine, _pipeline())
    assert _found(engine, "pat doe") == [profile_id(engine, "user_id:u7")]


# Operators and quoting of both query languages, and anything else.
_SYNTAX = st.sampled_from(
    ['"', "'", "*", "-", "+", "^", ":", "(", ")", "NEAR", "AND", "OR", "NOT", "&", "|", "!",
     "<->", "\\", "%", "_", "{", "}", "\x00", " ", "jo", "smith", "u1", "ox:", "p:"]
)  # fmt: skip
_QUERIES = st.one_of(
    st.text(max_size=80), st.lists(_SYNTAX, max_size=12).map("".join), st.text(min_size=150)
)


@given(query=_QUERIES, personal=st.booleans())
@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_no_query_text_makes_the_database_raise(engine: Engine, query: str, personal: bool) -> None:
    if not _rows(engine):
        ingest(engine, [JO, ANN])
        process(engine, _pipeline())
    with engine.connect() as conn:
        page = search_profiles(conn, query=query, personal=personal, limit=5)
    assert len(page["items"]) <= 5


moves = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", None]),
        st.sampled_from(["a1", "a2", "a3"]),
        st.sampled_from([None, "x@example.com", "y@example.com"]),
        st.sampled_from([None, "Jo", "Ann"]),
    ),
    min_size=1,
    max_size=10,
)


@given(batch=moves, step=st.integers(1, 4))
@settings(
    max_examples=examples(20),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_the_index_kept_batch_by_batch_equals_the_rebuilt_one(
    engine: Engine, batch: list[tuple[str | None, str, str | None, str | None]], step: int
) -> None:
    pipe = _pipeline()
    with engine.begin() as conn:
        reset_derived_state(conn, stages=pipe.stages)
        conn.execute(sa.text("DELETE FROM events"))
    messages = []
    for user, anon, email, name in batch:
        traits = {k: v for k, v in (("email", email), ("name", name)) if v}
        message: dict[str, Any] = {"type": "identify", "anonymousId": anon, "traits": traits}
        if user:
            message["userId"] = user
        messages.append(message)
    ingest(engine, messages)
    process(engine, pipe, limit=step)
    incremental = _rows(engine)
    with engine.connect() as conn:  # what the profiles as they are now should have
        conn.execute(sa.text("DELETE FROM profile_search"))
        index_all_profiles(conn)
        assert _rows_of(conn) == incremental
        conn.rollback()
    with engine.begin() as conn:
        reset_derived_state(conn, stages=pipe.stages)
    process(engine, pipe)
    assert _rows(engine) == incremental


def test_upgrading_a_store_indexes_the_profiles_it_already_has(engine: Engine) -> None:
    from alembic import command

    from tessera.store import upgrade
    from tessera.store.migrate import alembic_config

    ingest(engine, [JO, ANN])
    process(engine)  # a processor without the search stage: nothing indexed
    config = alembic_config()
    with engine.connect() as conn:  # back to a store from before the search
        config.attributes["connection"] = conn
        command.downgrade(config, "0009")
        conn.commit()
    upgrade(engine)
    assert _found(engine, "smi") == [
        profile_id(engine, "user_id:u10"),
        profile_id(engine, "user_id:u1"),
    ]
    assert _found(engine, "+4479") == [profile_id(engine, "user_id:u1")]


def test_a_profile_with_hundreds_of_identifiers_keeps_its_oldest_in_the_index(
    engine: Engine,
) -> None:
    from tessera.profiles.search_index import MAX_IDENTIFIERS, MAX_PER_TYPE, load_rows

    ingest(engine, [{"type": "identify", "userId": "many"}])
    process(engine, _pipeline())
    pid = profile_id(engine, "user_id:many")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO identities (type, value, profile_id, first_seq) "
                "VALUES (:t, :v, :p, :s)"
            ),
            [{"t": f"crm_{n % 10}", "v": f"id-{n}", "p": pid, "s": 100 + n} for n in range(300)],
        )
        (row,) = load_rows(conn, [pid]).values()
    assert row is not None
    exact = [term for term in row["terms"].split() if term.startswith("ox:")]
    assert len(exact) == MAX_IDENTIFIERS  # user_id and the oldest custom ones
    assert "ox:many" in exact and "ox:id0" in exact and "ox:id299" not in exact
    assert (
        sum(term.startswith("ox:id") and int(term[5:]) % 10 == 3 for term in exact) <= MAX_PER_TYPE
    )
