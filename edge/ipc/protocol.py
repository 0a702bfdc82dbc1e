# SPDX-License-Identifier: Apache-2.0
"""The IPC wire protocol, sans-IO: length-prefixed msgpack frames, typed events, one state table.

Theory of operation (after h11): a `Connection` is a pure state machine that never touches a
socket. Whoever owns the socket feeds it the bytes that arrived (`receive_data`, `b""` for EOF),
pulls typed events out (`next_event`) until it says `NEED_DATA`, and turns outgoing events into
bytes (`send`) that it writes itself. The same code therefore runs under the core's asyncio
server, inside a worker's blocking client, and in tests that feed it one byte at a time.

Frame format::

    +------------------------+---------------------------------------------+
    | length: uint32, big-   | msgpack map (bin type for bytes), `length`  |
    | endian, of the payload | bytes: {"type": "<tag>", <field>: <value>…} |
    +------------------------+---------------------------------------------+

The map holds exactly the event's fields plus "type" (`hello`, `welcome`, `goodbye`,
`request`, `response`, `invoke`, `invoke_result`). Unknown or missing fields, wrong field types,
msgpack extension types and anything longer than `MAX_FRAME_SIZE` are refused, so a peer can
only ever hand the core the seven shapes below.

Two conversations use this format:

* A worker's connection to the core's socket. The client (role `CLIENT`) sends `Hello` with its
  token and waits for `Welcome` (or `Goodbye` if refused); then it sends `Request`s and gets a
  `Response` for each, matched by `request_id`, possibly out of order.
* The process manager's control channel to one worker (a socketpair the child inherits). It is
  private by construction, so there is no handshake: the manager (role `MANAGER`) sends
  `Invoke`, the worker (role `WORKER`) answers `InvokeResult` with the same `invocation_id`.

Either side may send `Goodbye` at any time; after it, the conversation is over.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import Any, ClassVar, Final, NamedTuple, NoReturn, TypeAlias

import msgpack

from edge.errors import FrameTooLargeError, LocalProtocolError, RemoteProtocolError

# --- limits and vocabulary --------------------------------------------------------------------

#: Largest frame payload accepted or sent, in bytes. The biggest thing a frame must carry is an
#: invocation payload or its result: Greengrass V1 capped messages between local functions at
#: 128 KB, and a secret value is at most 64 KiB in Secrets Manager (its SecretBinary grows by a
#: third as base64). 1 MiB leaves 8x headroom over V1's largest legal message while bounding what
#: one connection can make the core buffer (the length is checked before a byte of the payload
#: is stored), so 100 misbehaving connections cost at most ~100 MiB, not gigabytes.
MAX_FRAME_SIZE: Final = 1024 * 1024
#: Largest frame accepted before the handshake is over (a Hello in, a Welcome or a Goodbye
#: out). Whoever can reach the socket can send these, token or not, so they must cost little:
#: the largest legal Hello is its keys, a pid and a token of `MAX_TOKEN_LENGTH` characters of up
#: to 4 bytes each, about 2.1 KB (ours are ~100 bytes); 4 KiB holds it with room and keeps
#: what a connection that never logs in can make the core buffer to one read.
MAX_HANDSHAKE_FRAME_SIZE: Final = 4096
#: Size of the length prefix in front of every frame.
HEADER_SIZE: Final = 4
#: Tokens are random strings the manager generates (e.g. 43 chars of `token_urlsafe(32)`); the
#: cap only keeps a hostile Hello from making the core hash a megabyte.
MAX_TOKEN_LENGTH: Final = 512
#: Request ids are unsigned and fit an int64, the widest integer msgpack carries in every
#: implementation a future worker might use.
MAX_REQUEST_ID: Final = 2**63 - 1
#: Operation names are short dotted identifiers; the cap keeps junk out of logs and metrics.
MAX_OP_LENGTH: Final = 128

OP_GET_SECRET_VALUE: Final = "secretsmanager.get_secret_value"  # noqa: S105 - an op name
#: The same read in Greengrass V1's own terms, for the `greengrasssdk` compat layer: the
#: SDK's JSON request as `{"Payload": bytes}`, answered with `{"Payload": <V1's JSON answer>}`
#: (errors as for OP_GET_SECRET_VALUE). The core parses and encodes the JSON once per request
#: shape and secret version, so the worker does neither.
OP_GET_SECRET_VALUE_V1: Final = "secretsmanager.get_secret_value_v1"  # noqa: S105 - an op name
OP_INVOKE: Final = "lambda.invoke"
OP_PUBLISH: Final = "iotdata.publish"
#: The operations the core serves; anything else is answered with status 400.
KNOWN_OPS: Final = frozenset({OP_GET_SECRET_VALUE, OP_GET_SECRET_VALUE_V1, OP_INVOKE, OP_PUBLISH})

#: The statuses Greengrass V1's IPC put in its `{"Status": …, "Message": …}` error payloads.
ERROR_STATUSES: Final = frozenset({400, 403, 404, 408, 413, 500})
#: Lambda's invocation types that Greengrass V1 supported.
INVOCATION_TYPES: Final = frozenset({"RequestResponse", "Event"})
#: Lambda's `FunctionError` values; "" means the handler returned normally.
FUNCTION_ERRORS: Final = frozenset({"", "Handled", "Unhandled"})

_HEADER = struct.Struct(">I")


# --- events -----------------------------------------------------------------------------------


def _check_str(value: object, name: str, *, max_length: int | None = None) -> None:
    if type(value) is not str or not value:
        raise LocalProtocolError(f"{name} must be a non-empty str")
    if max_length is not None and len(value) > max_length:
        raise LocalProtocolError(f"{name} is longer than {max_length} characters")


def _check_int(value: object, name: str, *, minimum: int, maximum: int = MAX_REQUEST_ID) -> None:
    # `type(...) is int` refuses bool, which msgpack would carry as a different type.
    if type(value) is not int or not minimum <= value <= maximum:
        raise LocalProtocolError(f"{name} must be an int in [{minimum}, {maximum}]")


class _Event:
    """What the seven frame events share: equality by fields, a field-wise repr, no __dict__.

    Events are values: treat them as read-only once built. They are plain slotted classes
    rather than frozen dataclasses because they are built twice per request on the hot path
    (a frozen dataclass assigns every field through `object.__setattr__`, which cost about as
    much as the rest of decoding), and so that a worker doesn't import `dataclasses` (and with
    it `inspect`) only for them.
    """

    __slots__ = ()
    TAG: ClassVar[str]
    #: The event's fields, in wire and constructor order.
    FIELDS: ClassVar[tuple[str, ...]]
    # Events hold dicts and bytes; like a non-frozen dataclass, they are not hashable.
    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        """Events are equal when they are of the same type with equal fields."""
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.FIELDS)

    def __repr__(self) -> str:
        """Show every field (subclasses that carry secrets or payloads override this)."""
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS)
        return f"{type(self).__name__}({fields})"

    def to_wire(self) -> dict[str, Any]:
        """Return the frame's msgpack map: "type" and every field."""
        wire: dict[str, Any] = {"type": self.TAG}
        for name in self.FIELDS:
            wire[name] = getattr(self, name)
        return wire


class Hello(_Event):
    """First frame of a worker's connection: who it claims to be.

    Attributes:
        token: The random token the manager gave this worker at spawn. Never logged.
        pid: The worker's process id, informational (the core trusts `SO_PEERCRED`, not this).
    """

    __slots__ = ("pid", "token")
    TAG: ClassVar[str] = "hello"
    FIELDS: ClassVar[tuple[str, ...]] = ("token", "pid")
    token: str
    pid: int

    def __init__(self, token: str, pid: int) -> None:
        """Check the field types and bounds."""
        _check_str(token, "Hello.token", max_length=MAX_TOKEN_LENGTH)
        _check_int(pid, "Hello.pid", minimum=1)
        self.token = token
        self.pid = pid

    def __repr__(self) -> str:
        """Never show the token: reprs end up in logs and tracebacks."""
        return f"Hello(token=****, pid={self.pid})"


class Welcome(_Event):
    """The core accepted a worker's Hello.

    Attributes:
        function_arn: The function the core identified the worker as.
    """

    __slots__ = ("function_arn",)
    TAG: ClassVar[str] = "welcome"
    FIELDS: ClassVar[tuple[str, ...]] = ("function_arn",)
    function_arn: str

    def __init__(self, function_arn: str) -> None:
        """Check the field types."""
        _check_str(function_arn, "Welcome.function_arn")
        self.function_arn = function_arn


class Goodbye(_Event):
    """The sender is closing the connection; nothing follows.

    Attributes:
        reason: Why, for the peer's error message (never a secret or a token).
    """

    __slots__ = ("reason",)
    TAG: ClassVar[str] = "goodbye"
    FIELDS: ClassVar[tuple[str, ...]] = ("reason",)
    reason: str

    def __init__(self, reason: str) -> None:
        """Check the field types."""
        if type(reason) is not str:
            raise LocalProtocolError("Goodbye.reason must be a str")
        self.reason = reason


class Request(_Event):
    """A worker asks the core to perform an operation.

    Attributes:
        request_id: Chosen by the client, unique among its requests in flight; the Response
            carries it back.
        op: One of the `OP_*` names (the core answers others with status 400).
        args: The operation's arguments, e.g. `{"SecretId": …, "VersionStage": …}`.
    """

    __slots__ = ("args", "op", "request_id")
    TAG: ClassVar[str] = "request"
    FIELDS: ClassVar[tuple[str, ...]] = ("request_id", "op", "args")
    request_id: int
    op: str
    args: dict[str, Any]

    def __init__(self, request_id: int, op: str, args: dict[str, Any]) -> None:
        """Check the field types (inline rather than with the helpers: this is the hot path)."""
        if type(request_id) is not int or not 0 <= request_id <= MAX_REQUEST_ID:
            raise LocalProtocolError(f"Request.request_id must be an int in [0, {MAX_REQUEST_ID}]")
        if type(op) is not str or not op or len(op) > MAX_OP_LENGTH:
            raise LocalProtocolError(f"Request.op must be a str of 1 to {MAX_OP_LENGTH} characters")
        if type(args) is not dict:
            raise LocalProtocolError("Request.args must be a map")
        self.request_id = request_id
        self.op = op
        self.args = args

    def __repr__(self) -> str:
        """Show argument names only: a payload may hold anything."""
        return f"Request(request_id={self.request_id}, op={self.op!r}, args={sorted(self.args)})"

    def to_wire(self) -> dict[str, Any]:
        """Return the frame's msgpack map."""
        return {"type": "request", "request_id": self.request_id, "op": self.op, "args": self.args}


class Response(_Event):
    """The core's answer to one Request: a result, or a V1-style error.

    Use `Response.success` and `Response.failure` rather than the constructor.

    Attributes:
        request_id: The Request's id.
        ok: True for a result, False for an error.
        result: The operation's result (for a secret: `ARN`, `Name`, `SecretString`, …) when
            `ok`, else None.
        error: `{"Status": 400|403|404|408|413|500, "Message": str}` when not `ok`, else None.
        packed_result: `result` already msgpack-encoded, when the sender has it (answers the
            core computes once per deployment); the frame then splices these bytes in instead
            of encoding `result` again. Not a wire field: the receiver gets `result`.
        replay: Set by a handler whose answer holds for every request with the same bytes
            (all but the id) from the same connection for as long as the handler's view of the
            world is unchanged. The core's server then answers such repeats from a cache of
            its own and calls `replay()` for each instead of the handler: it does what the
            handler would have done besides answering (count the read, audit it) and returns
            whether the cached answer still holds (False: the server drops its cache and asks
            the handler). Needs `packed_result`. Not a wire field.
    """

    __slots__ = ("error", "ok", "packed_result", "replay", "request_id", "result")
    TAG: ClassVar[str] = "response"
    FIELDS: ClassVar[tuple[str, ...]] = ("request_id", "ok", "result", "error")
    request_id: int
    ok: bool
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    packed_result: bytes | None
    replay: Callable[[], bool] | None

    def __init__(
        self,
        request_id: int,
        ok: bool,  # noqa: FBT001 - a wire field, positional on the fast path
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
    ) -> None:
        """Check the field types and that exactly one of result and error is set."""
        if type(request_id) is not int or not 0 <= request_id <= MAX_REQUEST_ID:
            raise LocalProtocolError(f"Response.request_id must be an int in [0, {MAX_REQUEST_ID}]")
        if ok is True:
            if type(result) is not dict or error is not None:
                raise LocalProtocolError("a successful Response has a result map and no error")
        elif ok is False:
            if (
                result is not None
                or type(error) is not dict
                or len(error) != 2  # noqa: PLR2004 - exactly Status and Message
                or type(error.get("Status")) is not int
                or error["Status"] not in ERROR_STATUSES
                or type(error.get("Message")) is not str
            ):
                raise LocalProtocolError(
                    "a failed Response has no result and an error map of exactly Status "
                    f"(one of {sorted(ERROR_STATUSES)}) and Message (str)"
                )
        else:
            raise LocalProtocolError("Response.ok must be a bool")
        self.request_id = request_id
        self.ok = ok
        self.result = result
        self.error = error
        self.packed_result = None
        self.replay = None

    @classmethod
    def success(
        cls,
        request_id: int,
        result: dict[str, Any],
        packed_result: bytes | None = None,
        replay: Callable[[], bool] | None = None,
    ) -> Response:
        """Build the answer to a request that succeeded.

        Args:
            request_id: The request's id.
            result: The result map.
            packed_result: `msgpack.packb(result, use_bin_type=True)`, if the caller keeps it
                (the frame then reuses it); it must encode exactly `result`.
            replay: See the class's `replay` attribute.
        """
        if type(request_id) is not int or not 0 <= request_id <= MAX_REQUEST_ID:
            raise LocalProtocolError(f"Response.request_id must be an int in [0, {MAX_REQUEST_ID}]")
        if type(result) is not dict:
            raise LocalProtocolError("a successful Response has a result map and no error")
        # The constructor's other checks hold by construction here; skipping them (and its
        # keyword dispatch) matters on the core's hot path, which builds one per read.
        response = cls.__new__(cls)
        response.request_id = request_id
        response.ok = True
        response.result = result
        response.error = None
        response.packed_result = packed_result
        response.replay = replay
        return response

    @classmethod
    def failure(cls, request_id: int, status: int, message: str) -> Response:
        """Build a V1-style error answer; `message` must never contain a secret value."""
        return cls(request_id, False, None, {"Status": status, "Message": message})  # noqa: FBT003

    def __repr__(self) -> str:
        """Show result keys only: a result may hold a secret value."""
        detail = f"result={sorted(self.result)}" if self.result is not None else f"{self.error}"
        return f"Response(request_id={self.request_id}, ok={self.ok}, {detail})"

    def to_wire(self) -> dict[str, Any]:
        """Return the frame's msgpack map."""
        return {
            "type": "response",
            "request_id": self.request_id,
            "ok": self.ok,
            "result": self.result,
            "error": self.error,
        }


class Invoke(_Event):
    """The manager asks a worker to run its handler once (control channel only).

    Attributes:
        invocation_id: Unique among the worker's invocations in flight (V1's request id).
        function_arn: The qualified ARN of the function being invoked.
        payload: The event, as the caller's bytes (usually JSON).
        client_context: Base64 of the caller's client context JSON, or "".
        invocation_type: "RequestResponse" or "Event".
        deadline_ms: When the invocation times out, in milliseconds on `time.monotonic()`'s
            clock (CLOCK_MONOTONIC, shared by every process on the host and immune to wall-clock
            jumps), for `context.get_remaining_time_in_millis()`.
    """

    __slots__ = (
        "client_context",
        "deadline_ms",
        "function_arn",
        "invocation_id",
        "invocation_type",
        "payload",
    )
    TAG: ClassVar[str] = "invoke"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "invocation_id",
        "function_arn",
        "payload",
        "client_context",
        "invocation_type",
        "deadline_ms",
    )
    invocation_id: str
    function_arn: str
    payload: bytes
    client_context: str
    invocation_type: str
    deadline_ms: int

    def __init__(  # noqa: PLR0917 - the frame's six fields, positional as on the wire
        self,
        invocation_id: str,
        function_arn: str,
        payload: bytes,
        client_context: str,
        invocation_type: str,
        deadline_ms: int,
    ) -> None:
        """Check the field types and vocabularies."""
        _check_str(invocation_id, "Invoke.invocation_id", max_length=128)
        _check_str(function_arn, "Invoke.function_arn")
        if type(payload) is not bytes:
            raise LocalProtocolError("Invoke.payload must be bytes")
        if type(client_context) is not str:
            raise LocalProtocolError("Invoke.client_context must be a str")
        if type(invocation_type) is not str or invocation_type not in INVOCATION_TYPES:
            raise LocalProtocolError(
                f"Invoke.invocation_type must be one of {sorted(INVOCATION_TYPES)}"
            )
        _check_int(deadline_ms, "Invoke.deadline_ms", minimum=0)
        self.invocation_id = invocation_id
        self.function_arn = function_arn
        self.payload = payload
        self.client_context = client_context
        self.invocation_type = invocation_type
        self.deadline_ms = deadline_ms

    def __repr__(self) -> str:
        """Show the payload's size only."""
        return (
            f"Invoke(invocation_id={self.invocation_id!r}, function_arn={self.function_arn!r}, "
            f"payload=<{len(self.payload)} bytes>, invocation_type={self.invocation_type!r}, "
            f"deadline_ms={self.deadline_ms})"
        )


class InvokeResult(_Event):
    """A worker's answer to one Invoke (control channel only).

    Attributes:
        invocation_id: The Invoke's id.
        payload: What the handler returned (JSON bytes), or the error document.
        function_error: "" on success, "Handled" or "Unhandled" as in Lambda's `FunctionError`.
    """

    __slots__ = ("function_error", "invocation_id", "payload")
    TAG: ClassVar[str] = "invoke_result"
    FIELDS: ClassVar[tuple[str, ...]] = ("invocation_id", "payload", "function_error")
    invocation_id: str
    payload: bytes
    function_error: str

    def __init__(self, invocation_id: str, payload: bytes, function_error: str) -> None:
        """Check the field types and vocabularies."""
        _check_str(invocation_id, "InvokeResult.invocation_id", max_length=128)
        if type(payload) is not bytes:
            raise LocalProtocolError("InvokeResult.payload must be bytes")
        if type(function_error) is not str or function_error not in FUNCTION_ERRORS:
            raise LocalProtocolError(
                f"InvokeResult.function_error must be one of {sorted(FUNCTION_ERRORS)}"
            )
        self.invocation_id = invocation_id
        self.payload = payload
        self.function_error = function_error

    def __repr__(self) -> str:
        """Show the payload's size only."""
        return (
            f"InvokeResult(invocation_id={self.invocation_id!r}, "
            f"payload=<{len(self.payload)} bytes>, function_error={self.function_error!r})"
        )


Event: TypeAlias = Hello | Welcome | Goodbye | Request | Response | Invoke | InvokeResult
EVENT_TYPES: Final[tuple[type[Event], ...]] = (
    Hello,
    Welcome,
    Goodbye,
    Request,
    Response,
    Invoke,
    InvokeResult,
)
_BY_TAG: Final[dict[str, type[Event]]] = {cls.TAG: cls for cls in EVENT_TYPES}


class Sentinel(enum.Enum):
    """What `Connection.next_event` returns when it has no event."""

    #: Feed more bytes with `receive_data`, then ask again.
    NEED_DATA = "NEED_DATA"
    #: The conversation is over (Goodbye, or EOF between frames); nothing more will come.
    CLOSED = "CLOSED"


NEED_DATA: Final = Sentinel.NEED_DATA
CLOSED: Final = Sentinel.CLOSED


# --- encoding ---------------------------------------------------------------------------------


def _refuse_ext(code: int, _data: bytes) -> object:
    # Extension types would hand the core objects (timestamps, custom types) no handler expects.
    raise ValueError(f"msgpack extension type {code} is not allowed")


def encode(event: Event, *, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """Return the frame (length prefix and msgpack payload) for an event, without any state check.

    Prefer `Connection.send`, which also enforces the conversation's rules.

    Raises:
        FrameTooLargeError: The payload would exceed `max_frame_size`.
        LocalProtocolError: A field holds a value msgpack can't encode.
    """
    try:
        payload = msgpack.packb(event.to_wire(), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"a {event.TAG} frame can't be encoded: {exc}") from None
    return _frame(event, payload, max_frame_size)


def _frame(event: Event, payload: bytes, max_frame_size: int) -> bytes:
    size = len(payload)
    if size > max_frame_size:
        raise FrameTooLargeError(event.TAG, size, max_frame_size)
    return _HEADER.pack(size) + payload


def decode(payload: bytes | bytearray | memoryview) -> Event:
    """Turn one frame's msgpack payload (without the length prefix) into an event.

    Raises:
        RemoteProtocolError: The payload is not valid msgpack, not a map, has an unknown type or
            fields that don't match it. The message never quotes the payload.
    """
    # Every element takes at least one byte, so the frame's length bounds every count; msgpack
    # then never allocates more than the frame could describe.
    n = len(payload)
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=n,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=n,
            max_ext_len=0,
            ext_hook=_refuse_ext,
        )
    except (ValueError, TypeError) as exc:  # every msgpack decoding error is a ValueError
        raise RemoteProtocolError(f"frame is not valid msgpack ({type(exc).__name__})") from None
    if type(obj) is not dict:
        raise RemoteProtocolError("frame is not a msgpack map")
    tag = obj.pop("type", None)
    cls = _BY_TAG.get(tag) if type(tag) is str else None
    if cls is None:
        raise RemoteProtocolError("frame has a missing or unknown type")
    try:
        return cls(**obj)
    except TypeError:
        # Unknown or missing keyword arguments: don't echo the peer's key names.
        raise RemoteProtocolError(f"{cls.TAG} frame has unknown or missing fields") from None
    except LocalProtocolError as exc:
        raise RemoteProtocolError(f"{cls.TAG} frame is invalid: {exc.problem}") from None


# A successful Response's frame around its pre-encoded result: the same map, in the same key
# order, that packing `Response.to_wire()` gives (a 5-entry fixmap, 0x85).
_SPLICE_HEAD: Final = (
    b"\x85" + msgpack.packb("type") + msgpack.packb("response") + msgpack.packb("request_id")
)
_SPLICE_MIDDLE: Final = msgpack.packb("ok") + msgpack.packb(True) + msgpack.packb("result")  # noqa: FBT003
_SPLICE_TAIL: Final = msgpack.packb("error") + msgpack.packb(None)
_SPLICED_SIZE: Final = len(_SPLICE_MIDDLE) + len(_SPLICE_TAIL)
#: How a Request frame's payload starts when msgpack-python packs `Request.to_wire()` (as every
#: client of ours does): a 4-entry fixmap, "type": "request", then the "request_id" key. The id
#: follows, then "op" and "args": see `Connection.peek_request`.
REQUEST_HEAD: Final = (
    b"\x84" + msgpack.packb("type") + msgpack.packb("request") + msgpack.packb("request_id")
)
_REQUEST_ID_AT: Final = len(REQUEST_HEAD)
_UINT16 = struct.Struct(">H")
_UINT64 = struct.Struct(">Q")


def _canonical_uint_end(data: bytes | bytearray, at: int, limit: int) -> int:
    """Where the msgpack uint at `data[at]` ends if msgpack-python would pack its value so; else -1.

    Only the shortest encoding counts: an answer that echoes these bytes is then byte for byte
    what packing the id gives, whoever sent it.
    """
    first = data[at]
    if first < 0x80:  # noqa: PLR2004 - positive fixint
        return at + 1
    if first == 0xCC:  # noqa: PLR2004 - uint8
        end = at + 2
        ok = end <= limit and data[at + 1] >= 0x80  # noqa: PLR2004
    elif first == 0xCD:  # noqa: PLR2004 - uint16
        end = at + 3
        ok = end <= limit and _UINT16.unpack_from(data, at + 1)[0] > 0xFF  # noqa: PLR2004
    elif first == 0xCE:  # noqa: PLR2004 - uint32
        end = at + 5
        ok = end <= limit and _HEADER.unpack_from(data, at + 1)[0] > 0xFFFF  # noqa: PLR2004
    elif first == 0xCF:  # noqa: PLR2004 - uint64
        end = at + 9
        ok = end <= limit and 0xFFFFFFFF < _UINT64.unpack_from(data, at + 1)[0] <= MAX_REQUEST_ID  # noqa: PLR2004
    else:
        return -1
    return end if ok else -1


def request_id_end(payload: bytes | bytearray) -> int:
    """Where the id ends in a Request payload laid out as msgpack-python packs it; else -1.

    `payload[:request_id_end(payload)]` is then `REQUEST_HEAD` and the id; the rest is the
    request's op and args, the key of the core's cache of repeated answers.
    """
    if len(payload) <= _REQUEST_ID_AT or not payload.startswith(REQUEST_HEAD):
        return -1
    return _canonical_uint_end(payload, _REQUEST_ID_AT, len(payload))


def response_frame(request_id: bytes, packed_result: bytes) -> bytes:
    """The frame of a successful Response, from its id as packed msgpack and its packed result.

    The same bytes as `Connection.send` gives for `Response.success(id, result, packed_result)`;
    the caller checks the size against the frame limit.
    """
    size = len(_SPLICE_HEAD) + len(request_id) + _SPLICED_SIZE + len(packed_result)
    return b"".join(
        (_HEADER.pack(size), _SPLICE_HEAD, request_id, _SPLICE_MIDDLE, packed_result, _SPLICE_TAIL)
    )


# --- the state machine ------------------------------------------------------------------------


class Role(enum.Enum):
    """Which end of which conversation a `Connection` is."""

    #: A worker on the core's socket.
    CLIENT = "client"
    #: The core on its socket.
    SERVER = "server"
    #: The process manager on a worker's control channel.
    MANAGER = "manager"
    #: The worker runtime on its control channel.
    WORKER = "worker"


class State(enum.Enum):
    """Where a conversation is."""

    #: Nothing exchanged yet (core socket only).
    START = "START"
    #: Hello sent (client) or received (server); Welcome or Goodbye comes next.
    HANDSHAKE = "HANDSHAKE"
    #: Requests and responses (or invocations and results) flow.
    OPEN = "OPEN"
    #: Goodbye sent or received, or EOF between frames.
    CLOSED = "CLOSED"
    #: The peer broke the protocol; the connection is useless.
    ERROR = "ERROR"


class _Dir(enum.Enum):
    SEND = "send"
    RECEIVE = "receive"


_INITIAL_STATE: Final = {
    Role.CLIENT: State.START,
    Role.SERVER: State.START,
    Role.MANAGER: State.OPEN,
    Role.WORKER: State.OPEN,
}

#: (role, state, direction, event type) -> next state. Anything missing is illegal: a
#: LocalProtocolError when sending, a RemoteProtocolError when receiving.
TRANSITIONS: Final[dict[tuple[Role, State, _Dir, type[Event]], State]] = {
    (Role.CLIENT, State.START, _Dir.SEND, Hello): State.HANDSHAKE,
    (Role.CLIENT, State.HANDSHAKE, _Dir.RECEIVE, Welcome): State.OPEN,
    (Role.CLIENT, State.OPEN, _Dir.SEND, Request): State.OPEN,
    (Role.CLIENT, State.OPEN, _Dir.RECEIVE, Response): State.OPEN,
    (Role.SERVER, State.START, _Dir.RECEIVE, Hello): State.HANDSHAKE,
    (Role.SERVER, State.HANDSHAKE, _Dir.SEND, Welcome): State.OPEN,
    (Role.SERVER, State.OPEN, _Dir.RECEIVE, Request): State.OPEN,
    (Role.SERVER, State.OPEN, _Dir.SEND, Response): State.OPEN,
    (Role.MANAGER, State.OPEN, _Dir.SEND, Invoke): State.OPEN,
    (Role.MANAGER, State.OPEN, _Dir.RECEIVE, InvokeResult): State.OPEN,
    (Role.WORKER, State.OPEN, _Dir.RECEIVE, Invoke): State.OPEN,
    (Role.WORKER, State.OPEN, _Dir.SEND, InvokeResult): State.OPEN,
    # Goodbye ends any live conversation, in either direction.
    **{
        (role, state, direction, Goodbye): State.CLOSED
        for role in Role
        for state in (State.START, State.HANDSHAKE, State.OPEN)
        for direction in _Dir
    },
}

# Which event opens an exchange that a later event must close, per role and direction: its id
# enters the connection's in-flight set when the opener passes and leaves it with the answer.
_OPENS: Final = {
    (Role.CLIENT, _Dir.SEND): Request,
    (Role.SERVER, _Dir.RECEIVE): Request,
    (Role.MANAGER, _Dir.SEND): Invoke,
    (Role.WORKER, _Dir.RECEIVE): Invoke,
}
_CLOSES: Final = {
    (Role.CLIENT, _Dir.RECEIVE): Response,
    (Role.SERVER, _Dir.SEND): Response,
    (Role.MANAGER, _Dir.RECEIVE): InvokeResult,
    (Role.WORKER, _Dir.SEND): InvokeResult,
}


class _RoleRules(NamedTuple):
    """One role's slice of TRANSITIONS, shaped for one dict lookup (by type) per event."""

    send: dict[State, dict[type[Event], State]]
    receive: dict[State, dict[type[Event], State]]
    opens_on_send: type[Event] | None
    closes_on_send: type[Event] | None
    opens_on_receive: type[Event] | None
    closes_on_receive: type[Event] | None
    #: The field that names an exchange: `request_id` or `invocation_id`.
    id_field: str


def _rules_for(role: Role) -> _RoleRules:
    tables: dict[_Dir, dict[State, dict[type[Event], State]]] = {
        d: {state: {} for state in State} for d in _Dir
    }
    for (r, state, d, kind), new in TRANSITIONS.items():
        if r is role:
            tables[d][state][kind] = new
    return _RoleRules(
        send=tables[_Dir.SEND],
        receive=tables[_Dir.RECEIVE],
        opens_on_send=_OPENS.get((role, _Dir.SEND)),
        closes_on_send=_CLOSES.get((role, _Dir.SEND)),
        opens_on_receive=_OPENS.get((role, _Dir.RECEIVE)),
        closes_on_receive=_CLOSES.get((role, _Dir.RECEIVE)),
        id_field="request_id" if role in (Role.CLIENT, Role.SERVER) else "invocation_id",
    )


_RULES: Final = {role: _rules_for(role) for role in Role}
# What an OPEN server may receive: `peek_request` tells role and state apart by it at once.
_SERVER_OPEN: Final = _RULES[Role.SERVER].receive[State.OPEN]
# And what an OPEN client may send and receive, for its shortcuts.
_CLIENT_OPEN_SEND: Final = _RULES[Role.CLIENT].send[State.OPEN]
_CLIENT_OPEN: Final = _RULES[Role.CLIENT].receive[State.OPEN]


class Connection:
    """One end of one IPC conversation, as a pure state machine (h11 style).

    The owner of the socket loops: `next_event()`; on `NEED_DATA` read from the socket and pass
    the bytes to `receive_data` (`b""` at EOF); handle the event; write what `send` returns.
    Between two `receive_data` calls, call `next_event` until it returns `NEED_DATA`: the
    buffer then never holds more than one incomplete frame (at most `MAX_FRAME_SIZE` +
    `HEADER_SIZE` bytes) plus the latest read.

    Not thread-safe: one owner at a time (the blocking client holds a lock around it).

    Args:
        role: Which end this is; it decides which events may be sent and received when.
        max_frame_size: The largest frame payload accepted and sent (tests use smaller values).
            Until the handshake is over, frames received are capped at
            `MAX_HANDSHAKE_FRAME_SIZE` as well.
    """

    __slots__ = (
        "_buffer",
        "_eof",
        "_error",
        "_frame_limit",
        "_in_flight",
        "_last_payload",
        "_max_frame_size",
        "_may_receive",
        "_may_send",
        "_packer",
        "_role",
        "_rules",
        "_state",
    )

    def __init__(self, role: Role, *, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._role = role
        self._rules = _RULES[role]
        self._max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._eof = False
        # The problem's words only, never the exception: see `_fail`.
        self._error: str | None = None
        self._in_flight: set[int | str] = set()
        self._last_payload = bytearray()
        self._packer = msgpack.Packer(use_bin_type=True)
        self._set_state(_INITIAL_STATE[role])

    @property
    def role(self) -> Role:
        """Which end of the conversation this is."""
        return self._role

    @property
    def state(self) -> State:
        """Where the conversation is."""
        return self._state

    @property
    def buffered(self) -> int:
        """How many received bytes wait in the buffer (at most one frame's worth plus a read)."""
        return len(self._buffer)

    @property
    def max_frame_size(self) -> int:
        """The largest frame payload this connection accepts and sends."""
        return self._max_frame_size

    @property
    def last_payload(self) -> bytearray:
        """The payload (msgpack, no length prefix) of the event `next_event` returned last."""
        return self._last_payload

    @property
    def in_flight(self) -> frozenset[int | str]:
        """Ids of requests (or invocations) sent or received and not yet answered."""
        return frozenset(self._in_flight)

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the socket; `b""` means the peer closed its end (EOF).

        Data that arrives after the conversation ended (CLOSED or ERROR) is dropped, so a peer
        that keeps writing after a protocol error can't make the buffer grow.

        Raises:
            LocalProtocolError: Data passed after EOF was already signalled (the caller's bug).
        """
        if self._state is State.CLOSED or self._state is State.ERROR:
            return
        if self._eof:
            raise LocalProtocolError("received data after EOF")
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> Event | Sentinel:
        """Parse the next event out of the received bytes.

        State effects: a returned event has advanced the state (e.g. the server's first
        `Hello` moves START -> HANDSHAKE; a `Goodbye` moves any state to CLOSED) and its bytes
        have left the buffer; a `Request` (or `Invoke`) id received by the answering side
        enters the in-flight set, an answer received by the asking side removes it.
        `NEED_DATA` changes nothing. EOF between frames moves to CLOSED and returns `CLOSED`,
        as does every call after the conversation ended. A protocol error moves to ERROR,
        empties the buffer, and the same error is raised again by every later call.

        Returns:
            An event, `NEED_DATA` (feed more bytes), or `CLOSED`.

        Raises:
            RemoteProtocolError: The peer announced a length of 0 or over the limit (detected
                from the 4-byte prefix alone, before the payload is buffered; the limit is
                `MAX_HANDSHAKE_FRAME_SIZE` until the handshake is over), sent an
                undecodable or invalid frame, a frame not allowed in this state (e.g. a
                Request before Hello), an answer to an id not in flight or a reused id, or
                closed the connection mid-frame.
        """
        if self._error is not None:
            raise RemoteProtocolError(self._error)
        if self._state is State.CLOSED:
            return CLOSED
        buffer = self._buffer
        available = len(buffer)
        if available >= HEADER_SIZE:
            (size,) = _HEADER.unpack_from(buffer)
            if size == 0 or size > self._frame_limit:
                when = "" if self._frame_limit == self._max_frame_size else " before the handshake"
                self._fail(
                    f"peer announced a frame of {size} bytes; frames are 1 to "
                    f"{self._frame_limit} bytes{when}"
                )
            end = HEADER_SIZE + size
            if available >= end:
                payload = self._last_payload = buffer[HEADER_SIZE:end]
                # Deleting from the front of a bytearray is amortised O(1) in CPython.
                del buffer[:end]
                try:
                    event = decode(payload)
                except RemoteProtocolError as exc:
                    self._fail(exc.problem)
                self._received(event)
                return event
        if self._eof:
            if available:
                self._fail("peer closed the connection in the middle of a frame")
            self._set_state(State.CLOSED)
            return CLOSED
        return NEED_DATA

    def peek_request(self, data: bytes, start: int = 0) -> tuple[int, int] | None:
        """Find a whole Request frame at `data[start:]` that may be answered without receiving it.

        For the core's cache of repeated answers: the frame must be laid out as msgpack-python
        packs `Request.to_wire()` (see `request_id_end`), and this connection must be a server
        that could receive it now: OPEN, nothing buffered (frames are handled in order), its
        id not in flight. Receiving such a request and sending its answer at once leaves the
        connection as it was, so the caller may skip both: nothing changes here either way.

        Returns:
            (where its id ends, where the frame ends), as offsets into `data`; the frame's
            payload after the id, `data[id_end:frame_end]`, is its op and args. None if there
            is no such frame (then feed `data[start:]` to `receive_data` as usual).
        """
        at = start + HEADER_SIZE
        id_start = at + _REQUEST_ID_AT
        if self._may_receive is not _SERVER_OPEN or self._buffer or len(data) <= id_start:
            return None
        (size,) = _HEADER.unpack_from(data, start)
        end = at + size
        if (
            size <= _REQUEST_ID_AT
            or size > self._max_frame_size
            or end > len(data)
            or not data.startswith(REQUEST_HEAD, at)
        ):
            return None
        id_end = _canonical_uint_end(data, id_start, end)
        # Only requests answered by tasks are ever in flight: the set is nearly always empty.
        if id_end < 0 or (
            self._in_flight and msgpack.unpackb(data[id_start:id_end]) in self._in_flight
        ):
            return None
        return id_end, end

    def send_request(self, request_id: int, op: str, args: dict[str, Any]) -> bytes:
        """`send(Request(request_id, op, args))`, without building the event (the hot path).

        The same bytes, checks, state effects and errors.
        """
        if (
            self._may_send is not _CLIENT_OPEN_SEND
            or type(request_id) is not int
            or not 0 <= request_id <= MAX_REQUEST_ID
            or type(op) is not str
            or not op
            or len(op) > MAX_OP_LENGTH
            or type(args) is not dict
            or request_id in self._in_flight
        ):
            # Whatever is wrong, the general path says it in its own words.
            return self.send(Request(request_id, op, args))
        try:
            payload: bytes = self._packer.pack(
                {"type": "request", "request_id": request_id, "op": op, "args": args}
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise LocalProtocolError(f"a request frame can't be encoded: {exc}") from None
        size = len(payload)
        if size > self._max_frame_size:
            raise FrameTooLargeError(Request.TAG, size, self._max_frame_size)
        self._in_flight.add(request_id)
        return _HEADER.pack(size) + payload

    def receive_response(self, data: bytes) -> Response | None:
        """Take `data` at once if it is exactly one whole Response frame to a request in flight.

        The same as `receive_data(data)` then `next_event()` returning that Response, in one
        step (the worker's hot path: a read usually holds exactly the one answer it waits
        for). Anything else (more or less than one frame, bytes already buffered, another
        event, an invalid frame, an id not in flight, another role or state) returns None
        and changes nothing: pass `data` to `receive_data` as usual, which then reports any
        problem the usual way.
        """
        if self._may_receive is not _CLIENT_OPEN or self._buffer:
            return None
        size = len(data) - HEADER_SIZE
        if size <= 0 or size > self._max_frame_size or _HEADER.unpack_from(data)[0] != size:
            return None
        try:
            event = decode(memoryview(data)[HEADER_SIZE:])
        except RemoteProtocolError:
            return None
        if type(event) is not Response or event.request_id not in self._in_flight:
            return None
        self._in_flight.remove(event.request_id)
        return event

    def send(self, event: Event) -> bytes:
        """Return the bytes that carry `event`, after checking it may be sent now.

        State effects: the state advances as for a received event (the client's `Hello`
        moves START -> HANDSHAKE, a `Goodbye` moves to CLOSED); a Request (or Invoke) id
        enters the in-flight set and its answer's id leaves it. Nothing changes if it raises.

        Raises:
            FrameTooLargeError: The frame would exceed the frame size limit (e.g. an
                invocation payload that is too large); a LocalProtocolError subclass.
            LocalProtocolError: The event is not allowed in this state or for this role, an
                answer's id is not in flight, a request's id already is, or a field holds a
                value msgpack can't encode (e.g. a datetime in a result).
        """
        kind = type(event)
        new_state = self._may_send.get(kind)
        if new_state is None:
            raise LocalProtocolError(
                f"can't send a {event.TAG} frame as {self._role.value} in state {self._state.value}"
            )
        # A Packer of our own saves building one per frame (packb does); msgpack resets its
        # buffer when packing fails, so a refused event leaves it clean.
        try:
            if type(event) is Response and event.packed_result is not None:
                # The answer's map was encoded once, when the core built it: splice it in.
                payload = b"".join(
                    (
                        _SPLICE_HEAD,
                        self._packer.pack(event.request_id),
                        _SPLICE_MIDDLE,
                        event.packed_result,
                        _SPLICE_TAIL,
                    )
                )
            else:
                payload = self._packer.pack(event.to_wire())
        except (TypeError, ValueError, OverflowError) as exc:
            # msgpack names the offending type, never the value.
            raise LocalProtocolError(f"a {event.TAG} frame can't be encoded: {exc}") from None
        data = _frame(event, payload, self._max_frame_size)
        rules = self._rules
        if kind is rules.opens_on_send:
            key = getattr(event, rules.id_field)
            if key in self._in_flight:
                raise LocalProtocolError(f"{event.TAG} id {key!r} is already in flight")
            self._in_flight.add(key)
        elif kind is rules.closes_on_send:
            key = getattr(event, rules.id_field)
            if key not in self._in_flight:
                raise LocalProtocolError(f"{event.TAG} answers id {key!r}, which is not in flight")
            self._in_flight.remove(key)
        if new_state is not self._state:
            self._set_state(new_state)
        return data

    def _received(self, event: Event) -> None:
        """Apply the state rules to an event that arrived (see `next_event`)."""
        kind = type(event)
        new_state = self._may_receive.get(kind)
        if new_state is None:
            expected = "a hello frame first" if self._state is State.START else "another frame"
            self._fail(
                f"a {event.TAG} frame is not allowed from the peer in state "
                f"{self._state.value}; expected {expected}"
            )
        rules = self._rules
        if kind is rules.opens_on_receive:
            key = getattr(event, rules.id_field)
            if key in self._in_flight:
                self._fail(f"{event.TAG} id reused while still in flight")
            self._in_flight.add(key)
        elif kind is rules.closes_on_receive:
            key = getattr(event, rules.id_field)
            if key not in self._in_flight:
                self._fail(f"{event.TAG} answers an id that is not in flight")
            self._in_flight.remove(key)
        if new_state is not self._state:
            self._set_state(new_state)

    def _set_state(self, state: State) -> None:
        self._state = state
        self._may_send = self._rules.send[state]
        self._may_receive = self._rules.receive[state]
        # Set here, on the rare state change, so that next_event compares with one attribute.
        handshaking = state is State.START or state is State.HANDSHAKE
        self._frame_limit = (
            min(self._max_frame_size, MAX_HANDSHAKE_FRAME_SIZE)
            if handshaking
            else self._max_frame_size
        )

    def _fail(self, problem: str) -> NoReturn:
        """Enter ERROR for good and raise; the buffers are dropped so they can't grow any more.

        Only the problem's words are kept for later calls, and each raise is a new exception:
        a kept exception would keep its traceback, whose frames hold the failed read's buffer
        (up to a frame) and this connection in a cycle that only the cyclic GC frees; a flood
        of failing connections then kept gigabytes.
        """
        self._set_state(State.ERROR)
        self._buffer = bytearray()
        self._last_payload = bytearray()
        self._error = problem
        raise RemoteProtocolError(problem)
