# SPDX-License-Identifier: Apache-2.0
"""A bulk deployment's input file: V1's UTF-8 JSON lines, streamed from S3 or a local file.

Each line is one record, `{"GroupId": ..., "GroupVersionId": ..., "DeploymentType":
"NewDeployment"}`, as AWS IoT Greengrass V1 reads it. A line that isn't such a record is an
`InvalidRecord` with its line number and the reason, counted in `InvalidInputRecords` and
shown in the detailed report; it never stops the others. Blank lines are skipped and counted
as nothing, so a file ending in a newline (or spaced for reading) means what it looks like.

The file is read in chunks and split here (`LineSplitter`, no I/O), so a 100,000-line file is
never held whole, and a line longer than any record can be is dropped as it streams, not
buffered. Only the object being missing or unreadable is an error of the whole file
(`BulkInputError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edge.cloud import s3
from edge.cloud.errors import BulkInputError
from edge.config import AwsSettings

# botocore's exceptions are imported where S3 is read (PLC0415 below): the API and the CLI
# parse locations and records with this module, and botocore would cost every `edge cloud`
# command its import time.

#: AWS's limit: "This file must be less than 100 MB".
MAX_INPUT_BYTES: Final = 100 * 1024 * 1024
#: Longest line kept. A record is about 150 bytes (two UUIDs and a type); 4 KiB leaves room for
#: whitespace and long imported ids while a runaway line (a binary file, a missing newline in a
#: generated file) is dropped without buffering it.
MAX_LINE_BYTES: Final = 4096
#: Bytes read at a time: large enough that 100 MB is a hundred reads, small in memory.
CHUNK_BYTES: Final = 1024 * 1024
#: The members of a record, as V1 names them.
KEYS: Final = ("GroupId", "GroupVersionId", "DeploymentType")
#: The one type a bulk deployment takes, as in AWS ("supports only NewDeployment").
NEW_DEPLOYMENT: Final = "NewDeployment"
#: Characters of a bad value quoted back in a reason.
_QUOTE: Final = 60


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One valid line: a group version to deploy."""

    line: int
    group_id: str
    group_version_id: str
    deployment_type: str = NEW_DEPLOYMENT


@dataclass(frozen=True, slots=True)
class InvalidRecord:
    """One line that is not a record, and why (for `InvalidInputRecords` and the report)."""

    line: int
    reason: str


Entry = InputRecord | InvalidRecord


@dataclass(frozen=True, slots=True)
class Location:
    """Where an input file is: an S3 object, or (for `edge cloud`) a local path."""

    uri: str
    bucket: str | None = None
    key: str | None = None
    path: Path | None = None


def parse_location(uri: str, *, allow_local: bool) -> Location:
    """Parse `s3://bucket/key`, or a local path when `allow_local` (the CLI reads its own files).

    Raises:
        BulkInputError: Not an `s3://bucket/key` URI (or, when local paths are allowed, empty).
    """
    if uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise BulkInputError(uri, "must be s3://BUCKET/KEY, naming the object")
        return Location(uri, bucket=bucket, key=key)
    if "://" in uri or not allow_local or not uri:
        where = "an s3://BUCKET/KEY URI" + (" or a local path" if allow_local else "")
        raise BulkInputError(uri, f"must be {where}")
    return Location(uri, path=Path(uri))


class LineSplitter:
    """Split a byte stream into numbered lines, dropping over-long ones as they stream (no I/O).

    `feed` takes each chunk and returns the lines it completed; `close` returns the last line
    if the data didn't end with a newline. A line longer than the limit comes out as
    `(number, None)`, once its end is reached, and its bytes are never held.
    """

    def __init__(self, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._max = max_line_bytes
        self._buffer = bytearray()
        self._line = 0
        self._too_long = False

    def feed(self, data: bytes) -> list[tuple[int, bytes | None]]:
        """Take the next chunk; return the lines it completes, numbered from 1."""
        lines: list[tuple[int, bytes | None]] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._keep(data[start:])
                return lines
            self._keep(data[start:end])
            lines.append(self._emit())
            start = end + 1

    def close(self) -> list[tuple[int, bytes | None]]:
        """The end of the data: the last line, if it had no newline."""
        if not self._buffer and not self._too_long:
            return []
        return [self._emit()]

    def _keep(self, part: bytes) -> None:
        if self._too_long:
            return
        if len(self._buffer) + len(part) > self._max:
            self._too_long = True
            self._buffer.clear()
            return
        self._buffer += part

    def _emit(self) -> tuple[int, bytes | None]:
        self._line += 1
        line = None if self._too_long else bytes(self._buffer).removesuffix(b"\r")
        self._buffer.clear()
        self._too_long = False
        return self._line, line


def parse_line(number: int, raw: bytes | None) -> Entry | None:
    """A record from one line, an `InvalidRecord` saying what is wrong, or None if blank."""
    try:
        text = _text(number, raw)
        if not text.strip():
            return None
        value = _object(text)
    except _InvalidLineError as exc:
        return InvalidRecord(number, exc.reason)
    problem = _problem(value)
    if problem is not None:
        return InvalidRecord(number, problem)
    group, version, kind = (str(value[key]) for key in KEYS)
    return InputRecord(number, group, version, kind)


class _InvalidLineError(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _text(number: int, raw: bytes | None) -> str:
    if raw is None:
        raise _InvalidLineError(f"the line is longer than {MAX_LINE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _InvalidLineError(f"not UTF-8 text (byte {exc.start + 1} of the line)") from None
    # Editors on Windows save UTF-8 with a byte order mark.
    return text.removeprefix("\ufeff") if number == 1 else text


def _object(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _InvalidLineError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, dict):
        raise _InvalidLineError(f"not a JSON object {{{', '.join(KEYS)}}}")
    return value


def _problem(value: dict[str, object]) -> str | None:
    """What is wrong with a decoded record, or None."""
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        return f"unknown key {unknown[0][:_QUOTE]!r} (a record has {', '.join(KEYS)})"
    for key in KEYS:
        if key not in value:
            return f"{key} is missing"
        if not isinstance(value[key], str) or not value[key]:
            return f"{key} must be a non-empty string"
    kind = str(value["DeploymentType"])
    if kind != NEW_DEPLOYMENT:
        return (
            f"DeploymentType must be {NEW_DEPLOYMENT} (the only type a bulk deployment takes, "
            f"as in AWS), not {kind[:_QUOTE]!r}"
        )
    return None


def parse_lines(lines: Iterable[tuple[int, bytes | None]]) -> list[Entry]:
    """Parse split lines, leaving out the blank ones."""
    return [entry for n, raw in lines if (entry := parse_line(n, raw)) is not None]


async def entries(chunks: AsyncIterator[bytes], *, start_after: int = 0) -> AsyncIterator[Entry]:
    """Records and invalid lines of a chunked stream, in order.

    Args:
        chunks: The file's bytes, in pieces of any size.
        start_after: Skip lines up to this number (a runner taking over one partly read).
    """
    splitter = LineSplitter()
    async for chunk in chunks:
        for entry in parse_lines(splitter.feed(chunk)):
            if entry.line > start_after:
                yield entry
    for entry in parse_lines(splitter.close()):
        if entry.line > start_after:
            yield entry


@dataclass(frozen=True, slots=True)
class InputFile:
    """What `check` found: the file's size, and its S3 ETag (None for a local file)."""

    size: int
    etag: str | None = None


async def check(location: Location, aws: AwsSettings) -> InputFile:
    """Check that the input file is there and not too large.

    Raises:
        BulkInputError: No such object, bucket or file; unreadable; 100 MB or more.
    """
    etag = None
    if location.path is not None:
        try:
            size = (await asyncio.to_thread(location.path.stat)).st_size
        except OSError as exc:
            raise BulkInputError(location.uri, f"can't be read: {exc.strerror}") from None
    else:
        with _s3_errors(location):
            async with s3.client(aws) as client:
                head = await client.head_object(Bucket=location.bucket, Key=location.key)
        size, etag = int(head.get("ContentLength", 0)), head.get("ETag")
    if size >= MAX_INPUT_BYTES:
        raise BulkInputError(location.uri, f"is {size} bytes; the limit is under 100 MB, as AWS's")
    return InputFile(size, etag)


async def read_chunks(
    location: Location, aws: AwsSettings, *, etag: str | None = None
) -> AsyncIterator[bytes]:
    """The input file's bytes, a chunk at a time, up to the 100 MB limit.

    Args:
        location: Where the file is.
        aws: Where S3 is.
        etag: The S3 object's ETag when the bulk deployment started: a runner taking over
            reads the very file the first one read, or fails rather than mix two files.

    Raises:
        BulkInputError: The file is missing, unreadable, changed since `etag`, or grows past
            the limit while read.
    """
    total = 0
    if location.path is not None:
        source = _file_chunks(location)
    else:
        source = _s3_chunks(location, aws, etag)
    async for chunk in source:
        total += len(chunk)
        if total >= MAX_INPUT_BYTES:
            raise BulkInputError(location.uri, "is 100 MB or more; the limit is AWS's")
        yield chunk


async def _file_chunks(location: Location) -> AsyncIterator[bytes]:
    assert location.path is not None  # noqa: S101 - the caller picked this source for a path
    try:
        handle = await asyncio.to_thread(location.path.open, "rb")
    except OSError as exc:
        raise BulkInputError(location.uri, f"can't be read: {exc.strerror}") from None
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
            yield chunk
    except OSError as exc:
        raise BulkInputError(location.uri, f"can't be read: {exc.strerror}") from None
    finally:
        handle.close()


async def _s3_chunks(
    location: Location, aws: AwsSettings, etag: str | None
) -> AsyncIterator[bytes]:
    with _s3_errors(location):
        async with s3.client(aws) as client:
            answer = await client.get_object(
                Bucket=location.bucket, Key=location.key, **({"IfMatch": etag} if etag else {})
            )
            async with answer["Body"] as body:
                while chunk := await body.read(CHUNK_BYTES):
                    yield chunk


@contextlib.contextmanager
def _s3_errors(location: Location) -> Iterator[None]:
    """Turn S3's and botocore's errors into one BulkInputError naming the file."""
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - see the imports

    uri = location.uri
    try:
        yield
    except ClientError as exc:
        code = s3.error_code(exc)
        if code == "NoSuchBucket":
            raise BulkInputError(uri, f"there is no bucket {location.bucket!r}") from None
        if code in s3.NOT_FOUND:
            raise BulkInputError(uri, "there is no such object (or bucket)") from None
        if code in {"PreconditionFailed", "412"}:
            raise BulkInputError(
                uri, "the object changed since the bulk deployment started"
            ) from None
        raise BulkInputError(uri, f"S3 refused to give it: {code}") from None
    except (BotoCoreError, OSError) as exc:
        raise BulkInputError(uri, f"could not reach S3: {exc}") from None
