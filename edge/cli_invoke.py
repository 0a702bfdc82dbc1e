# SPDX-License-Identifier: Apache-2.0
"""`edge invoke`: the client that calls a deployed function through the running core's IPC.

Also the operator's way in for other commands that ask the running core (`edge status`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edge.errors import (
    CoreNotRunningError,
    CoreUnreachableError,
    InvokeRefusedError,
    IpcCallError,
    IpcConnectionError,
)
from edge.ipc.client import IpcClient
from edge.ipc.protocol import OP_INVOKE
from edge.statedir import ADMIN_TOKEN_FILE, ipc_dir, ipc_socket_path

#: Longest a CLI invocation waits; a function's own Timeout ends it sooner.
INVOKE_TIMEOUT_SECONDS = 900.0


def invoke_function(
    state_dir: Path, function_arn: str, payload: bytes, *, invocation_type: str = "RequestResponse"
) -> dict[str, Any]:
    """Invoke a function on the running core; return `{"Payload", "FunctionError"}`."""
    args = {
        "FunctionName": function_arn,
        "Payload": payload,
        "ClientContext": "",
        "InvocationType": invocation_type,
    }
    try:
        return operator_call(state_dir, OP_INVOKE, args, timeout=INVOKE_TIMEOUT_SECONDS)
    except IpcCallError as exc:
        raise InvokeRefusedError(function_arn, exc.status, exc.message) from None


def operator_call(
    state_dir: Path, op: str, args: dict[str, Any], *, timeout: float
) -> dict[str, Any]:
    """Call the running core as its operator (the token it writes at start).

    Raises:
        CoreNotRunningError: No core serves this state directory.
        CoreUnreachableError: This user may not read the operator token the core wrote.
        IpcCallError: The core refused the call.
    """
    try:
        token = (ipc_dir(state_dir) / ADMIN_TOKEN_FILE).read_text().strip()
    except FileNotFoundError:
        raise CoreNotRunningError(state_dir, "its operator token is missing") from None
    except PermissionError:
        raise CoreUnreachableError(state_dir, os.getuid()) from None
    client = IpcClient(str(ipc_socket_path(state_dir)), token)
    try:
        return client.call(op, args, timeout=timeout)
    except IpcConnectionError as exc:
        raise CoreNotRunningError(state_dir, exc.problem) from None
    finally:
        client.close()
