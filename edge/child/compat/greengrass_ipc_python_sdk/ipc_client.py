"""Greengrass V1's `IPCClient`, implemented over the edge core's msgpack IPC.

`greengrasssdk` routes everything through `Lambda.Client._invoke_internal`, which calls
`post_work(function_arn, payload, client_context, invocation_type)` and then
`get_work_result(function_arn, invocation_id)`. V1 sent both to the daemon over HTTP; here
`post_work` makes one IPC call through `edge.child.function.answer` (the worker's one client,
and its cache of answers: a repeated `get_secret_value` makes no round trip),
chosen by the target ARN (the secrets manager and router system functions become native
operations), and keeps the answer until `get_work_result` collects it.
"""

from __future__ import annotations

import base64
import itertools
import json
import os

from edge.child import function
from edge.ipc.client import IpcCallError, IpcConnectionError
from edge.ipc.protocol import OP_GET_SECRET_VALUE_V1, OP_INVOKE, OP_PUBLISH

# Annotations only: a worker loads no `typing` (see edge/child/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Fixed for the worker's life: read once, not per call (the secrets path is hot).
_SECRETS_MANAGER_ARN = os.environ.get("SECRETS_MANAGER_FUNCTION_ARN")
_ROUTER_ARN = os.environ.get("ROUTER_FUNCTION_ARN")
# Invocation ids only need to be unique within this process.
_invocation_ids = itertools.count(1)


class IPCException(Exception):  # noqa: N818 - V1's name, imported by greengrasssdk
    """Raised when the core can't be reached or refuses the call."""


class WorkItem:
    """V1's unit of work (kept for code that imports it)."""

    def __init__(self, invocation_id: str, payload: bytes, client_context: str) -> None:
        self.invocation_id = invocation_id
        self.payload = payload
        self.client_context = client_context


class GetWorkResultOutput:
    """What `get_work_result` returns: the function's answer and its error kind ('' if none)."""

    __slots__ = ("func_err", "invocation_id", "payload")

    def __init__(self, payload: bytes, invocation_id: str = "", func_err: str = "") -> None:
        self.payload = payload
        self.invocation_id = invocation_id
        self.func_err = func_err


class IPCClient:
    """The subset of V1's IPC client that `greengrasssdk` calls."""

    def __init__(self, endpoint: str = "localhost", port: int | None = None) -> None:
        # endpoint and port addressed V1's HTTP daemon; the core's socket comes from the env.
        self.endpoint = endpoint
        self.port = port
        # Filled by post_work, emptied by get_work_result, possibly from several threads: a
        # dict's item assignment and pop are each atomic, and ids are never reused.
        self._results: dict[str, GetWorkResultOutput] = {}

    def post_work(
        self,
        function_arn: str,
        payload: bytes,
        client_context: str | bytes = "",
        invocation_type: str = "RequestResponse",
    ) -> str:
        """Send work to a function (or a system function); return an invocation id."""
        # The SDK's secret reads (bytes, no context) come first: most are answered from the
        # worker's cache, where this method is most of what a read costs besides the SDK.
        data = payload if type(payload) is bytes else _as_bytes(payload)
        if function_arn == _SECRETS_MANAGER_ARN:
            output = self._secrets_manager(data)
        else:
            context = (
                client_context.decode() if isinstance(client_context, bytes) else client_context
            )
            if function_arn == _ROUTER_ARN:
                output = self._publish(data, context)
            else:
                output = self._invoke(function_arn, data, context, invocation_type)
        invocation_id = str(next(_invocation_ids))
        if invocation_type != "Event":
            output.invocation_id = invocation_id
            self._results[invocation_id] = output
        return invocation_id

    def get_work_result(self, function_arn: str, invocation_id: str) -> GetWorkResultOutput:  # noqa: ARG002 - V1 signature
        """Collect the answer to an earlier `post_work`."""
        output = self._results.pop(invocation_id, None)
        if output is None:
            raise IPCException(f"no result for invocation {invocation_id}")
        return output

    def _secrets_manager(self, data: bytes) -> GetWorkResultOutput:
        # The SDK's JSON goes to the core as is and its JSON answer comes back ready: the core
        # parses each request shape once and encodes each secret version once, per deployment.
        try:
            result = _call(OP_GET_SECRET_VALUE_V1, {"Payload": data})
        except IpcCallError as exc:
            # V1's secrets manager function answered errors in the payload, not as FunctionError.
            return _error_payload(exc.status, exc.message)
        return GetWorkResultOutput(result["Payload"])

    def _publish(self, data: bytes, context: str) -> GetWorkResultOutput:
        custom = _decode_client_context(context).get("custom", {})
        args = {
            "Topic": custom.get("subject", ""),
            "Payload": data,
            "QueueFullPolicy": custom.get("queueFullPolicy", ""),
        }
        try:
            _call(OP_PUBLISH, args)
        except IpcCallError as exc:
            raise IPCException(f"publish failed ({exc.status}): {exc.message}") from None
        return GetWorkResultOutput(b"")

    def _invoke(
        self, function_arn: str, data: bytes, context: str, invocation_type: str
    ) -> GetWorkResultOutput:
        args = {
            "FunctionName": function_arn,
            "Payload": data,
            "ClientContext": context,
            "InvocationType": invocation_type,
        }
        try:
            result = _call(OP_INVOKE, args)
        except IpcCallError as exc:
            raise IPCException(f"invoke failed ({exc.status}): {exc.message}") from None
        return GetWorkResultOutput(
            bytes(result.get("Payload") or b""), func_err=str(result.get("FunctionError") or "")
        )


def _call(op: str, args: dict[str, Any]) -> dict[str, Any]:
    # The worker's one client and connection, shared with `edge.child.function`'s callers.
    try:
        return function.answer(op, args)
    except IpcConnectionError as exc:
        raise IPCException(str(exc)) from None


def _as_bytes(payload: bytes | bytearray | str | None) -> bytes:
    return payload.encode() if isinstance(payload, str) else bytes(payload or b"")


def _error_payload(status: int, message: str) -> GetWorkResultOutput:
    return GetWorkResultOutput(json.dumps({"Status": status, "Message": message}).encode())


def _decode_client_context(context: str) -> dict[str, Any]:
    if not context:
        return {}
    try:
        decoded = json.loads(base64.b64decode(context))
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) else {}
