# SPDX-License-Identifier: Apache-2.0
"""What the core answers on its IPC: secrets (access-checked), local invokes, publishes.

Every answer is computed from memory: the live secrets and the group's policies are indexed
once per store change (`edge.secrets.live`), so a `get_secret_value` costs two dict lookups and
a policy check, with no disk or network on the hot path. Errors use V1's `{"Status",
"Message"}` shape; a message names the secret and the function, never a value.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

from structlog.typing import FilteringBoundLogger

from edge.audit import DENIED, INVALID, NOT_FOUND, AuditLog
from edge.ipc.invalidations import Invalidations
from edge.ipc.protocol import (
    OP_CORE_STATUS,
    OP_GET_SECRET_VALUE,
    OP_GET_SECRET_VALUE_V1,
    OP_INVOKE,
    OP_LIST_SECRETS,
    OP_PUBLISH,
    OP_WATCH,
    Request,
    Response,
)
from edge.ipc.server import WorkerIdentity
from edge.log import get_logger
from edge.secrets.index import IndexSource, SecretAnswer, SecretIndex, secret_answer
from edge.workers.manager import UnknownFunctionError, WorkerManager

CURRENT = "AWSCURRENT"
#: Who `edge invoke` and `edge status` call as: may invoke and ask for status, reads no secret.
OPERATOR_IDENTITY = "edge:operator"
Publisher = Callable[[str, str, bytes], Awaitable[None]]
#: Refreshes one secret (by resource id) before a `Refresh: true` read; never raises.
RefreshHint = Callable[[str], Awaitable[bool]]


#: What an error status means in the audit log.
_AUDIT_OUTCOMES = {403: DENIED, 404: NOT_FOUND}
#: How many distinct V1 JSON requests the index remembers the parse of.
MAX_CACHED_V1_REQUESTS = 1024
#: Most reads one reported entry may claim: a report is the worker's word, so it is bounded.
MAX_REPORTED_COUNT = 1 << 32


class ServiceError(Exception):
    """An error answer: V1's Status code and a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def get_secret_value(
    index: SecretIndex, function_arn: str, args: Mapping[str, Any]
) -> dict[str, Any]:
    """Answer one `get_secret_value` for a caller, or raise ServiceError."""
    return find_answer(index, function_arn, args).result


def find_answer(index: SecretIndex, function_arn: str, args: Mapping[str, Any]) -> SecretAnswer:
    """Find the answer a caller may have for `args`, or raise ServiceError saying why not."""
    secret_id = args.get("SecretId")
    if not isinstance(secret_id, str) or not secret_id:
        raise ServiceError(400, "SecretId is required and must be a string")
    # Absent, null and "" all mean "not given" (the V1 SDK sends ""); any other non-string is
    # refused, including falsy ones such as 0 or [] that `or ""` would pass as "not given".
    stage, version_id = args.get("VersionStage"), args.get("VersionId")
    stage = "" if stage is None else stage
    version_id = "" if version_id is None else version_id
    if not isinstance(stage, str) or not isinstance(version_id, str):
        raise ServiceError(400, "VersionStage and VersionId must be strings")
    if stage and version_id:
        raise ServiceError(400, "VersionId and VersionStage cannot both be specified")
    secret = index.by_id.get(secret_id)
    if secret is None:
        raise ServiceError(404, f"secret {secret_id!r} is not deployed to this core")
    if secret.resource_id not in index.grants.get(function_arn, frozenset()):
        raise ServiceError(
            403,
            f"function {function_arn} may not read secret {secret.name!r}: add a "
            f"ResourceAccessPolicies entry for resource {secret.resource_id!r} with Permission ro",
        )
    if version_id:
        version = secret.versions.get(version_id)
        if version is None:
            raise ServiceError(
                404, f"version {version_id!r} of secret {secret.name!r} is not on this core"
            )
    else:
        label = stage or CURRENT
        version = secret.version_for(label)
        if version is None:
            raise ServiceError(
                404,
                f"staging label {label!r} of secret {secret.name!r} is not deployed to this core; "
                f"add it to AdditionalStagingLabelsToDownload",
            )
    cached = index.answers.get((secret.resource_id, version.version_id))
    if cached is None:
        cached = SecretAnswer(secret.resource_id, secret_answer(secret, version))
    return cached


def granted_secrets(index: SecretIndex, function_arn: str) -> dict[str, Any]:
    """The secrets `function_arn` may read, with their versions on this core; never a value."""
    granted = index.grants.get(function_arn, frozenset())
    listed: dict[str, dict[str, Any]] = {}
    # by_id holds each secret under its name and its ARN: list it once.
    for secret in index.by_id.values():
        if secret.resource_id in granted and secret.arn not in listed:
            listed[secret.arn] = {
                "ARN": secret.arn,
                "Name": secret.name,
                # The labels this core answers by, which may be fewer than Secrets Manager's.
                "Versions": [
                    {
                        "VersionId": version_id,
                        "VersionStages": [
                            label for label, vid in secret.labels.items() if vid == version_id
                        ],
                    }
                    for version_id in secret.versions
                ],
            }
    return {"Secrets": sorted(listed.values(), key=lambda entry: str(entry["Name"]))}


def v1_request_args(index: SecretIndex, args: Mapping[str, Any]) -> dict[str, Any]:
    """Parse the V1 SDK's JSON request (`args["Payload"]`) into get_secret_value arguments."""
    payload = args.get("Payload")
    if not isinstance(payload, bytes):
        raise ServiceError(400, "the request needs a Payload holding the SDK's JSON request")
    cache = index.v1_requests
    parsed = cache.get(payload)
    if parsed is None:
        try:
            parsed = json.loads(payload)
        except ValueError:
            raise ServiceError(400, "the request is not JSON") from None
        if not isinstance(parsed, dict):
            raise ServiceError(400, "the request is not a JSON object")
        if len(cache) >= MAX_CACHED_V1_REQUESTS:
            cache.clear()
        cache[payload] = parsed
    return parsed


class CoreServices:
    """The IPC request handler: dispatches by op, answers from memory."""

    def __init__(
        self,
        *,
        manager: WorkerManager,
        publish: Publisher,
        secrets: IndexSource,
        audit: AuditLog | None = None,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._manager = manager
        self._publish = publish
        self._audit = audit
        self._log = logger or get_logger("services")
        self._secrets = secrets
        #: Set by the core: what a `Refresh: true` read awaits first. None: ignored.
        self.refresh_hint: RefreshHint | None = None
        #: Set by the core: the report `edge status` asks for. None: status is not served.
        self.status_report: Callable[[], dict[str, Any]] | None = None
        #: Reads served while the store was older than the staleness limit (for metrics).
        self.stale_reads = 0
        self._stale_at = math.inf
        #: The workers' caches of answers: their watches, and the invalidations pushed to them.
        self.invalidations: Invalidations[SecretIndex] = Invalidations(
            current=lambda: self.index, on_reads=self._reported_reads
        )

    @property
    def index(self) -> SecretIndex:
        """The index answers come from; `LiveSecrets` swaps it at every commit."""
        return self._secrets.index

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every index swap: answers given before may no longer hold."""
        self._secrets.on_change(callback)

    def count_stale_reads(self, stored_at: float, stale_after: float) -> None:
        """Count reads from now on once the store written at `stored_at` is `stale_after` old.

        Args:
            stored_at: When the store was last replaced, wall-clock seconds.
            stale_after: Seconds after which its secrets count as stale.
        """
        self._stale_at = stored_at + stale_after

    def __call__(
        self, identity: WorkerIdentity, request: Request
    ) -> Response | Awaitable[Response]:
        """Answer one request: secrets synchronously (the hot path), the rest as a coroutine."""
        op = request.op
        if op == OP_GET_SECRET_VALUE:
            args = request.args
            if args.get("Refresh") is True and self.refresh_hint is not None:
                return self._refresh_then_read(identity, request, args, self.refresh_hint, v1=False)
            return self._read(identity, request, args, v1=False, repeatable=True)
        if op == OP_GET_SECRET_VALUE_V1:
            try:
                args = v1_request_args(self.index, request.args)
            except ServiceError as exc:
                return self._refused(identity, request, {}, exc)
            if args.get("Refresh") is True and self.refresh_hint is not None:
                return self._refresh_then_read(identity, request, args, self.refresh_hint, v1=True)
            return self._read(identity, request, args, v1=True, repeatable=True)
        return self._answer(identity, request)

    async def _watch(self, identity: WorkerIdentity, args: dict[str, Any]) -> dict[str, Any]:
        """Serve one poll of a worker cache's watch (`edge.ipc.invalidations`)."""
        try:
            return await self.invalidations.watch(identity, args)
        except ValueError as exc:
            raise ServiceError(400, str(exc)) from None
        except LookupError as exc:
            raise ServiceError(404, str(exc)) from None

    def _reported_reads(
        self, identity: WorkerIdentity, index: SecretIndex, counts: list[Any]
    ) -> None:
        """Audit reads a worker's cache served, as self-reported; only what it may read.

        Each entry is `[op, args, count]` as the worker sent it: resolved against the index
        the worker's cache was filled from, like the read itself was. Entries that don't
        resolve to a granted version are dropped.
        """
        if self._audit is None:
            return
        function_arn = identity.function_arn
        for entry in counts:
            if not isinstance(entry, list) or len(entry) != 3:  # noqa: PLR2004 - op, args, count
                continue
            op, args, count = entry
            if (
                type(count) is not int
                or not 0 < count <= MAX_REPORTED_COUNT
                or not isinstance(args, dict)
            ):
                continue
            try:
                if op == OP_GET_SECRET_VALUE_V1:
                    args = v1_request_args(index, args)
                elif op != OP_GET_SECRET_VALUE:
                    continue
                if args.get("Refresh"):
                    continue
                answer = find_answer(index, function_arn, args)
            except ServiceError:
                continue
            label = args.get("VersionStage") or ("" if args.get("VersionId") else CURRENT)
            self._audit.record_reported(function_arn, answer.audit_ids, label, count)

    async def _refresh_then_read(
        self,
        identity: WorkerIdentity,
        request: Request,
        args: Mapping[str, Any],
        hint: RefreshHint,
        *,
        v1: bool,
    ) -> Response:
        """Refresh the secret first (rate-limited by the refresher), then answer as usual.

        Only a caller that may read the secret can make the core ask Secrets Manager: the
        access check runs first. A failed refresh is the refresher's to log; the answer then
        comes from the store as it is.
        """
        try:
            answer = find_answer(self.index, identity.function_arn, args)
        except ServiceError as exc:
            return self._refused(identity, request, args, exc)
        await hint(answer.resource_id)
        return self._read(identity, request, args, v1=v1)

    def _read(
        self,
        identity: WorkerIdentity,
        request: Request,
        args: Mapping[str, Any],
        *,
        v1: bool,
        repeatable: bool = False,
    ) -> Response:
        """Answer an allowed read (counted and audited) or refuse it.

        With `repeatable`, the answer carries a `replay` (see `Response.replay`): the server may
        answer the same request bytes on the same connection again without asking, as long
        as the index this answer came from is the current one. A `Refresh` read never is: each
        one must reach the refresher.
        """
        index = self.index
        function_arn = identity.function_arn
        try:
            answer = find_answer(index, function_arn, args)
        except ServiceError as exc:
            return self._refused(identity, request, args, exc)
        stage = args.get("VersionStage")
        label = stage or ("" if args.get("VersionId") else CURRENT)
        self._count_read(function_arn, answer.audit_ids, label)
        replay = None
        if repeatable and not args.get("Refresh"):
            ids = answer.audit_ids

            def replay() -> bool:
                # Every deployment and refresh swaps in a new index: an answer (and the access
                # check behind it) holds exactly as long as the index it came from.
                if self.index is not index:
                    return False
                self._count_read(function_arn, ids, label)
                return True

        if v1:
            return Response.success(request.request_id, answer.v1_result, answer.v1_packed, replay)
        return Response.success(request.request_id, answer.result, answer.packed, replay)

    def _count_read(self, function_arn: str, ids: tuple[str, str, str], label: str) -> None:
        """Count an allowed read: stale-read metric and audit log."""
        if time.time() > self._stale_at:
            self.stale_reads += 1
        if self._audit is not None:
            self._audit.record_read(function_arn, ids, label)

    def _refused(
        self,
        identity: WorkerIdentity,
        request: Request,
        args: Mapping[str, Any],
        exc: ServiceError,
    ) -> Response:
        if self._audit is not None:
            label = args.get("VersionStage")
            self._audit.record_unknown(
                identity.function_arn,
                _AUDIT_OUTCOMES.get(exc.status, INVALID),
                args.get("SecretId", ""),
                label=label if isinstance(label, str) else "",
            )
        return self._failure(identity, request, exc)

    def _failure(self, identity: WorkerIdentity, request: Request, exc: ServiceError) -> Response:
        if exc.status == HTTPStatus.FORBIDDEN:  # V1's status for a refused read
            self._log.warning(
                "ipc.access_denied", function_arn=identity.function_arn, op=request.op
            )
        return Response.failure(request.request_id, exc.status, exc.message)

    async def _answer(self, identity: WorkerIdentity, request: Request) -> Response:
        try:
            if request.op == OP_WATCH:
                result = await self._watch(identity, request.args)
            else:
                result = await self._dispatch(identity.function_arn, request)
        except ServiceError as exc:
            return self._failure(identity, request, exc)
        return Response.success(request.request_id, result)

    async def _dispatch(self, caller: str, request: Request) -> dict[str, Any]:
        args = request.args
        if request.op == OP_INVOKE:
            return await self._invoke(args)
        if request.op == OP_PUBLISH:
            topic, payload = args.get("Topic"), args.get("Payload", b"")
            if not isinstance(topic, str) or not topic or not isinstance(payload, bytes):
                raise ServiceError(400, "publish needs a Topic string and Payload bytes")
            await self._publish(caller, topic, payload)
            return {}
        if request.op == OP_LIST_SECRETS:
            return granted_secrets(self.index, caller)
        if request.op == OP_CORE_STATUS:
            if caller != OPERATOR_IDENTITY or self.status_report is None:
                raise ServiceError(403, "only the core's operator may ask for its status")
            return self.status_report()
        raise ServiceError(400, f"unknown operation {request.op[:64]!r}")

    async def _invoke(self, args: Mapping[str, Any]) -> dict[str, Any]:
        target = args.get("FunctionName")
        payload = args.get("Payload", b"")
        context = args.get("ClientContext", "")
        kind = args.get("InvocationType", "RequestResponse")
        if (
            not isinstance(target, str)
            or not isinstance(payload, bytes)
            or not isinstance(context, str)
        ):
            raise ServiceError(
                400, "invoke needs FunctionName, Payload bytes and a ClientContext string"
            )
        if kind not in {"RequestResponse", "Event"}:
            raise ServiceError(
                400, f"InvocationType must be RequestResponse or Event, not {kind!r}"
            )
        try:
            outcome = await self._manager.invoke(
                target, payload, client_context=context, invocation_type=kind
            )
        except UnknownFunctionError:
            raise ServiceError(404, f"function {target} is not deployed to this core") from None
        return {"Payload": outcome.payload, "FunctionError": outcome.function_error}
