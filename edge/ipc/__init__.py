# SPDX-License-Identifier: Apache-2.0
"""The IPC between worker processes and the core: sans-IO protocol, asyncio server, blocking client.

Workers import `edge.ipc.client`, which runs this file first: so the server's names (asyncio,
structlog) load only when someone asks for them (PEP 562 `__getattr__`), and a worker never
pays for or reaches the core's side.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from edge.ipc.server import IpcServer, RequestHandler, WorkerIdentity

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


def __getattr__(name: str) -> Any:  # noqa: ANN401 - whatever the server module holds
    """Load the server's names on first use only (see the module docstring)."""
    if name in _SERVER_NAMES:
        return getattr(importlib.import_module("edge.ipc.server"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
