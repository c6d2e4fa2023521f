"""The file export destination: messages, or an audience's members, written as CSV, JSON
Lines or Parquet files into a directory or object-store prefix (fsspec), one file at a time
and atomically, so a reader never sees half a file."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import glob
import io
import itertools
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime
from typing import IO, Any, ClassVar, Literal

import fsspec  # type: ignore[import-untyped]
import orjson
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tessera.activation.plugins import (
    AudienceSnapshot,
    ConnectionCheck,
    DeliveryFailed,
    Destination,
    Message,
)
from tessera.errors import BadRequest, ConfigurationError

Format = Literal["csv", "jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl", "parquet")
MESSAGE_COLUMNS = ["message_id", "kind", "timestamp", "profile_id", "payload"]
# Rows per Parquet row group: bounded memory whatever the number of rows.
CHUNK_ROWS = 10_000
_JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# -- writing one file -------------------------------------------------------------------


def write_table(
    url: str, name: str, fmt: Format, columns: list[str], rows: Iterable[dict[str, Any]]
) -> str:
    """Write `rows` (only `columns`, in that order) as one file `name` in the directory
    `url` (a path or an fsspec URL), creating the directory; return the file's path (local)
    or URL. `rows` is consumed once, as a stream. The file appears whole or not at all.

    Raises OSError when the file system refuses, ConfigurationError for a URL no installed
    file system can open, BadRequest for a value that does not fit its Parquet column.
    """
    if fmt not in FORMATS:
        raise BadRequest(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not name or "/" in name or name.startswith("."):
        raise BadRequest(f"file name {name!r} must be a plain name, without '/' or a leading '.'")
    fs, directory = _filesystem(url)
    fs.makedirs(directory, exist_ok=True)
    final = f"{directory.rstrip('/')}/{name}"
    if isinstance(fs, LocalFileSystem):
        _write_local(final, fmt, columns, rows)
        return final
    # Object stores make an upload visible only when it completes (a put, or a multipart
    # upload's completion), which is the atomicity the rename gives on a local disk; so the
    # final name is written directly. The file is never closed on failure: closing would
    # complete the upload of half a file.
    target = fs.open(final, "wb")
    try:
        _write(target, fmt, columns, rows)
    except BaseException:
        # Cleaning up must not hide why the write failed.
        with contextlib.suppress(Exception):
            discard = getattr(target, "discard", None)
            if callable(discard):
                discard()
            # Some file systems (memory://) show the path from the moment it is opened; a
            # failed write must leave no file under the final name.
            if fs.exists(final):
                fs.rm(final)
        raise
    target.close()
    return str(fs.unstrip_protocol(final))


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        fs, directory = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        # An unknown protocol, or one whose package (s3fs, gcsfs...) is not installed.
        raise ConfigurationError(f"cannot open the file location {url!r}: {exc}") from exc
    return fs, str(directory)


def remove_temporary_files(
    directory: str, name: str, *, older_than: datetime | None = None
) -> list[str]:
    """Remove the temporary files that writes of `name` (a glob pattern: `audience-*`) left
    in the local `directory` when their process died before it could; only those last
    changed before `older_than`, if given. Returns their paths."""
    removed = []
    for temporary in glob.glob(os.path.join(glob.escape(directory), f".{name}.tmp-*")):
        with contextlib.suppress(FileNotFoundError):
            if older_than is None or os.path.getmtime(temporary) < older_than.timestamp():
                os.remove(temporary)
                removed.append(temporary)
    return removed


def _write_local(final: str, fmt: Format, columns: list[str], rows: Iterable[Any]) -> None:
    # A temporary name in the same directory, then a rename: on one file system the rename
    # is atomic (os.replace), so a reader sees the previous file or the whole new one.
    # (`remove_temporary_files` knows this name.)
    directory, name = os.path.split(final)
    temporary = os.path.join(directory, f".{name}.tmp-{secrets.token_hex(6)}")
    try:
        with open(temporary, "wb") as target:
            _write(target, fmt, columns, rows)
            target.flush()
            # On disk before the rename, so a crash cannot leave the new name on an
            # empty or partial file.
            os.fsync(target.fileno())
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def _write(target: IO[bytes], fmt: Format, columns: list[str], rows: Iterable[Any]) -> None:
    if fmt == "csv":
        _write_csv(target, columns, rows)
    elif fmt == "jsonl":
        _write_jsonl(target, columns, rows)
    else:
        _write_parquet(target, columns, rows)


def _json(value: Any) -> str:
    return orjson.dumps(value, option=_JSON_OPTIONS, default=str).decode()


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _csv_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):  # JSON's spelling, which CSV readers take for booleans
        return "true" if value else "false"
    if isinstance(value, datetime):
        return _utc(value).isoformat().replace("+00:00", "Z")
    if isinstance(value, int | float | date):
        return value
    return _json(value)


def _write_csv(target: IO[bytes], columns: list[str], rows: Iterable[Any]) -> None:
    # UTF-8 without a byte-order mark, RFC 4180 quoting. An empty field is a null (CSV
    # cannot tell it from empty text; JSON Lines and Parquet can).
    text = io.TextIOWrapper(target, encoding="utf-8", newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_text(row.get(column)) for column in columns])
    text.flush()
    text.detach()  # the caller closes (or discards) the underlying file


def _jsonl_value(value: Any) -> Any:
    # Top-level datetimes in UTC, like the other formats; orjson writes nested ones as given.
    return _utc(value) if isinstance(value, datetime) else value


def _write_jsonl(target: IO[bytes], columns: list[str], rows: Iterable[Any]) -> None:
    for row in rows:
        line = {column: _jsonl_value(row.get(column)) for column in columns}
        target.write(orjson.dumps(line, option=_JSON_OPTIONS, default=str) + b"\n")


# -- Parquet ----------------------------------------------------------------------------


def _write_parquet(target: IO[bytes], columns: list[str], rows: Iterable[Any]) -> None:
    chunks = _chunks(rows)
    first = next(chunks, [])
    # The schema comes from the first chunk (a file has one schema); later values are
    # converted to it, and one that cannot be is refused by name.
    schema = pa.schema([(column, _infer(first, column)) for column in columns])
    writer = pq.ParquetWriter(target, schema, compression="zstd")
    try:
        offset = 0
        for chunk in itertools.chain([first] if first else [], chunks):
            arrays = [
                _column(chunk, column, schema.field(column).type, offset) for column in columns
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            offset += len(chunk)
    finally:
        writer.close()


def _chunks(rows: Iterable[Any]) -> Iterator[list[Any]]:
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, CHUNK_ROWS)):
        yield chunk


def _infer(chunk: list[Any], column: str) -> pa.DataType:
    kinds = {_kind(row.get(column)) for row in chunk} - {"null"}
    if kinds == {"bool"}:
        return pa.bool_()
    if kinds == {"int"}:
        return pa.int64()
    if kinds and kinds <= {"int", "float"}:
        return pa.float64()
    if kinds == {"datetime"}:
        return pa.timestamp("us", tz="UTC")
    if kinds == {"date"}:
        return pa.date32()
    return pa.string()  # text, JSON for dicts and lists, and columns of mixed or no values


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -(2**63) <= value < 2**63 else "other"
    if isinstance(value, float):
        return "float"
    if isinstance(value, datetime):
        return "datetime"
    if isinstance(value, date):
        return "date"
    return "other"


def _convert(value: Any, kind: pa.DataType) -> Any:
    """`value` as the column's type; TypeError or ValueError when it does not fit."""
    if pa.types.is_string(kind):
        return value if isinstance(value, str) else _json(value)
    if pa.types.is_timestamp(kind):
        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        if isinstance(moment, datetime):
            return _utc(moment)
    elif pa.types.is_boolean(kind):
        if isinstance(value, bool):
            return value
    elif pa.types.is_integer(kind):
        if _kind(value) == "int" or (isinstance(value, float) and value.is_integer()):
            return int(value)
    elif pa.types.is_floating(kind):
        if _kind(value) in ("int", "float"):
            return float(value)
    elif pa.types.is_date(kind) and _kind(value) == "date":
        return value
    raise TypeError(kind)


def _column(chunk: list[Any], column: str, kind: pa.DataType, offset: int) -> pa.Array:
    values = []
    for index, row in enumerate(chunk):
        value = row.get(column)
        try:
            values.append(None if value is None else _convert(value, kind))
        except (TypeError, ValueError):
            raise BadRequest(
                f"row {offset + index + 1}, column {column!r}: {value!r} does not fit the "
                f"column's type {kind}, taken from the first {CHUNK_ROWS:,} rows"
            ) from None
    return pa.array(values, type=kind)


# -- the destination --------------------------------------------------------------------


class FileConfig(BaseModel):
    """Where and how the file destination writes."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=2000,
        description=(
            "The directory to write into: a path on the server (`/data/exports`) or an fsspec "
            "URL (`file:///data/exports`, `s3://bucket/prefix`). Created if missing."
        ),
    )
    format: Format = Field(
        default="jsonl",
        description="File format: `csv`, `jsonl` (one JSON object a line) or `parquet`.",
    )
    content: Literal["messages", "audience_members"] = Field(
        default="messages",
        description=(
            "`messages`: the subscribed messages, a file per batch. `audience_members`: the "
            "whole member list of `audience_id`, a new file every `interval_seconds`."
        ),
    )
    audience_id: str | None = Field(
        default=None,
        max_length=32,
        description="The audience whose members are written; only with `audience_members`.",
    )
    interval_seconds: float = Field(
        default=60,
        ge=1,
        allow_inf_nan=False,
        description="Write at most one file this often (seconds, at least 1).",
    )
    max_messages_per_file: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="At most this many messages in one file (1 to 1,000,000).",
    )
    file_prefix: str = Field(
        default="tessera",
        description=(
            "The start of every file name: 1 to 64 of letters, digits, `.`, `_` and `-`, "
            "starting with a letter or digit."
        ),
    )

    @field_validator("url")
    @classmethod
    def _known_location(cls, url: str) -> str:
        url = url.strip()
        if not url:
            raise ValueError("give a directory path or an fsspec URL such as s3://bucket/prefix")
        protocol, _ = fsspec.core.split_protocol(url)
        if protocol is not None and protocol not in fsspec.available_protocols():
            raise ValueError(
                f"{protocol!r} is not a file system protocol fsspec knows; use a path, "
                "file://, s3://, gs://, az:// and the like"
            )
        return url

    @field_validator("file_prefix")
    @classmethod
    def _safe_prefix(cls, prefix: str) -> str:
        if not _PREFIX.match(prefix):
            raise ValueError(
                f"{prefix!r} is not a safe file-name prefix: use 1 to 64 of letters, digits, "
                "'.', '_' and '-', starting with a letter or digit"
            )
        return prefix

    @model_validator(mode="after")
    def _audience_when_members(self) -> FileConfig:
        if self.content == "audience_members" and not self.audience_id:
            raise ValueError(
                "audience_id is required when content is 'audience_members': name the "
                "audience whose members to write"
            )
        if self.content == "messages" and self.audience_id:
            raise ValueError(
                f"audience_id ({self.audience_id!r}) is only used when content is "
                "'audience_members'; remove it, or set content to 'audience_members'"
            )
        return self


class FileDestination(Destination):
    """Writes each batch of messages, or an audience's member list, as one file."""

    title: ClassVar[str] = "Files (CSV, JSON Lines, Parquet)"
    description: ClassVar[str] = (
        "Write messages, or an audience's members on a schedule, as files into a directory "
        "or an object store (S3, GCS, Azure) for a warehouse or a batch job to pick up."
    )
    config_model: ClassVar[type[BaseModel]] = FileConfig

    def __init__(self, config: BaseModel) -> None:
        if not isinstance(config, FileConfig):
            raise TypeError(f"the file destination takes a FileConfig, not {type(config)}")
        super().__init__(config)
        self.file_config = config

    @property
    def batch_size(self) -> int:
        return self.file_config.max_messages_per_file

    @property
    def concurrency(self) -> int:
        return 1  # files are named by their outbox ids; one writer keeps them in order

    @property
    def interval_seconds(self) -> float:
        return self.file_config.interval_seconds

    @property
    def snapshot_audience(self) -> str | None:
        if self.file_config.content == "audience_members":
            return self.file_config.audience_id
        return None

    @property
    def _extension(self) -> str:
        return self.file_config.format

    async def deliver(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        ids = [message.outbox_id for message in messages]
        # Named by the batch's outbox ids: when a crash makes the worker deliver the same
        # batch again, it overwrites the same file instead of writing a second copy.
        name = (
            f"{self.file_config.file_prefix}-messages-{min(ids):012d}-{max(ids):012d}"
            f".{self._extension}"
        )
        rows = [_message_row(message) for message in messages]
        await self._write(name, MESSAGE_COLUMNS, rows)

    async def deliver_snapshot(self, snapshot: AudienceSnapshot) -> None:
        taken = _utc(snapshot.taken_at)
        name = (
            f"{self.file_config.file_prefix}-audience-{snapshot.audience_id}-"
            f"{taken:%Y%m%dT%H%M%SZ}.{self._extension}"
        )
        await self._write(name, snapshot.columns, snapshot.rows)

    async def _write(self, name: str, columns: list[str], rows: Iterable[dict[str, Any]]) -> None:
        where = f"{self.file_config.url.rstrip('/')}/{name}"
        try:
            await asyncio.to_thread(
                write_table, self.file_config.url, name, self.file_config.format, columns, rows
            )
        except BadRequest as exc:
            # A value that cannot be written now never will be: retrying cannot help.
            raise DeliveryFailed(f"cannot write {where}: {exc}", permanent=True) from exc
        except (OSError, ConfigurationError) as exc:
            raise DeliveryFailed(f"cannot write {where}: {exc}") from exc

    async def test_connection(self) -> ConnectionCheck:
        url = self.file_config.url
        return await asyncio.to_thread(_probe, url)


def _message_row(message: Message) -> dict[str, Any]:
    profile = message.body.get("profile")
    profile_id = profile.get("id") if isinstance(profile, dict) else None
    timestamp = message.body.get("timestamp")
    if isinstance(timestamp, str):
        # Kept as given if it is not ISO 8601; the Parquet writer names it if it misfits.
        with contextlib.suppress(ValueError):
            timestamp = datetime.fromisoformat(timestamp)
    return {
        "message_id": message.message_id,
        "kind": message.kind,
        "timestamp": timestamp,
        "profile_id": profile_id or message.person,
        "payload": message.body if message.payload is None else message.payload,
    }


def _probe(url: str) -> ConnectionCheck:
    """Create the directory, write a small file and remove it; say what happened."""
    try:
        fs, directory = _filesystem(url)
        fs.makedirs(directory, exist_ok=True)
        probe = f"{directory.rstrip('/')}/.tessera-probe-{secrets.token_hex(6)}"
        fs.pipe_file(probe, b"tessera connection check\n")
        fs.rm(probe)
    except Exception as exc:  # anything at all is an answer, never an error
        return ConnectionCheck(False, f"cannot write to {url!r}: {type(exc).__name__}: {exc}")
    return ConnectionCheck(True, f"wrote and removed a probe file in {url!r}")
