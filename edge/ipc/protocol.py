# SPDX-License-Identifier: Apache-2.0
"""The IPC wire protocol, sans-IO, in one import: events, frames, the state machine, shortcuts.

Nothing here touches a socket or imports asyncio, so workers use it as the core does. The
parts, each in a module of its own:

* `edge.ipc.events`: the seven frame events (`Hello`, `Welcome`, `Goodbye`, `Request`,
  `Response`, `Invoke`, `InvokeResult`) and the vocabulary they check (ops, statuses, limits);
* `edge.ipc.codec`: length-prefixed msgpack frames to and from events (`encode`, `decode`);
* `edge.ipc.connection`: `Connection`, one end of a conversation, and `TRANSITIONS`, the table
  of what may be sent and received in which state;
* `edge.ipc.fastpath`: byte-level shortcuts for the hottest exchanges, allowed per state by
  what the table says.
"""

from __future__ import annotations

from edge.ipc.codec import (
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    MAX_HANDSHAKE_FRAME_SIZE,
    decode,
    encode,
)
from edge.ipc.connection import (
    CLOSED,
    NEED_DATA,
    TRANSITIONS,
    Connection,
    Role,
    Sentinel,
    State,
)
from edge.ipc.events import (
    ERROR_STATUSES,
    EVENT_TYPES,
    FUNCTION_ERRORS,
    INVOCATION_TYPES,
    KNOWN_OPS,
    MAX_OP_LENGTH,
    MAX_REQUEST_ID,
    MAX_TOKEN_LENGTH,
    OP_CORE_STATUS,
    OP_GET_SECRET_VALUE,
    OP_GET_SECRET_VALUE_V1,
    OP_INVOKE,
    OP_LIST_SECRETS,
    OP_PUBLISH,
    OP_WATCH,
    Event,
    Goodbye,
    Hello,
    Invoke,
    InvokeResult,
    Request,
    Response,
    Welcome,
)
from edge.ipc.fastpath import REQUEST_HEAD, request_id_end, response_frame

__all__ = [
    "CLOSED",
    "ERROR_STATUSES",
    "EVENT_TYPES",
    "FUNCTION_ERRORS",
    "HEADER_SIZE",
    "INVOCATION_TYPES",
    "KNOWN_OPS",
    "MAX_FRAME_SIZE",
    "MAX_HANDSHAKE_FRAME_SIZE",
    "MAX_OP_LENGTH",
    "MAX_REQUEST_ID",
    "MAX_TOKEN_LENGTH",
    "NEED_DATA",
    "OP_CORE_STATUS",
    "OP_GET_SECRET_VALUE",
    "OP_GET_SECRET_VALUE_V1",
    "OP_INVOKE",
    "OP_LIST_SECRETS",
    "OP_PUBLISH",
    "OP_WATCH",
    "REQUEST_HEAD",
    "TRANSITIONS",
    "Connection",
    "Event",
    "Goodbye",
    "Hello",
    "Invoke",
    "InvokeResult",
    "Request",
    "Response",
    "Role",
    "Sentinel",
    "State",
    "Welcome",
    "decode",
    "encode",
    "request_id_end",
    "response_frame",
]
