# SPDX-License-Identifier: Apache-2.0
"""Fetch a deployment's secret versions from AWS Secrets Manager with aiobotocore.

Theory of operation. A deployment needs every (ARN, staging label) pair its resources name.
`AWSCURRENT` values come from BatchGetSecretValue, 20 secrets per call, unless the caller
turned that off or Secrets Manager refused the operation once (then every later fetch of this
source uses GetSecretValue). Each additional label costs one GetSecretValue call. All calls of
a fetch run as tasks of one `asyncio.TaskGroup`, at most `FetchSettings.concurrency` in flight
(one semaphore per source), under one overall deadline. The first failure cancels the rest and
is raised alone: a deployment gets all of its secrets or none.

Incremental fetch. Given the versions the core already holds (`held`), a fetch first asks
DescribeSecret where each held secret's labels point (concurrently, under the same semaphore
and deadline) and downloads only the versions it lacks, by VersionId (exactly the version
described); `edge.secrets.source.plan_fetch` makes
that decision. A redeploy of an unchanged group thus costs one DescribeSecret per secret and no
GetSecretValue or BatchGetSecretValue at all, and no secret value crosses the network. Secrets
the core holds nothing of are not described: their values must be fetched anyway. Credentials
without secretsmanager:DescribeSecret (AccessDeniedException) switch the source to the full
fetch for good, logged once as `fetch.describe.unavailable`.

Retries are botocore's own "standard" mode (aiobotocore awaits its backoff with asyncio.sleep):
it retries throttling errors, HTTP 500/502/503/504 and connection errors with jittered
exponential backoff, and a per-client retry quota stops retry storms against a service that is
down. We add no retry loop of our own on top, which would multiply attempts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import TYPE_CHECKING, Any, Final, Self

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import ClientError

from edge.config import FetchSettings
from edge.errors import (
    FetchDeadlineError,
    SecretAccessDeniedError,
    SecretFetchError,
    SecretNotFoundError,
    SecretServiceError,
    StagingLabelNotFoundError,
)
from edge.secrets.answers import (
    ACCESS_DENIED,
    INVALID_STATE,
    NOT_FOUND,
    FetchProgress,
    error_code,
    map_exceptions,
    match_batch,
    wanted_pairs,
)
from edge.secrets.source import AWSCURRENT, Described, local_secret, plan_fetch

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence
    from types import TracebackType

    from structlog.typing import FilteringBoundLogger

    from edge.model import SecretResource
    from edge.secrets.contents import LocalSecret, SecretVersion

#: SecretIdList takes at most 20 ids (BatchGetSecretValue API reference).
BATCH_MAX_IDS: Final = 20
#: TCP (and TLS) setup to a regional endpoint takes well under a second even on cellular
#: links; after 5 s a retry on a fresh connection is the better bet.
CONNECT_TIMEOUT_SECONDS: Final = 5.0
#: Secrets Manager answers in tens of milliseconds; a read stalled for 15 s is a dead
#: connection, and botocore retries it. The fetch deadline still bounds the whole.
READ_TIMEOUT_SECONDS: Final = 15.0

#: `[fetch]`'s defaults; frozen, so one instance is safe to share.
DEFAULT_SETTINGS: Final = FetchSettings()

#: Error codes with which the service (or an emulator) refuses BatchGetSecretValue as a whole:
#: credentials without secretsmanager:BatchGetSecretValue, or an endpoint that doesn't know the
#: operation. GetSecretValue, which every core may call, does the same work.
_BATCH_REFUSED_CODES: Final = frozenset(
    {"AccessDeniedException", "UnknownOperationException", "InvalidAction", "NotImplemented"}
)
#: HTTP 501 Not Implemented: an emulator without the operation, whatever its error code.
_HTTP_NOT_IMPLEMENTED: Final = 501


class AwsSecretSource:
    """A `SecretSource` that asks AWS Secrets Manager, owning one aiobotocore client.

    Use it as an async context manager; it may be entered again after it was left, but not
    while it is open. Concurrent `fetch` calls share its concurrency limit.

    Attributes:
        calls: HTTP requests sent, by API operation name, retries included (every attempt is
            a request the service serves and may throttle).
    """

    def __init__(
        self,
        *,
        region: str,
        endpoint_url: str | None = None,
        settings: FetchSettings = DEFAULT_SETTINGS,
        logger: FilteringBoundLogger | None = None,
        session: AioSession | None = None,
    ) -> None:
        """Configure the source; no connection is made before `__aenter__`.

        Args:
            region: AWS region of the secrets.
            endpoint_url: Another Secrets Manager endpoint, such as a local emulator.
            settings: Concurrency, deadline, retries and batching.
            logger: Where to log fetch events; `structlog.get_logger()` if not given.
            session: The aiobotocore session, which decides where credentials come from
                (the fetch process sets the credentials it was given); botocore's chain if
                not given.
        """
        self.region = region
        self.endpoint_url = endpoint_url
        self.settings = settings
        self.calls: collections.Counter[str] = collections.Counter()
        self._log: FilteringBoundLogger = logger or structlog.get_logger("edge.secrets.fetch")
        self._limit = asyncio.Semaphore(settings.concurrency)
        self._batch_available = settings.use_batch
        #: False once DescribeSecret was refused (AccessDeniedException): from then on every
        #: fetch downloads every pair, as before incremental fetch.
        self.describe_available = True
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._session = session or get_session()

    async def __aenter__(self) -> Self:
        """Create the aiobotocore client (its HTTP pool opens lazily on the first call)."""
        if self._stack is not None:
            raise RuntimeError("AwsSecretSource is already open; it is not re-entrant")
        config = AioConfig(
            retries={"mode": "standard", "total_max_attempts": self.settings.max_attempts},
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            max_pool_connections=self.settings.concurrency,
        )
        async with contextlib.AsyncExitStack() as stack:
            self._client = await stack.enter_async_context(
                self._session.create_client(
                    "secretsmanager",
                    region_name=self.region,
                    endpoint_url=self.endpoint_url,
                    config=config,
                )
            )
            # Count on the wire, not per method call, so that retries show.
            self._client.meta.events.register("before-send.secrets-manager", self._count)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the client and its connections."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @property
    def batch_available(self) -> bool:
        """Whether fetches still use BatchGetSecretValue (false once it was refused)."""
        return self._batch_available

    def _count(self, event_name: str, **_kwargs: object) -> None:
        """Count one request about to be sent (a botocore `before-send` handler)."""
        self.calls[event_name.rsplit(".", 1)[-1]] += 1

    async def fetch(
        self,
        resources: Sequence[SecretResource],
        *,
        held: Mapping[str, Mapping[str, SecretVersion]] | None = None,
        described: Mapping[str, Described] | None = None,
        pace: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, LocalSecret]:
        """Fetch every (ARN, label) pair the resources need, all or nothing.

        With `held`, secrets the core holds versions of are described first (unless
        `described` already says where their labels point) and only the versions it lacks
        are downloaded; see the module's docstring. `AWSCURRENT` comes from
        BatchGetSecretValue when `settings.use_batch` and the service allows it; the first
        refusal switches this source to GetSecretValue for good (logged once as
        `fetch.batch.unavailable`). Each additional label is one GetSecretValue call, unless
        an earlier answer showed that label on its version.

        Args:
            resources: The group's secret resources.
            held: ARN -> VersionId -> a version the core holds (immutable, so reusable).
            described: DescribeSecret answers already at hand, by ARN (the refresher's);
                these secrets are not described again.
            pace: Awaited before each DescribeSecret request (a rate limit).

        Returns:
            One `LocalSecret` per resource, keyed by `resource_id`.

        Raises:
            SecretNotFoundError: A secret doesn't exist, is marked for deletion, or has no
                `AWSCURRENT` version.
            StagingLabelNotFoundError: A secret exists but no version carries a label.
            SecretAccessDeniedError: The credentials may not read a secret.
            SecretServiceError: Secrets Manager failed or was unreachable after all retries.
            FetchDeadlineError: The whole fetch took longer than `settings.deadline_seconds`.
            RuntimeError: The source is not open.
        """
        if self._client is None:
            raise RuntimeError("use `async with AwsSecretSource(...)` before fetching")
        wanted, names = wanted_pairs(resources)
        run = FetchProgress(wanted=wanted, names_asked=names)
        self._log.info("fetch.started", secrets=len(wanted), pairs=run.total)
        started = time.perf_counter()
        calls_before = self.calls.total()
        deadline = asyncio.timeout(self.settings.deadline_seconds)
        try:
            async with deadline:
                if held:
                    await self._reuse_held(run, held, dict(described or {}), pace)
                reused = run.done
                await self._fetch_all(run)
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            error = FetchDeadlineError(self.settings.deadline_seconds, run.done, run.total)
            self._log.warning(
                "fetch.failed", error=type(error).__name__, done=run.done, pairs=run.total
            )
            raise error from exc
        except SecretFetchError as exc:
            self._log.warning(
                "fetch.failed", error=type(exc).__name__, arn=getattr(exc, "arn", None)
            )
            raise
        self._log.info(
            "fetch.complete",
            pairs=run.total,
            reused=reused,
            calls=self.calls.total() - calls_before,
            seconds=round(time.perf_counter() - started, 3),
        )
        return {
            r.resource_id: local_secret(r, run.names[r.arn], run.received[r.arn]) for r in resources
        }

    async def _reuse_held(
        self,
        run: FetchProgress,
        held: Mapping[str, Mapping[str, SecretVersion]],
        described: dict[str, Described],
        pace: Callable[[], Awaitable[None]] | None,
    ) -> None:
        """Describe the held secrets not yet described; take the held versions labels are on.

        Raises:
            SecretFetchError: DescribeSecret failed for a secret other than by being refused
                (a secret not found or marked for deletion fails the fetch, as before).
        """
        unknown = [arn for arn in run.wanted if held.get(arn) and arn not in described]
        if unknown and self.describe_available:
            answers, errors = await self.describe(unknown, pace=pace)
            for arn in unknown:
                error = errors.get(arn)
                # A refusal leaves the secret undescribed: it is fetched whole.
                if error is not None and not isinstance(error, SecretAccessDeniedError):
                    raise error
            described.update(answers)
        plan = plan_fetch(run.wanted, held, described)
        for arn, by_label in plan.reused.items():
            run.reuse(arn, described[arn].name, by_label)
        for arn, labels in plan.missing.items():
            answer = described.get(arn)
            if answer is None:
                continue
            for label in labels:
                version_id = answer.version_of(label)
                if version_id is not None:
                    versions = run.by_version.setdefault(arn, {})
                    versions[version_id] = (*versions.get(version_id, ()), label)

    async def describe(
        self,
        arns: Sequence[str],
        *,
        pace: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[dict[str, Described], dict[str, SecretFetchError]]:
        """Ask DescribeSecret where each secret's labels point, concurrently.

        Every secret is asked independently: one failing doesn't cancel the others. An
        AccessDeniedException switches the source to full fetches for good
        (`describe_available` becomes false, logged once as `fetch.describe.unavailable`).
        The caller bounds the whole with its deadline.

        Args:
            arns: The secrets to describe (duplicates are asked once).
            pace: Awaited before each request (a rate limit), outside the concurrency limit.

        Returns:
            ARN -> answer for the secrets described, and ARN -> error for the others:
            SecretNotFoundError (no such secret, or marked for deletion),
            SecretAccessDeniedError, SecretServiceError.

        Raises:
            RuntimeError: The source is not open.
        """
        if self._client is None:
            raise RuntimeError("use `async with AwsSecretSource(...)` before describing")
        answers: dict[str, Described] = {}
        errors: dict[str, SecretFetchError] = {}

        async def one(arn: str) -> None:
            try:
                answers[arn] = await self._describe_one(arn, pace)
            except SecretFetchError as exc:
                errors[arn] = exc

        async with asyncio.TaskGroup() as tg:
            for arn in dict.fromkeys(arns):
                tg.create_task(one(arn), name=f"describe:{arn}")
        return answers, errors

    async def _describe_one(
        self, arn: str, pace: Callable[[], Awaitable[None]] | None
    ) -> Described:
        """Call DescribeSecret for one secret and read its name and `VersionIdsToStages`."""
        if pace is not None:
            await pace()
        async with self._limit:
            try:
                with map_exceptions(arn, operation="DescribeSecret"):
                    answer: Mapping[str, Any] = await self._client.describe_secret(SecretId=arn)
            except SecretAccessDeniedError:
                if self.describe_available:
                    self.describe_available = False
                    self._log.warning(
                        "fetch.describe.unavailable",
                        code=ACCESS_DENIED,
                        fallback="full fetch (GetSecretValue/BatchGetSecretValue)",
                    )
                raise
        if answer.get("DeletedDate") is not None:
            # Marked for deletion: GetSecretValue would refuse it, and to the operator it is gone.
            raise SecretNotFoundError(arn)
        try:
            stages = {
                str(version_id): tuple(str(s) for s in labels)
                for version_id, labels in (answer.get("VersionIdsToStages") or {}).items()
            }
        except (TypeError, AttributeError) as exc:
            raise SecretServiceError(arn, "DescribeSecret: unexpected answer") from exc
        return Described(name=str(answer.get("Name", "")), stages=stages)

    async def _fetch_all(self, run: FetchProgress) -> None:
        """Fetch every pair of the run as tasks of one group; raise the first failure alone."""
        failure: SecretFetchError | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                self._spawn(run, tg)
        except* SecretFetchError as group:
            # The TaskGroup cancelled the others when the first task failed; errors are listed
            # in the order they happened. Anything not ours (a bug) propagates as a group.
            first = group.exceptions[0]
            if not isinstance(first, SecretFetchError):
                raise
            failure = first
        if failure is not None:
            # Raised outside the handler so that its context is the botocore error, not the group.
            raise failure

    def _spawn(self, run: FetchProgress, tg: asyncio.TaskGroup) -> None:
        """Start a task for every call the run still needs: by VersionId, batch, by label."""
        for arn, versions in run.by_version.items():
            for version_id, labels in versions.items():
                tg.create_task(
                    self._fetch_version(run, arn, version_id, labels),
                    name=f"{arn}:{version_id}",
                )
        arns = [
            arn
            for arn in run.wanted
            if not run.has(arn, AWSCURRENT) and not run.planned(arn, AWSCURRENT)
        ]
        if self._batch_available:
            for start in range(0, len(arns), BATCH_MAX_IDS):
                chunk = arns[start : start + BATCH_MAX_IDS]
                tg.create_task(self._fetch_batch(run, tg, chunk), name=f"batch:{start}")
        else:
            for arn in arns:
                tg.create_task(self._fetch_label(run, arn, AWSCURRENT), name=arn)
        for arn, labels in run.wanted.items():
            for label in labels[1:]:
                if run.has(arn, label) or run.planned(arn, label):
                    continue
                tg.create_task(self._fetch_label(run, arn, label), name=f"{arn}:{label}")

    async def _fetch_label(self, run: FetchProgress, arn: str, label: str) -> None:
        """Fetch one (ARN, label) pair with GetSecretValue, unless it has arrived already."""
        async with self._limit:
            if run.has(arn, label):
                return
            answer = await self._get_secret_value(arn, label)
        run.record(arn, label, answer)

    async def _fetch_version(
        self, run: FetchProgress, arn: str, version_id: str, labels: tuple[str, ...]
    ) -> None:
        """Fetch the version DescribeSecret placed the labels on, by its VersionId.

        If that version is gone by now (the secret rotated again and the version was
        removed, or the secret was deleted), the labels are fetched by name instead, which
        reports a deleted secret precisely.
        """
        try:
            async with self._limit:
                with map_exceptions(arn):
                    answer: Mapping[str, Any] = await self._client.get_secret_value(
                        SecretId=arn, VersionId=version_id
                    )
        except (SecretNotFoundError, SecretServiceError) as exc:
            if isinstance(exc, SecretServiceError) and exc.error_code != INVALID_STATE:
                raise
            for label in labels:
                await self._fetch_label(run, arn, label)
            return
        for label in labels:
            run.record(arn, label, answer)

    async def _get_secret_value(self, arn: str, label: str) -> Mapping[str, Any]:
        """Call GetSecretValue for one pair and name the failure precisely."""
        try:
            with map_exceptions(arn):
                answer: Mapping[str, Any] = await self._client.get_secret_value(
                    SecretId=arn, VersionStage=label
                )
        except SecretNotFoundError as exc:
            # For an extra label ResourceNotFoundException means "no such secret" or "no such
            # label"; only the secret's existence tells them apart.
            if label == AWSCURRENT:
                raise
            if await self._secret_exists(arn):
                # Chain to botocore's error, not to the guess that turned out wrong.
                raise StagingLabelNotFoundError(arn, label) from exc.__cause__
            raise
        except SecretServiceError as exc:
            # Secrets Manager refuses reads of a secret in its deletion recovery window; to the
            # operator that secret is gone.
            if exc.error_code == INVALID_STATE and not await self._secret_exists(arn):
                raise SecretNotFoundError(arn) from exc.__cause__
            raise
        return answer

    async def _secret_exists(self, arn: str) -> bool:
        """Ask DescribeSecret whether the secret exists and is not marked for deletion."""
        with map_exceptions(arn, operation="DescribeSecret"):
            try:
                described: Mapping[str, Any] = await self._client.describe_secret(SecretId=arn)
            except ClientError as exc:
                if error_code(exc)[0] == NOT_FOUND:
                    return False
                raise
        return described.get("DeletedDate") is None

    async def _fetch_batch(
        self, run: FetchProgress, tg: asyncio.TaskGroup, arns: Sequence[str]
    ) -> None:
        """Fetch the AWSCURRENT values of up to 20 secrets with BatchGetSecretValue.

        Secrets the batch didn't answer are fetched one by one as new tasks of the group; so
        is the whole chunk when the service refuses the operation.
        """
        answered = await self._batch_get(arns) if self._batch_available else None
        if answered is None:
            for arn in arns:
                tg.create_task(self._fetch_label(run, arn, AWSCURRENT), name=arn)
            return
        matched, codes = match_batch({a: run.names_asked[a] for a in arns}, *answered)
        for arn in arns:
            value = matched.get(arn)
            if value is not None:
                run.record(arn, AWSCURRENT, value)
                continue
            code = codes.get(arn)
            if code == NOT_FOUND:
                raise SecretNotFoundError(arn)
            if code == ACCESS_DENIED:
                raise SecretAccessDeniedError(arn, f"BatchGetSecretValue: {code}")
            # A secret marked for deletion, a per-secret throttle or internal error, or no
            # entry at all: ask again alone, where botocore retries and the full error
            # mapping (with DescribeSecret to tell "deleted" apart) apply.
            tg.create_task(self._fetch_label(run, arn, AWSCURRENT), name=arn)

    async def _batch_get(
        self, arns: Sequence[str]
    ) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]] | None:
        """Call BatchGetSecretValue for the ids; None if the service refuses the operation."""
        values: list[Mapping[str, Any]] = []
        errors: list[Mapping[str, Any]] = []
        kwargs: dict[str, Any] = {"SecretIdList": list(arns)}
        while True:
            async with self._limit:
                # A failure of the whole call is charged to the chunk's first secret.
                with map_exceptions(arns[0], operation="BatchGetSecretValue"):
                    try:
                        page: Mapping[str, Any] = await self._client.batch_get_secret_value(
                            **kwargs
                        )
                    except ClientError as exc:
                        if not self._batch_refused(exc):
                            raise
                        return None
            values.extend(page.get("SecretValues", ()))
            errors.extend(page.get("Errors", ()))
            # With SecretIdList the service answers in one page, but the API allows more.
            token = page.get("NextToken")
            if not token:
                return values, errors
            kwargs["NextToken"] = token

    def _batch_refused(self, exc: Any) -> bool:  # noqa: ANN401 - botocore has no stubs
        """Tell whether BatchGetSecretValue was refused as a whole; if so, stop using it."""
        code, status = error_code(exc)
        if code not in _BATCH_REFUSED_CODES and status != _HTTP_NOT_IMPLEMENTED:
            return False
        if self._batch_available:
            self._batch_available = False
            self._log.warning("fetch.batch.unavailable", code=code, fallback="GetSecretValue")
        return True
