# SPDX-License-Identifier: Apache-2.0
"""The core's `SecretSource` and S3 reader: each fetch runs in a short-lived child process.

An AWS SDK is most of a Python core's memory, and a core needs it once a deployment or
refresh. `ProcessSecretSource` starts `python -m edge.secrets.fetcher` for each fetch or
describe and talks to it over its stdin pipe and stdout socket in msgpack frames
(`edge.secrets.fetch_wire`, run by `edge.oneshot.run`), so the long-lived core never imports
botocore.

What stays as it was in-process:

- One deadline for the whole fetch, process start included: the child's own deadline is what
  remains of the core's, so it reports how far it got; should it not answer within
  `ANSWER_GRACE_SECONDS` after that, the core kills it and raises `FetchDeadlineError`.
- botocore's retries, BatchGetSecretValue and incremental fetch run in the child, unchanged
  (`AwsSecretSource`); whether BatchGetSecretValue or DescribeSecret was refused carries over
  from one child to the next, as it did within one source.
- Errors come back as the same classes with the same attributes, from a closed allow-list. A
  child that dies without an answer is a `SecretServiceError` naming its exit status.
- `calls` counts every request the child sends, as it sends it; the refresher's rate limit
  (`pace`) is awaited here, in the core, at each of the child's requests.
- Credentials from the IoT credentials provider are exchanged and kept here and cross the
  stdin pipe; the values fetched cross the stdout socket. Neither is ever on disk, in the
  child's environment or in its argv. The child's stderr is relayed to the core's log, through
  its redactor.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from typing import TYPE_CHECKING, Any, Final

import structlog

from edge.errors import FetchDeadlineError, SecretServiceError
from edge.oneshot.run import NoAnswerError, OneShot
from edge.secrets import fetch_wire as wire
from edge.settings import FetchSettings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from structlog.typing import FilteringBoundLogger

    from edge.model import SecretResource
    from edge.oneshot.run import Reply
    from edge.secrets.contents import LocalSecret, SecretVersion
    from edge.secrets.iot_credentials import IotCredentialProvider
    from edge.secrets.source import Described
    from edge.settings import IotCredentialSettings

#: The child's module.
FETCHER_MODULE: Final = "edge.secrets.fetcher"
#: An S3 read has no `[fetch]` deadline of its own; this bounds a stuck one.
S3_DEADLINE_SECONDS: Final = 300.0
#: How long after the deadline the core waits for the child's own `FetchDeadlineError` (which
#: says how far it got) before it kills the child.
ANSWER_GRACE_SECONDS: Final = 0.5


@dataclasses.dataclass(frozen=True, slots=True)
class AwsTarget:
    """Where the child sends its requests, and with which credentials.

    Attributes:
        region: AWS region.
        endpoint_url: Another endpoint, such as a local emulator.
        iot: The IoT credentials provider, if `[aws] credentials = "iot"`; botocore's usual
            chain (in the child) otherwise.
    """

    region: str
    endpoint_url: str | None = None
    iot: IotCredentialProvider | None = None

    @classmethod
    def of(
        cls, region: str, endpoint_url: str | None, iot: IotCredentialSettings | None
    ) -> AwsTarget:
        """The target for `[aws]`'s settings."""
        provider = None
        if iot is not None:
            from edge.secrets.iot_credentials import IotCredentialProvider  # noqa: PLC0415

            provider = IotCredentialProvider(iot)
        return cls(region=region, endpoint_url=endpoint_url, iot=provider)

    async def request(self, op: str) -> dict[str, Any]:
        """The part of a request every op carries (credentials exchanged here if needed)."""
        return {
            "op": op,
            "region": self.region,
            "endpoint_url": self.endpoint_url,
            "credentials": None if self.iot is None else await self.iot.credentials(),
        }


async def run_child(
    request: Mapping[str, Any],
    *,
    deadline: float,
    log: FilteringBoundLogger,
    on_call: Callable[[str, int], None] | None = None,
    pace: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Run one fetch child for one request and return its answer.

    The child is killed when this returns, raises or is cancelled, whatever state it is in.

    Raises:
        TimeoutError: `deadline` (a `loop.time()`) passed.
        NoAnswerError: The child could not start, or ended without an answer.
    """

    async def interim(frame: dict[str, Any], reply: Reply) -> bool:
        if "call" in frame:
            if on_call is not None:
                on_call(str(frame["call"]), int(frame["n"]))
            return True
        if "pace" in frame:
            if pace is not None:
                await pace()
            await reply({"go": True})
            return True
        return False

    child = OneShot(FETCHER_MODULE, name="fetch")
    return await child.exchange(request, deadline=deadline, log=log, interim=interim)


class ProcessSecretSource:
    """A `SecretSource` that asks Secrets Manager from a short-lived child process.

    It holds nothing open between fetches; concurrent fetches run in separate children.

    Attributes:
        calls: HTTP requests the children sent, by API operation name, retries included.
        describe_available: False once DescribeSecret was refused.
    """

    def __init__(
        self,
        target: AwsTarget,
        *,
        settings: FetchSettings | None = None,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        """Configure the source; nothing starts before the first fetch."""
        self.target = target
        self.settings = settings or FetchSettings()
        self.calls: collections.Counter[str] = collections.Counter()
        self.describe_available = True
        self._batch_available = self.settings.use_batch
        self._log: FilteringBoundLogger = logger or structlog.get_logger("edge.secrets.fetch")

    async def fetch(
        self,
        resources: Sequence[SecretResource],
        *,
        held: Mapping[str, Mapping[str, SecretVersion]] | None = None,
        described: Mapping[str, Described] | None = None,
        pace: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, LocalSecret]:
        """Fetch every pair the resources need, all or nothing; see `AwsSecretSource.fetch`.

        Raises:
            SecretFetchError: As `AwsSecretSource.fetch`, plus a `SecretServiceError` when the
                child dies without an answer and a `FetchDeadlineError` when it doesn't answer
                within the deadline (it is then killed).
        """
        if not resources:
            return {}
        total = sum(len(r.labels) for r in resources)
        request = {
            "resources": wire.resources_to_plain(resources),
            "held": wire.held_to_plain(held),
            "described": wire.described_to_plain(described),
        }
        answer = await self._ask("fetch", request, resources[0].arn, total, pace)
        return wire.secrets_from_plain(answer)

    async def describe(
        self, arns: Sequence[str], *, pace: Callable[[], Awaitable[None]] | None = None
    ) -> tuple[dict[str, Described], dict[str, Any]]:
        """Say where each secret's labels point; see `AwsSecretSource.describe`."""
        if not arns:
            return {}, {}
        answer = await self._ask("describe", {"arns": list(arns)}, arns[0], len(arns), pace)
        errors = {str(arn): wire.error_from_plain(e) for arn, e in answer["errors"].items()}
        return wire.described_from_plain(answer["described"]), errors

    async def _ask(
        self,
        op: str,
        args: dict[str, Any],
        first_arn: str,
        total: int,
        pace: Callable[[], Awaitable[None]] | None,
    ) -> Any:  # noqa: ANN401 - the answer's shape is the op's
        seconds = self.settings.deadline_seconds
        deadline = asyncio.get_running_loop().time() + seconds + ANSWER_GRACE_SECONDS
        # CLOCK_MONOTONIC is one clock for every process on the machine.
        ends_at = time.monotonic() + seconds
        request = await self.target.request(op)
        settings = dataclasses.replace(self.settings, use_batch=self._batch_available)
        request.update(
            args,
            settings=wire.settings_to_plain(settings),
            describe_available=self.describe_available,
            ends_at=ends_at,
            paced=pace is not None,
        )
        try:
            frame = await run_child(
                request, deadline=deadline, log=self._log, on_call=self._count, pace=pace
            )
        except TimeoutError:
            self._log.warning("fetch.failed", error="FetchDeadlineError", pairs=total)
            raise FetchDeadlineError(seconds, 0, total) from None
        except NoAnswerError as exc:
            raise SecretServiceError(first_arn, f"the fetch process {exc.why}") from None
        self._batch_available = bool(frame.get("batch_available", self._batch_available))
        self.describe_available = bool(frame.get("describe_available", self.describe_available))
        if "error" in frame:
            error = wire.error_from_plain(frame["error"])
            if isinstance(error, FetchDeadlineError):
                # The child's deadline was what remained of this one.
                raise FetchDeadlineError(seconds, error.done, error.total)
            raise error
        return frame["result"]

    def _count(self, operation: str, n: int) -> None:
        self.calls[operation] += n


class S3ReadError(Exception):
    """An S3 read failed in the child; `response` has botocore's shape, for the error code."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


class ProcessS3Reader:
    """Reads function packages from S3 in a short-lived child; call it with (bucket, key)."""

    def __init__(self, target: AwsTarget, *, logger: FilteringBoundLogger | None = None) -> None:
        self._target = target
        self._log: FilteringBoundLogger = logger or structlog.get_logger("edge.workers.s3")

    async def __call__(self, bucket: str, key: str) -> bytes:
        """Return the object's bytes (at most a Lambda package's size).

        Raises:
            CodeFetchError: The object is larger than a Lambda package may be.
            S3ReadError: S3 refused or failed the read (its error code), or the child gave
                no answer.
            IotCredentialsError: No credentials could be had for the read.
        """
        request = await self._target.request("s3")
        request.update(bucket=bucket, key=key, log_level="warning")
        deadline = asyncio.get_running_loop().time() + S3_DEADLINE_SECONDS
        try:
            frame = await run_child(request, deadline=deadline, log=self._log)
        except TimeoutError:
            raise S3ReadError(f"no answer within {S3_DEADLINE_SECONDS:g} s") from None
        except NoAnswerError as exc:
            raise S3ReadError(f"the fetch process {exc.why}") from None
        if "error" in frame:
            raise wire.error_from_plain(frame["error"])
        data = frame.get("result")
        if "failed" in frame or not isinstance(data, bytes):
            raise S3ReadError(str(frame.get("failed", "no bytes in the answer")))
        return data
