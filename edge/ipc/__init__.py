# SPDX-License-Identifier: Apache-2.0
"""The IPC between worker processes and the core: sans-IO protocol, asyncio server, blocking client.

Importing any part of the package runs this file first, in every worker: so it imports
nothing, and each name below loads its module on first use (PEP 562 `__getattr__`). A worker
that only answers invocations (`edge.child.runtime`, which imports `edge.ipc.protocol`) never
loads the client, a function that reads secrets never loads the server's side (asyncio,
structlog), and neither reaches the core's side.
"""

from __future__ import annotations

import importlib

# `typing` (and what it imports) costs a worker about 0.6 MB: names used only in annotations
# are imported for the type checker alone (mypy treats `TYPE_CHECKING` as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from edge.ipc.client import (
        IDEMPOTENT_OPS,
        IpcCallError,
        IpcClient,
        IpcConnectionError,
        IpcTimeoutError,
    )
    from edge.ipc.protocol import (
        CLOSED,
        ERROR_STATUSES,
        FUNCTION_ERRORS,
        HEADER_SIZE,
        INVOCATION_TYPES,
        KNOWN_OPS,
        MAX_FRAME_SIZE,
        MAX_HANDSHAKE_FRAME_SIZE,
        NEED_DATA,
        OP_CORE_STATUS,
        OP_GET_SECRET_VALUE,
        OP_GET_SECRET_VALUE_V1,
        OP_INVOKE,
        OP_LIST_SECRETS,
        OP_PUBLISH,
        OP_WATCH,
        Connection,
        Event,
        Goodbye,
        Hello,
        Invoke,
        InvokeResult,
        Request,
        Response,
        Role,
        Sentinel,
        State,
        Welcome,
    )
    from edge.ipc.server import IpcServer, RequestHandler, WorkerIdentity

_CLIENT_NAMES = frozenset(
    {"IDEMPOTENT_OPS", "IpcCallError", "IpcClient", "IpcConnectionError", "IpcTimeoutError"}
)
_SERVER_NAMES = frozenset({"IpcServer", "RequestHandler", "WorkerIdentity"})

__all__ = [
    "CLOSED",
    "ERROR_STATUSES",
    "FUNCTION_ERRORS",
    "HEADER_SIZE",
    "IDEMPOTENT_OPS",
    "INVOCATION_TYPES",
    "KNOWN_OPS",
    "MAX_FRAME_SIZE",
    "MAX_HANDSHAKE_FRAME_SIZE",
    "NEED_DATA",
    "OP_CORE_STATUS",
    "OP_GET_SECRET_VALUE",
    "OP_GET_SECRET_VALUE_V1",
    "OP_INVOKE",
    "OP_LIST_SECRETS",
    "OP_PUBLISH",
    "OP_WATCH",
    "Connection",
    "Event",
    "Goodbye",
    "Hello",
    "Invoke",
    "InvokeResult",
    "IpcCallError",
    "IpcClient",
    "IpcConnectionError",
    "IpcServer",
    "IpcTimeoutError",
    "Request",
    "RequestHandler",
    "Response",
    "Role",
    "Sentinel",
    "State",
    "Welcome",
    "WorkerIdentity",
]


def __getattr__(name: str) -> Any:  # noqa: ANN401 - whatever the submodule holds
    """Load a public name's module on first use only (see the module docstring)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _CLIENT_NAMES:
        module = "edge.ipc.client"
    elif name in _SERVER_NAMES:
        module = "edge.ipc.server"
    else:
        module = "edge.ipc.protocol"
    return getattr(importlib.import_module(module), name)
