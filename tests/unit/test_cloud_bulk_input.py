"""The bulk input file: V1's JSON lines, split as they stream, bad lines reported, never fatal."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import boto3
import pytest

from edge.cloud.bulk.input import (
    MAX_LINE_BYTES,
    InputRecord,
    InvalidRecord,
    LineSplitter,
    check,
    entries,
    parse_line,
    parse_location,
    read_chunks,
)
from edge.cloud.errors import BulkInputError
from edge.config import AwsSettings
from edge.fixtures.services import TEST_REGION, MotoServer

G1 = "11111111-1111-4111-8111-111111111111"
V1 = "22222222-2222-4222-8222-222222222222"


def record(group: str = G1, version: str = V1, kind: str = "NewDeployment") -> bytes:
    value = {"GroupId": group, "GroupVersionId": version, "DeploymentType": kind}
    return json.dumps(value).encode()


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def collect(data: bytes, size: int = 7, start_after: int = 0) -> list[object]:
    return [e async for e in entries(chunked(data, size), start_after=start_after)]


def test_splitter_gives_the_same_lines_whatever_the_chunking() -> None:
    """Lines come out numbered and whole, fed a byte at a time or all at once; CRLF is a newline."""
    data = b"one\r\ntwo\n\nthree"
    for size in (1, 2, 5, len(data)):
        splitter = LineSplitter()
        lines = []
        for i in range(0, len(data), size):
            lines += splitter.feed(data[i : i + size])
        lines += splitter.close()
        assert lines == [(1, b"one"), (2, b"two"), (3, b""), (4, b"three")]


def test_splitter_drops_an_over_long_line_without_holding_it() -> None:
    """A line past the limit comes out as None at its end; the next line is whole again."""
    splitter = LineSplitter(max_line_bytes=10)
    out = splitter.feed(b"x" * 8)
    out += splitter.feed(b"x" * 8)
    assert len(splitter._buffer) == 0  # the over-long line's bytes are not kept
    out += splitter.feed(b"xx\nshort\n")
    out += splitter.close()
    assert out == [(1, None), (2, b"short")]


async def test_valid_records_with_their_line_numbers() -> None:
    """Each valid line is a record; blank lines are skipped but keep the numbering true."""
    data = record() + b"\n\n   \n" + record(group="g2", version="v2") + b"\n"
    assert await collect(data) == [
        InputRecord(1, G1, V1, "NewDeployment"),
        InputRecord(4, "g2", "v2", "NewDeployment"),
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"GroupId": ', "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"GroupId": "g", "GroupVersionId": "v"}', "DeploymentType is missing"),
        (b'{"GroupVersionId": "v", "DeploymentType": "NewDeployment"}', "GroupId is missing"),
        (
            b'{"GroupId": 5, "GroupVersionId": "v", "DeploymentType": "NewDeployment"}',
            "GroupId must be a non-empty string",
        ),
        (
            b'{"GroupId": "g", "GroupVersionId": "", "DeploymentType": "NewDeployment"}',
            "GroupVersionId must be a non-empty string",
        ),
        (record(kind="Redeployment"), "DeploymentType must be NewDeployment"),
        (record(kind="ResetDeployment"), "not 'ResetDeployment'"),
        (
            b'{"GroupId": "g", "GroupVersionID": "v", "DeploymentType": "NewDeployment"}',
            "unknown key 'GroupVersionID'",
        ),
        (b'{"GroupId": "\xff\xfe"}', "not UTF-8 text"),
        (b"x" * (MAX_LINE_BYTES + 1), f"longer than {MAX_LINE_BYTES} bytes"),
    ],
)
async def test_an_invalid_line_is_reported_with_its_reason(line: bytes, reason: str) -> None:
    """A bad line becomes an InvalidRecord saying why; the lines around it still count."""
    got = await collect(record() + b"\n" + line + b"\n" + record(group="after"))
    assert got[0] == InputRecord(1, G1, V1)
    assert isinstance(got[1], InvalidRecord)
    assert got[1].line == 2
    assert reason in got[1].reason
    assert got[2] == InputRecord(3, "after", V1)


def test_a_byte_order_mark_on_the_first_line_is_allowed() -> None:
    """A file saved as UTF-8 with BOM reads like one without."""
    assert parse_line(1, b"\xef\xbb\xbf" + record()) == InputRecord(1, G1, V1)


async def test_reading_resumes_after_a_line() -> None:
    """A runner taking over a half-read file skips the lines already loaded."""
    data = b"\n".join(record(group=f"g{i}") for i in range(1, 6))
    got = await collect(data, start_after=3)
    assert [e.line for e in got if isinstance(e, InputRecord)] == [4, 5]


async def test_records_come_out_before_the_file_ends() -> None:
    """The reader streams: the first record is available while the rest is still unread."""
    gate = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield record() + b"\n"
        await gate.wait()
        yield record(group="late")

    stream = entries(slow())
    first = await asyncio.wait_for(anext(stream), timeout=5)
    assert first == InputRecord(1, G1, V1)
    gate.set()
    assert [e async for e in stream] == [InputRecord(2, "late", V1)]


def test_locations() -> None:
    """s3://bucket/key always; a local path only where the CLI reads its own files."""
    loc = parse_location("s3://b/dir/input.jsonl", allow_local=False)
    assert (loc.bucket, loc.key) == ("b", "dir/input.jsonl")
    assert parse_location("in.jsonl", allow_local=True).path == Path("in.jsonl")
    for bad, local in [("s3://bucket", False), ("s3:///key", False), ("in.jsonl", False)]:
        with pytest.raises(BulkInputError, match="s3://BUCKET/KEY"):
            parse_location(bad, allow_local=local)
    with pytest.raises(BulkInputError, match=r"^--input-file-uri: https://example\.com/x: must be"):
        parse_location("https://example.com/x", allow_local=True)


async def test_a_local_file_of_100000_lines(tmp_path: Path) -> None:
    """A large file is read a chunk at a time and every line is accounted for."""
    path = tmp_path / "input.jsonl"
    path.write_bytes(b"\n".join(record(group=f"g{i}") for i in range(100_000)) + b"\nnope\n")
    location = parse_location(str(path), allow_local=True)
    aws = AwsSettings(region=TEST_REGION)
    assert (await check(location, aws)).size == path.stat().st_size
    valid = invalid = 0
    async for entry in entries(read_chunks(location, aws)):
        if isinstance(entry, InputRecord):
            valid += 1
        else:
            invalid += 1
            assert entry.line == 100_001
    assert (valid, invalid) == (100_000, 1)


async def test_a_missing_local_file_is_one_clear_error(tmp_path: Path) -> None:
    location = parse_location(str(tmp_path / "nope.jsonl"), allow_local=True)
    with pytest.raises(BulkInputError, match=r"nope\.jsonl: can't be read"):
        await check(location, AwsSettings(region=TEST_REGION))


@pytest.mark.network
async def test_an_s3_object_is_streamed(moto: MotoServer) -> None:
    """The input file is read from S3 through the control plane's S3 client."""
    s3 = boto3.client("s3", region_name=TEST_REGION, endpoint_url=moto.url)
    s3.create_bucket(Bucket="bulk-in")
    body = b"\n".join([record(), b"{bad", record(group="g3")])
    s3.put_object(Bucket="bulk-in", Key="run/1.jsonl", Body=body)
    aws = AwsSettings(region=TEST_REGION, endpoint_url=moto.url)
    location = parse_location("s3://bulk-in/run/1.jsonl", allow_local=False)
    found = await check(location, aws)
    assert found.size == len(body)
    got = [e async for e in entries(read_chunks(location, aws, etag=found.etag))]
    assert got[0] == InputRecord(1, G1, V1)
    assert isinstance(got[1], InvalidRecord)
    assert got[2] == InputRecord(3, "g3", V1)


@pytest.mark.network
async def test_an_s3_object_replaced_after_the_start_is_refused(moto: MotoServer) -> None:
    """A runner reads the object the bulk deployment started with, or fails: never a mix."""
    s3 = boto3.client("s3", region_name=TEST_REGION, endpoint_url=moto.url)
    s3.create_bucket(Bucket="bulk-in")
    s3.put_object(Bucket="bulk-in", Key="in.jsonl", Body=record())
    aws = AwsSettings(region=TEST_REGION, endpoint_url=moto.url)
    location = parse_location("s3://bulk-in/in.jsonl", allow_local=False)
    found = await check(location, aws)
    s3.put_object(Bucket="bulk-in", Key="in.jsonl", Body=record(group="other"))
    with pytest.raises(BulkInputError, match="changed since the bulk deployment started"):
        [e async for e in entries(read_chunks(location, aws, etag=found.etag))]


@pytest.mark.network
async def test_a_missing_object_or_bucket_is_one_clear_error(moto: MotoServer) -> None:
    """No such bucket, or no such key: one BulkInputError naming the URI, from check and read."""
    boto3.client("s3", region_name=TEST_REGION, endpoint_url=moto.url).create_bucket(Bucket="there")
    aws = AwsSettings(region=TEST_REGION, endpoint_url=moto.url)
    for uri in ("s3://there/missing.jsonl", "s3://not-there/in.jsonl"):
        location = parse_location(uri, allow_local=False)
        with pytest.raises(BulkInputError, match=f"{re.escape(uri)}: there is no"):
            await check(location, aws)
        with pytest.raises(BulkInputError, match=f"{re.escape(uri)}: there is no"):
            [e async for e in entries(read_chunks(location, aws))]
