# SPDX-License-Identifier: Apache-2.0
"""The fetch process: `python -m edge.secrets.fetcher`, one fetch (or one S3 read), then exit.

The core starts it for each fetch so that aiobotocore and botocore, which make up most of a
Python core's memory, live only as long as the fetch. It reads one request frame on stdin
(settings, credentials, what to fetch; see `edge.secrets.fetch_process`), runs
`AwsSecretSource` (or one S3 GetObject) exactly as the core would in-process, and writes
frames on its stdout: one per request sent (`call`, for the metrics), one per rate-limit
wait (`pace`, answered by the core with `go`), then one `result` or `error`. It logs JSON
lines on stderr, which the core relays into its own log; values it fetched are masked there
too. It holds no state between runs and writes nothing to disk.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from aiobotocore.session import AioSession, get_session

from edge.errors import CodeFetchError, EdgeError, SecretFetchError, SecretServiceError
from edge.hardening import forbid_memory_access
from edge.log import configure_logging
from edge.oneshot.wire import MAX_FRAME_BYTES, FrameReader, answer_pipe, pack
from edge.redaction import REDACTOR
from edge.secrets import fetch_wire as wire
from edge.secrets.fetch import AwsSecretSource
from edge.settings import FetchSettings
from edge.workers.s3 import S3CodeReader

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


class _ReportingCounter(collections.Counter[str]):
    """A Counter that reports every increment as a `call` frame, so the core counts live."""

    def __init__(self, emit: Callable[[Mapping[str, Any]], None]) -> None:
        super().__init__()
        self._emit = emit

    def __setitem__(self, key: str, value: int) -> None:
        self._emit({"call": key, "n": value - self[key]})
        super().__setitem__(key, value)


class _Pipe:
    """The frames to and from the core."""

    def __init__(self, reader: FrameReader, out: IO[bytes]) -> None:
        self._reader = reader
        self._out = out
        self._pace_lock = asyncio.Lock()

    def emit(self, frame: Mapping[str, Any]) -> None:
        self._out.write(pack(frame))
        self._out.flush()

    async def pace(self) -> None:
        async with self._pace_lock:
            self.emit({"pace": True})
            await self._reader.next()


def _session(credentials: Mapping[str, str] | None) -> AioSession:
    session = get_session()
    if credentials is not None:
        session.set_credentials(
            credentials["access_key"], credentials["secret_key"], credentials["token"]
        )
    return session


async def _read_s3(
    session: AioSession, region: str, endpoint: str | None, request: Mapping[str, Any]
) -> dict[str, Any]:
    try:
        async with S3CodeReader(region=region, endpoint_url=endpoint, session=session) as read:
            return {"result": await read(str(request["bucket"]), str(request["key"]))}
    except EdgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any S3 failure fails the deployment, by its code
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        return {"failed": str(code) if code else type(exc).__name__}


async def _serve(request: Mapping[str, Any], pipe: _Pipe) -> dict[str, Any]:
    session = _session(request.get("credentials"))
    region, endpoint = str(request["region"]), request.get("endpoint_url")
    if request["op"] == "s3":
        return await _read_s3(session, region, endpoint, request)
    plain = dict(request["settings"])
    # The core's deadline, counted from before this process started.
    plain["deadline_seconds"] = max(float(request["ends_at"]) - time.monotonic(), 0.01)
    settings = FetchSettings(**plain)
    source = AwsSecretSource(
        region=region, endpoint_url=endpoint, settings=settings, session=session
    )
    source.calls = _ReportingCounter(pipe.emit)
    source.describe_available = bool(request["describe_available"])
    pace = pipe.pace if request.get("paced") else None
    async with source:
        state: dict[str, Any] = {}
        try:
            if request["op"] == "describe":
                answers, errors = await source.describe(list(request["arns"]), pace=pace)
                state["result"] = {
                    "described": wire.described_to_plain(answers),
                    "errors": {
                        arn: wire.error_to_plain(e)
                        or wire.error_to_plain(SecretServiceError(arn, type(e).__name__))
                        for arn, e in errors.items()
                    },
                }
            else:
                secrets = await source.fetch(
                    wire.resources_from_plain(request["resources"]),
                    held=wire.held_from_plain(request["held"]),
                    described=wire.described_from_plain(request["described"]),
                    pace=pace,
                )
                REDACTOR.update(
                    v.secret_string if v.secret_string is not None else v.secret_binary or b""
                    for s in secrets.values()
                    for v in s.versions.values()
                )
                state["result"] = wire.secrets_to_plain(secrets)
        except SecretFetchError as exc:
            state["error"] = wire.error_to_plain(exc)
            if state["error"] is None:
                raise
        state["batch_available"] = source.batch_available
        state["describe_available"] = source.describe_available
        return state


async def _main(out: IO[bytes]) -> None:
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader(limit=MAX_FRAME_BYTES)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(0, "rb", buffering=0)
    )
    reader = FrameReader(stream)
    request = await reader.next()
    configure_logging(level=str(request.get("log_level", "info")), fmt="json")
    pipe = _Pipe(reader, out)
    try:
        answer = await _serve(request, pipe)
    except CodeFetchError as exc:
        answer = {"error": wire.error_to_plain(exc)}
    pipe.emit(answer)


def main() -> None:
    """Serve one request from the core; anything unexpected ends with a traceback on stderr."""
    # As the core: no core dump of the credentials or the values, no tracing by the same user.
    forbid_memory_access()
    out = answer_pipe()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(out))
    out.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
