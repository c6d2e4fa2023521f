"""The file export destination: what `write_table` writes is what pyarrow and DuckDB read
back, in every format; files appear whole or not at all; the destination names, rewrites
and checks its files; its config refuses what cannot work, naming the field."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import duckdb
import fsspec  # type: ignore[import-untyped]
import orjson
import pyarrow.csv as pa_csv  # type: ignore[import-untyped]
import pyarrow.json as pa_json  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.activation.files import (
    MESSAGE_COLUMNS,
    FileConfig,
    FileDestination,
    write_table,
)
from tessera.activation.plugins import (
    ENTRY_POINT_GROUP,
    AudienceSnapshot,
    DeliveryFailed,
    DestinationType,
    Message,
    parse_config,
)
from tessera.errors import BadRequest

FORMATS = ("csv", "jsonl", "parquet")
PARIS = timezone(timedelta(hours=2))
ROWS: list[dict[str, Any]] = [
    {
        "id": 1,
        "text": 'comma, "quote"\nnew line',
        "nested": {"a": {"b": [1, 2]}, "emoji": "🙂"},
        "tags": ["x", "y,z"],
        "maybe": None,
        "at": datetime(2026, 3, 1, 14, 0, tzinfo=PARIS),
        "score": 1.5,
        "flag": True,
    },
    {
        "id": 2,
        "text": "日本語 ünïcödé\r\n'single'",
        "nested": {"a": {"b": []}, "emoji": "é"},
        "tags": [],
        "maybe": "x",
        "at": datetime(2026, 3, 1, 12, 0, 0, 123456),  # naive: taken as UTC
        "score": -0.25,
        "flag": False,
    },
    {
        "id": 3,
        "text": "tab\there; semi,",
        "nested": None,
        "tags": None,
        "maybe": None,
        "at": None,
        "score": None,
        "flag": None,
    },
]
COLUMNS = list(ROWS[0])
READERS = {"csv": "read_csv", "jsonl": "read_json", "parquet": "read_parquet"}


def sql(query: str) -> duckdb.DuckDBPyRelation:
    relation = duckdb.sql(query)
    assert relation is not None
    return relation


def utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def expected(rows: list[dict[str, Any]], *, nested_as_json: bool) -> list[dict[str, Any]]:
    """What a reader should get back: datetimes in UTC; dicts and lists as JSON text in
    CSV and Parquet, as themselves in JSON Lines."""
    out = []
    for row in rows:
        line = dict(row)
        line["at"] = utc(row["at"])
        if nested_as_json:
            for key in ("nested", "tags"):
                line[key] = None if row[key] is None else orjson.dumps(row[key]).decode()
        out.append(line)
    return out


def with_datetimes(rows: list[dict[str, Any]], column: str = "at") -> list[dict[str, Any]]:
    """JSON has no datetime: parse the ISO-8601 text readers leave as a string."""
    return [
        {**row, column: datetime.fromisoformat(row[column]) if row[column] else None}
        for row in rows
    ]


def duckdb_rows(path: str, fmt: str) -> list[dict[str, Any]]:
    options = ", header=true" if fmt == "csv" else ""
    relation = sql(f"select * from {READERS[fmt]}('{path}'{options})")
    # Through Arrow: DuckDB's own conversion of time zones needs pytz.
    rows: list[dict[str, Any]] = relation.arrow().read_all().to_pylist()
    return rows


def pyarrow_rows(path: str, fmt: str) -> list[dict[str, Any]]:
    if fmt == "parquet":
        table = pq.read_table(path)
    elif fmt == "csv":
        options = pa_csv.ConvertOptions(strings_can_be_null=True)
        table = pa_csv.read_csv(path, convert_options=options)
    else:
        table = pa_json.read_json(path)
    rows: list[dict[str, Any]] = table.to_pylist()
    return with_datetimes(rows) if fmt == "jsonl" else rows


def files_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# ---------------------------------------------------------------------------------------------
# write_table


@pytest.mark.parametrize("fmt", FORMATS)
def test_awkward_values_read_back_identically_by_pyarrow_and_duckdb(
    tmp_path: Path, fmt: str
) -> None:
    path = write_table(str(tmp_path / "out"), f"people.{fmt}", fmt, COLUMNS, iter(ROWS))  # type: ignore[arg-type]
    assert path == str(tmp_path / "out" / f"people.{fmt}")
    want = expected(ROWS, nested_as_json=fmt != "jsonl")
    assert pyarrow_rows(path, fmt) == want
    assert duckdb_rows(path, fmt) == want
    assert files_in(tmp_path / "out") == [f"people.{fmt}"]  # no temporary file left


def test_jsonl_is_one_json_object_a_line_with_the_columns_in_order(tmp_path: Path) -> None:
    path = write_table(str(tmp_path), "people.jsonl", "jsonl", COLUMNS, ROWS)
    lines = Path(path).read_bytes().splitlines()
    assert len(lines) == len(ROWS)
    assert [list(orjson.loads(line)) for line in lines] == [COLUMNS] * len(ROWS)
    assert with_datetimes([orjson.loads(line) for line in lines]) == expected(
        ROWS, nested_as_json=False
    )


def test_csv_header_is_the_columns_and_extra_keys_are_left_out(tmp_path: Path) -> None:
    rows = [{"b": "2", "a": "1", "ignored": "x"}, {"a": "3"}]
    path = write_table(str(tmp_path), "t.csv", "csv", ["a", "b"], rows)
    assert Path(path).read_text() == "a,b\n1,2\n3,\n"


def test_parquet_keeps_types_and_utc_timestamps(tmp_path: Path) -> None:
    path = write_table(str(tmp_path), "t.parquet", "parquet", COLUMNS, ROWS)
    schema = pq.read_schema(path)
    assert {name: str(schema.field(name).type) for name in COLUMNS} == {
        "id": "int64",
        "text": "string",
        "nested": "string",
        "tags": "string",
        "maybe": "string",
        "at": "timestamp[us, tz=UTC]",
        "score": "double",
        "flag": "bool",
    }


def test_parquet_streams_in_chunks_and_names_a_value_that_does_not_fit(tmp_path: Path) -> None:
    many = ({"n": i, "s": f"row {i}"} for i in range(25_000))
    path = write_table(str(tmp_path), "many.parquet", "parquet", ["n", "s"], many)
    metadata = pq.read_metadata(path)
    assert metadata.num_rows == 25_000
    assert metadata.num_row_groups == 3  # chunks of 10,000: never all rows in memory
    total = sql(f"select sum(n) from read_parquet('{path}')").fetchall()
    assert total == [(sum(range(25_000)),)]

    misfit = [{"n": i} for i in range(10_000)] + [{"n": "eleven"}]
    with pytest.raises(BadRequest, match=r"row 10001, column 'n': 'eleven'.*int64"):
        write_table(str(tmp_path), "misfit.parquet", "parquet", ["n"], misfit)
    assert files_in(tmp_path) == ["many.parquet"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_rows_still_make_a_valid_file(tmp_path: Path, fmt: str) -> None:
    path = write_table(str(tmp_path), f"empty.{fmt}", fmt, ["profile_id", "traits"], [])  # type: ignore[arg-type]
    if fmt == "parquet":
        table = pq.read_table(path)
        assert table.num_rows == 0
        assert [(f.name, str(f.type)) for f in table.schema] == [
            ("profile_id", "string"),
            ("traits", "string"),
        ]
        assert sql(f"select count(*) from read_parquet('{path}')").fetchall() == [(0,)]
    elif fmt == "csv":
        assert Path(path).read_text() == "profile_id,traits\n"
        relation = sql(f"select * from read_csv('{path}', header=true)")
        assert relation.columns == ["profile_id", "traits"]
        assert relation.fetchall() == []
    else:
        assert Path(path).read_bytes() == b""


class Boom(Exception):
    pass


def failing_rows(after: int) -> Iterator[dict[str, Any]]:
    for i in range(after):
        yield {"id": i, "text": "x" * 100}
    raise Boom("the member list could not be read")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_failure_midway_leaves_neither_the_file_nor_a_temporary_one(
    tmp_path: Path, fmt: str
) -> None:
    with pytest.raises(Boom):
        write_table(str(tmp_path), f"t.{fmt}", fmt, ["id", "text"], failing_rows(15_000))  # type: ignore[arg-type]
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_failed_rewrite_leaves_the_previous_file_whole(tmp_path: Path, fmt: str) -> None:
    previous = [{"id": 1, "text": "v1"}]
    path = write_table(str(tmp_path), f"t.{fmt}", fmt, ["id", "text"], previous)  # type: ignore[arg-type]
    before = Path(path).read_bytes()
    with pytest.raises(Boom):
        write_table(str(tmp_path), f"t.{fmt}", fmt, ["id", "text"], failing_rows(5))  # type: ignore[arg-type]
    assert Path(path).read_bytes() == before
    assert files_in(tmp_path) == [f"t.{fmt}"]


def test_memory_urls_work_and_a_failure_leaves_nothing() -> None:
    fs = fsspec.filesystem("memory")
    url = f"memory://tessera-tests/{os.getpid()}/out"
    path = write_table(url, "t.parquet", "parquet", COLUMNS, ROWS)
    assert path == f"memory:///tessera-tests/{os.getpid()}/out/t.parquet"
    with fs.open(path, "rb") as handle:
        assert pq.read_table(handle).to_pylist() == expected(ROWS, nested_as_json=True)
    with pytest.raises(Boom):
        write_table(url, "broken.csv", "csv", ["id", "text"], failing_rows(10))
    assert fs.ls(f"/tessera-tests/{os.getpid()}/out", detail=False) == [
        f"/tessera-tests/{os.getpid()}/out/t.parquet"
    ]
    fs.rm(f"/tessera-tests/{os.getpid()}", recursive=True)


def test_file_urls_and_a_missing_directory(tmp_path: Path) -> None:
    path = write_table(f"file://{tmp_path}/a/b", "t.csv", "csv", ["x"], [{"x": 1}])
    assert Path(path) == tmp_path / "a" / "b" / "t.csv"
    assert Path(path).read_text() == "x\n1\n"


def test_bad_names_and_formats_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="'xlsx'"):
        write_table(str(tmp_path), "t.xlsx", "xlsx", ["x"], [])  # type: ignore[arg-type]
    for name in ("../escape.csv", ".hidden.csv", ""):
        with pytest.raises(BadRequest, match="plain name"):
            write_table(str(tmp_path), name, "csv", ["x"], [])


plain = st.one_of(st.none(), st.text(max_size=30))
COLUMN_VALUES = {
    "t": plain,
    "i": st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    # JSON has neither NaN nor infinity (orjson writes null); Parquet keeps both.
    "f": st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
}


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.fixed_dictionaries(COLUMN_VALUES), max_size=30),
    fmt=st.sampled_from(["parquet", "jsonl"]),
)
def test_round_trip_of_random_rows(
    tmp_path_factory: pytest.TempPathFactory, rows: Any, fmt: str
) -> None:
    directory = tmp_path_factory.mktemp("round-trip")
    path = write_table(str(directory), f"t.{fmt}", fmt, ["t", "i", "f"], rows)  # type: ignore[arg-type]
    if fmt == "parquet":
        back = pq.read_table(path).to_pylist()
    else:
        back = [orjson.loads(line) for line in Path(path).read_bytes().splitlines()]
    assert back == rows


# ---------------------------------------------------------------------------------------------
# the destination


def destination(url: str, **config: Any) -> FileDestination:
    kind = DestinationType("file", FileDestination)
    made = FileDestination(parse_config(kind, {"url": url, **config}))
    return made


def message(outbox_id: int, **body: Any) -> Message:
    full = {
        "messageId": f"m{outbox_id}",
        "kind": "event",
        "timestamp": "2026-03-01T12:00:00.250Z",
        "profile": {"id": f"prf_{outbox_id}", "identities": {}, "traits": {"name": 'Zoë, "Z"'}},
        "event": {"event": "Order Completed", "properties": {"total": 12.5}},
        **body,
    }
    return Message(
        outbox_id=outbox_id,
        message_id=f"m{outbox_id}",
        kind="event",
        person=f"prf_{outbox_id}",
        body=full,
        payload=full,
    )


def test_the_entry_point_is_the_file_destination() -> None:
    (entry,) = [e for e in entry_points(group=ENTRY_POINT_GROUP) if e.name == "file"]
    assert entry.load() is FileDestination
    schema = FileConfig.model_json_schema()
    assert schema["required"] == ["url"]
    assert all(field.get("description") for field in schema["properties"].values())


@pytest.mark.parametrize("fmt", FORMATS)
def test_deliver_writes_one_file_per_batch_named_by_its_outbox_ids(
    tmp_path: Path, fmt: str
) -> None:
    dest = destination(str(tmp_path), format=fmt, file_prefix="shop.eu")
    batch = [message(7), message(8), message(12, timestamp="2026-03-02T09:30:00+01:00")]
    asyncio.run(dest.deliver(batch))
    name = f"shop.eu-messages-000000000007-000000000012.{fmt}"
    assert files_in(tmp_path) == [name]
    rows = duckdb_rows(str(tmp_path / name), fmt)
    assert [row["message_id"] for row in rows] == ["m7", "m8", "m12"]
    assert [row["profile_id"] for row in rows] == ["prf_7", "prf_8", "prf_12"]
    assert {row["kind"] for row in rows} == {"event"}
    assert [row["timestamp"] for row in rows] == [
        datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC),
        datetime(2026, 3, 2, 8, 30, tzinfo=UTC),
    ]
    if fmt == "jsonl":  # the payload as an object
        lines = (tmp_path / name).read_bytes().splitlines()
        payloads = [orjson.loads(line)["payload"] for line in lines]
    else:  # the payload as JSON text
        payloads = [orjson.loads(row["payload"]) for row in pyarrow_rows(str(tmp_path / name), fmt)]
    assert payloads == [m.payload for m in batch]
    assert list(rows[0]) == MESSAGE_COLUMNS


def test_a_redelivered_batch_overwrites_its_file(tmp_path: Path) -> None:
    dest = destination(str(tmp_path), format="jsonl")
    batch = [message(1), message(2)]
    asyncio.run(dest.deliver(batch))
    first = files_in(tmp_path)
    asyncio.run(dest.deliver(batch))  # the worker crashed before recording the delivery
    assert files_in(tmp_path) == first == ["tessera-messages-000000000001-000000000002.jsonl"]
    lines = (tmp_path / first[0]).read_bytes().splitlines()
    assert [orjson.loads(line)["message_id"] for line in lines] == ["m1", "m2"]


def test_an_unwritable_location_is_a_retryable_failure_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    dest = destination(str(blocker / "exports"))
    with pytest.raises(DeliveryFailed) as failed:
        asyncio.run(dest.deliver([message(1)]))
    assert str(blocker / "exports") in failed.value.reason
    assert failed.value.permanent is False


def test_deliver_snapshot_writes_the_member_list(tmp_path: Path) -> None:
    dest = destination(
        str(tmp_path), format="parquet", content="audience_members", audience_id="aud_1"
    )
    assert dest.snapshot_audience == "aud_1"
    snapshot = AudienceSnapshot(
        audience_id="aud_1",
        audience_name="VIP",
        taken_at=datetime(2026, 3, 1, 13, 4, 5, tzinfo=PARIS),
        columns=["profile_id", "traits"],
        rows=({"profile_id": f"prf_{i}", "traits": {"n": i}} for i in range(3)),
    )
    asyncio.run(dest.deliver_snapshot(snapshot))
    assert files_in(tmp_path) == ["tessera-audience-aud_1-20260301T110405Z.parquet"]
    table = pq.read_table(tmp_path / "tessera-audience-aud_1-20260301T110405Z.parquet")
    assert table.to_pylist() == [
        {"profile_id": f"prf_{i}", "traits": f'{{"n":{i}}}'} for i in range(3)
    ]


def test_how_the_worker_should_call_it() -> None:
    dest = destination("/data", interval_seconds=300, max_messages_per_file=500)
    assert (dest.batch_size, dest.concurrency, dest.interval_seconds) == (500, 1, 300)
    assert dest.snapshot_audience is None
    body = {"kind": "event"}
    assert dest.map(body) is body


def test_test_connection_on_a_writable_and_an_unwritable_directory(tmp_path: Path) -> None:
    check = asyncio.run(destination(str(tmp_path / "new" / "dir")).test_connection())
    assert check.ok, check.detail
    assert str(tmp_path / "new" / "dir") in check.detail
    assert files_in(tmp_path / "new" / "dir") == []  # the probe is gone

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    check = asyncio.run(destination(str(blocker / "sub")).test_connection())
    assert not check.ok
    assert str(blocker / "sub") in check.detail

    check = asyncio.run(destination("memory://probe-test/x").test_connection())
    assert check.ok, check.detail


@pytest.mark.parametrize(
    ("config", "field", "fragment"),
    [
        ({"content": "audience_members"}, "audience_id", "required when content"),
        ({"audience_id": "aud_1"}, "audience_id", "only used when content"),
        ({"file_prefix": "../etc"}, "file_prefix", "'../etc' is not a safe"),
        ({"file_prefix": ""}, "file_prefix", "not a safe"),
        ({"format": "xlsx"}, "format", "csv"),
        ({"interval_seconds": 0.5}, "interval_seconds", "greater than or equal to 1"),
        ({"max_messages_per_file": 1_000_001}, "max_messages_per_file", "1000000"),
        ({"url": "   "}, "url", "give a directory"),
        ({"url": "nosuchfs://bucket"}, "url", "'nosuchfs'"),
        ({"colour": "blue"}, "colour", "Extra inputs"),
    ],
)
def test_config_errors_name_the_field(config: dict[str, Any], field: str, fragment: str) -> None:
    kind = DestinationType("file", FileDestination)
    with pytest.raises(BadRequest) as refused:
        parse_config(kind, {"url": "/data", **config})
    assert field in str(refused.value)
    assert fragment in str(refused.value)


def test_config_defaults() -> None:
    config = FileConfig(url=" s3://bucket/prefix ")
    assert config.model_dump() == {
        "url": "s3://bucket/prefix",
        "format": "jsonl",
        "content": "messages",
        "audience_id": None,
        "interval_seconds": 60,
        "max_messages_per_file": 10_000,
        "file_prefix": "tessera",
    }
