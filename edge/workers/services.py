# SPDX-License-Identifier: Apache-2.0
"""What the core answers on its IPC: secrets (access-checked), local invokes, publishes.

Every answer is computed from memory: the store's contents and the group's policies are
indexed once per deployment, so a `get_secret_value` costs two dict lookups and a policy check,
with no disk or network on the hot path. Errors use V1's `{"Status", "Message"}` shape; a
message names the secret and the function, never a value.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from structlog.typing import FilteringBoundLogger

from edge.ipc.protocol import OP_GET_SECRET_VALUE, OP_INVOKE, OP_PUBLISH, Request, Response
from edge.ipc.server import WorkerIdentity
from edge.log import get_logger
from edge.secrets.contents import LocalSecret, SecretVersion, StoreContents
from edge.workers.manager import UnknownFunctionError, WorkerManager
from edge.workers.spec import FunctionSpec

CURRENT = "AWSCURRENT"
Publisher = Callable[[str, str, bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SecretIndex:
    """The store's secrets by every id a caller may use, and who may read what."""

    by_id: Mapping[str, LocalSecret] = field(default_factory=dict)
    #: Qualified function ARN -> resource ids it may read.
    grants: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: (resource id, version id) -> the answer, built once per deployment: the hot path then
    #: only looks up and checks. Shared dicts: nothing downstream mutates an answer.
    answers: Mapping[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def build(cls, contents: StoreContents, specs: tuple[FunctionSpec, ...]) -> SecretIndex:
        """Index secrets by name and by ARN (exact strings only: no prefix or pattern tricks)."""
        by_id: dict[str, LocalSecret] = {}
        answers: dict[tuple[str, str], dict[str, Any]] = {}
        for secret in contents.secrets.values():
            by_id[secret.name] = secret
            by_id[secret.arn] = secret
            for version in secret.versions.values():
                answers[secret.resource_id, version.version_id] = secret_answer(secret, version)
        return cls(
            by_id=by_id,
            grants={s.function_arn: s.readable_resources for s in specs},
            answers=answers,
        )


class ServiceError(Exception):
    """An error answer: V1's Status code and a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def secret_answer(secret: LocalSecret, version: SecretVersion) -> dict[str, Any]:
    """V1's GetSecretValue answer; SecretBinary as base64 text, CreatedDate in ms."""
    answer: dict[str, Any] = {
        "ARN": secret.arn,
        "Name": secret.name,
        "VersionId": version.version_id,
        "VersionStages": list(version.version_stages),
        "CreatedDate": int(version.created_date * 1000),
    }
    if version.secret_string is not None:
        answer["SecretString"] = version.secret_string
    else:
        assert version.secret_binary is not None  # noqa: S101 - SecretVersion guarantees one
        answer["SecretBinary"] = base64.b64encode(version.secret_binary).decode("ascii")
    return answer


def get_secret_value(
    index: SecretIndex, function_arn: str, args: Mapping[str, Any]
) -> dict[str, Any]:
    """Answer one `get_secret_value` for a caller, or raise ServiceError."""
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
    return cached if cached is not None else secret_answer(secret, version)


class CoreServices:
    """The IPC request handler: dispatches by op, answers from memory."""

    def __init__(
        self,
        *,
        manager: WorkerManager,
        publish: Publisher,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._manager = manager
        self._publish = publish
        self._log = logger or get_logger("services")
        self.index = SecretIndex()

    def update(self, contents: StoreContents, specs: tuple[FunctionSpec, ...]) -> None:
        """Swap in a new deployment's secrets and grants (one reference assignment)."""
        self.index = SecretIndex.build(contents, specs)

    def __call__(
        self, identity: WorkerIdentity, request: Request
    ) -> Response | Awaitable[Response]:
        """Answer one request: secrets synchronously (the hot path), the rest as a coroutine."""
        if request.op == OP_GET_SECRET_VALUE:
            try:
                answer = get_secret_value(self.index, identity.function_arn, request.args)
            except ServiceError as exc:
                return self._failure(identity, request, exc)
            return Response.success(request.request_id, answer)
        return self._answer(identity, request)

    def _failure(self, identity: WorkerIdentity, request: Request, exc: ServiceError) -> Response:
        if exc.status == 403:  # noqa: PLR2004 - V1's status for a refused read
            self._log.warning(
                "ipc.access_denied", function_arn=identity.function_arn, op=request.op
            )
        return Response.failure(request.request_id, exc.status, exc.message)

    async def _answer(self, identity: WorkerIdentity, request: Request) -> Response:
        try:
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
