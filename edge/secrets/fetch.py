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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Self

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from edge.config import FetchSettings
from edge.errors import (
    FetchDeadlineError,
    SecretAccessDeniedError,
    SecretFetchError,
    SecretNotFoundError,
    SecretServiceError,
    StagingLabelNotFoundError,
)
from edge.secrets.contents import SecretVersion
from edge.secrets.source import AWSCURRENT, Described, local_secret, plan_fetch

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
    from types import TracebackType

    from structlog.typing import FilteringBoundLogger

    from edge.model import SecretResource
    from edge.secrets.contents import LocalSecret

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

_ACCESS_DENIED: Final = "AccessDeniedException"
_NOT_FOUND: Final = "ResourceNotFoundException"

#: How a Secrets Manager error code becomes our exception; anything else is SecretServiceError.
_ERRORS_BY_CODE: Final[Mapping[str, Callable[[str, str], SecretFetchError]]] = {
    _NOT_FOUND: lambda arn, _detail: SecretNotFoundError(arn),
    _ACCESS_DENIED: SecretAccessDeniedError,
}


class _InvalidStateError(SecretServiceError):
    """InvalidRequestException: the secret's state forbids the read, usually a pending deletion.

    Private: `AwsSecretSource` asks DescribeSecret and turns it into SecretNotFoundError when
    the secret is marked for deletion; otherwise it surfaces as the SecretServiceError it is.
    """


def _error_code(exc: Any) -> tuple[str, int | None]:  # noqa: ANN401 - botocore has no stubs
    """Return a ClientError's error code and HTTP status."""
    response: Mapping[str, Any] = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code") or "Unknown")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code, status if isinstance(status, int) else None


def _client_error_detail(exc: Any) -> str:  # noqa: ANN401 - botocore has no stubs
    """Summarise a ClientError as code, status and attempts, never its message or body."""
    code, status = _error_code(exc)
    response: Mapping[str, Any] = getattr(exc, "response", None) or {}
    retries = response.get("ResponseMetadata", {}).get("RetryAttempts")
    detail = code if status is None else f"{code} (HTTP {status})"
    if isinstance(retries, int) and retries > 0:
        detail += f" after {retries + 1} attempts"
    return detail


def _botocore_error_detail(exc: BotoCoreError) -> str:
    """Summarise a transport-level error by type and endpoint.

    The messages of some BotoCoreErrors (ResponseParserError) quote the response body, which
    may hold a secret value; the type name and endpoint URL are all a user needs, with a hint
    when nothing could be reached at all (refused, unresolvable or timed-out connections).
    """
    detail = type(exc).__name__
    url = getattr(exc, "kwargs", {}).get("endpoint_url")
    if url and isinstance(exc, EndpointConnectionError):
        return (
            f"can't connect to {url} ({detail}); check [aws] endpoint_url and the network "
            f"to Secrets Manager"
        )
    return f"{detail} for {url}" if url else detail


@contextlib.contextmanager
def map_exceptions(arn: str, *, operation: str = "GetSecretValue") -> Iterator[None]:
    """Translate botocore's exceptions about one secret into `SecretFetchError` subclasses.

    Args:
        arn: The secret the call was about, as the resource names it.
        operation: The API operation, named in service errors.

    Raises:
        SecretFetchError: The subclass for the error code (see `_ERRORS_BY_CODE`), or
            SecretServiceError for anything else that is left after botocore's retries.
    """
    try:
        yield
    except ClientError as exc:
        code, _status = _error_code(exc)
        detail = f"{operation}: {_client_error_detail(exc)}"
        if code == "InvalidRequestException":
            raise _InvalidStateError(arn, detail) from exc
        factory = _ERRORS_BY_CODE.get(code, SecretServiceError)
        raise factory(arn, detail) from exc
    except BotoCoreError as exc:
        raise SecretServiceError(arn, f"{operation}: {_botocore_error_detail(exc)}") from exc


def _version(arn: str, answer: Mapping[str, Any]) -> SecretVersion:
    """Build a SecretVersion from a GetSecretValue answer or a BatchGetSecretValue entry.

    Raises:
        SecretServiceError: The answer lacks a VersionId, or carries no value or both.
    """
    try:
        created = answer.get("CreatedDate")
        binary = answer.get("SecretBinary")
        return SecretVersion(
            version_id=str(answer["VersionId"]),
            version_stages=tuple(str(s) for s in answer.get("VersionStages", ())),
            created_date=created.timestamp() if created is not None else 0.0,
            secret_string=answer.get("SecretString"),
            secret_binary=bytes(binary) if binary is not None else None,
        )
    except KeyError as exc:
        raise SecretServiceError(arn, f"answer without {exc.args[0]}") from exc
    except (ValueError, TypeError, AttributeError) as exc:
        # Name the kind of problem only: the message could quote what the answer held.
        raise SecretServiceError(arn, f"unexpected answer ({type(exc).__name__})") from exc


def _match_batch(
    asked: Mapping[str, str],
    values: Sequence[Mapping[str, Any]],
    errors: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, Mapping[str, Any]], dict[str, str]]:
    """Pair each id asked for with its entry in a BatchGetSecretValue answer.

    Secrets Manager answers with the secret's full ARN and Name, whatever id it was given.
    Exact ARN matches claim their entries first; only then is a leftover entry matched by
    name (an emulator that spells ARNs its own way, an id that is a name or partial ARN).
    Claiming keeps a stale ARN of a secret deleted and re-created under the same name from
    taking the new secret's value when both are asked for.

    Args:
        asked: Id asked for (the resource's ARN) -> the secret name parsed from it.
        values: The `SecretValues` entries.
        errors: The `Errors` entries.

    Returns:
        Id -> its `SecretValues` entry, and id -> `ErrorCode` for ids with an `Errors` entry.
        Ids in neither were not answered.
    """
    unclaimed = list(values)
    matched: dict[str, Mapping[str, Any]] = {}
    for by_name in (False, True):
        for secret_id, name in asked.items():
            if secret_id in matched:
                continue
            for entry in unclaimed:
                if _same_name(secret_id, name, entry) if by_name else entry.get("ARN") == secret_id:
                    matched[secret_id] = entry
                    unclaimed.remove(entry)
                    break
    codes: dict[str, str] = {}
    for entry in errors:
        secret_id = str(entry.get("SecretId", ""))
        owner = secret_id if secret_id in asked else None
        owner = owner or next((i for i, n in asked.items() if secret_id == n), None)
        if owner is not None and owner not in matched:
            codes.setdefault(owner, str(entry.get("ErrorCode", "Unknown")))
    return matched, codes


def _same_name(secret_id: str, secret_name: str, entry: Mapping[str, Any]) -> bool:
    """Tell whether a batch entry names the secret an id points to, other than by equal ARN."""
    arn = str(entry.get("ARN", ""))
    name = str(entry.get("Name", ""))
    if name in (secret_id, secret_name):
        return True
    # A partial ARN is the full one less its "-" and 6 random characters.
    return arn.startswith(f"{secret_id}-") and len(arn) == len(secret_id) + 7


@dataclass(slots=True)
class _FetchProgress:
    """The state of one `fetch`: the pairs wanted and the versions that have arrived."""

    #: ARN -> labels wanted for it, AWSCURRENT first.
    wanted: dict[str, tuple[str, ...]]
    #: ARN -> secret name from the model, to match batch answers.
    names_asked: dict[str, str]
    #: ARN -> label -> version received.
    received: dict[str, dict[str, SecretVersion]] = field(default_factory=dict)
    #: ARN -> the secret's Name as Secrets Manager answered.
    names: dict[str, str] = field(default_factory=dict)
    #: ARN -> VersionId -> the wanted labels DescribeSecret placed on that version, which
    #: the core lacks: fetched by VersionId, exactly the version described.
    by_version: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)

    def planned(self, arn: str, label: str) -> bool:
        """Tell whether the pair is fetched by VersionId."""
        return any(label in labels for labels in self.by_version.get(arn, {}).values())

    @property
    def total(self) -> int:
        """Return how many pairs the fetch needs."""
        return sum(len(labels) for labels in self.wanted.values())

    @property
    def done(self) -> int:
        """Return how many pairs have arrived."""
        return sum(len(by_label) for by_label in self.received.values())

    def has(self, arn: str, label: str) -> bool:
        """Tell whether the pair has already arrived."""
        return label in self.received.get(arn, {})

    def reuse(self, arn: str, name: str, by_label: Mapping[str, SecretVersion]) -> None:
        """Take held versions for some of the secret's pairs: no call is needed for them."""
        self.names.setdefault(arn, name)
        self.received.setdefault(arn, {}).update(by_label)

    def record(self, arn: str, label: str, answer: Mapping[str, Any]) -> None:
        """Keep an answer for the pair, and for every wanted label its version also carries.

        An answer lists all the labels on its version, so a deployment whose extra labels sit
        on the AWSCURRENT version needs no call for them once that answer is in.
        """
        version = _version(arn, answer)
        self.names.setdefault(arn, str(answer.get("Name", "")))
        by_label = self.received.setdefault(arn, {})
        by_label.setdefault(label, version)
        for stage in version.version_stages:
            if stage in self.wanted[arn]:
                by_label.setdefault(stage, version)


def _wanted(
    resources: Sequence[SecretResource],
) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """Return the labels needed per ARN (merged across resources) and each ARN's name."""
    wanted: dict[str, dict[str, None]] = {}
    names: dict[str, str] = {}
    for resource in resources:
        # A dict keeps first-seen order without duplicates; AWSCURRENT stays first.
        labels = wanted.setdefault(resource.arn, {})
        labels.update(dict.fromkeys(resource.labels))
        names.setdefault(resource.arn, resource.secret_name)
    return {arn: tuple(labels) for arn, labels in wanted.items()}, names


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
                (`edge.secrets.iot_credentials.aws_session`); botocore's chain if not given.
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
        wanted, names = _wanted(resources)
        run = _FetchProgress(wanted=wanted, names_asked=names)
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
        run: _FetchProgress,
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
                        code=_ACCESS_DENIED,
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

    async def _fetch_all(self, run: _FetchProgress) -> None:
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

    def _spawn(self, run: _FetchProgress, tg: asyncio.TaskGroup) -> None:
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

    async def _fetch_label(self, run: _FetchProgress, arn: str, label: str) -> None:
        """Fetch one (ARN, label) pair with GetSecretValue, unless it has arrived already."""
        async with self._limit:
            if run.has(arn, label):
                return
            answer = await self._get_secret_value(arn, label)
        run.record(arn, label, answer)

    async def _fetch_version(
        self, run: _FetchProgress, arn: str, version_id: str, labels: tuple[str, ...]
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
        except (SecretNotFoundError, _InvalidStateError):
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
        except _InvalidStateError as exc:
            # Secrets Manager refuses reads of a secret in its deletion recovery window; to the
            # operator that secret is gone.
            if not await self._secret_exists(arn):
                raise SecretNotFoundError(arn) from exc.__cause__
            raise
        return answer

    async def _secret_exists(self, arn: str) -> bool:
        """Ask DescribeSecret whether the secret exists and is not marked for deletion."""
        with map_exceptions(arn, operation="DescribeSecret"):
            try:
                described: Mapping[str, Any] = await self._client.describe_secret(SecretId=arn)
            except ClientError as exc:
                if _error_code(exc)[0] == _NOT_FOUND:
                    return False
                raise
        return described.get("DeletedDate") is None

    async def _fetch_batch(
        self, run: _FetchProgress, tg: asyncio.TaskGroup, arns: Sequence[str]
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
        matched, codes = _match_batch({a: run.names_asked[a] for a in arns}, *answered)
        for arn in arns:
            value = matched.get(arn)
            if value is not None:
                run.record(arn, AWSCURRENT, value)
                continue
            code = codes.get(arn)
            if code == _NOT_FOUND:
                raise SecretNotFoundError(arn)
            if code == _ACCESS_DENIED:
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
        code, status = _error_code(exc)
        if code not in _BATCH_REFUSED_CODES and status != _HTTP_NOT_IMPLEMENTED:
            return False
        if self._batch_available:
            self._batch_available = False
            self._log.warning("fetch.batch.unavailable", code=code, fallback="GetSecretValue")
        return True
