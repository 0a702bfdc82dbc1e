# SPDX-License-Identifier: Apache-2.0
"""The IPC's seven frame events and their vocabulary: what a peer may say, checked when built.

Every event checks its own fields in its constructor, so `edge.ipc.codec.decode` can only hand
over these seven shapes with sane values, and a bug of ours that builds a bad one fails where
it is built (`LocalProtocolError`). A frame's map is exactly an event's `FIELDS` plus "type"
(its `TAG`). Which event may be sent or received when is `edge.ipc.connection`'s business.
"""

from __future__ import annotations

from edge.errors import LocalProtocolError

# A worker loads no `typing` (see edge/child/__init__.py): annotations only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar, Final, TypeAlias

# --- vocabulary -------------------------------------------------------------------------------

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
#: The secrets the calling function may read: `{"Secrets": [{"ARN", "Name", "Versions":
#: [{"VersionId", "VersionStages"}]}]}` (the labels the core answers by), never a value.
OP_LIST_SECRETS: Final = "secretsmanager.list_secrets"
OP_INVOKE: Final = "lambda.invoke"
OP_PUBLISH: Final = "iotdata.publish"
#: The running core's state for `edge status` (operator only; never a value).
OP_CORE_STATUS: Final = "core.status"
#: A worker's push channel for its cache of answers (`edge.child.cache`), as a long poll:
#: `{"Watch": 0}` registers a watch and is answered at once with `{"Watch": id, "Seq": n}`;
#: `{"Watch": id, "Seen": n, "Reads": …}` acknowledges invalidation `n` (the worker's cache holds
#: nothing older), reports the reads its cache served, and is answered when the core's answers
#: change (`{"Seq": n + 1}`: drop every cached answer) or after a heartbeat (the same `Seq`).
OP_WATCH: Final = "core.watch_answers"
#: The operations the core serves; anything else is answered with status 400.
KNOWN_OPS: Final = frozenset(
    {
        OP_GET_SECRET_VALUE,
        OP_GET_SECRET_VALUE_V1,
        OP_LIST_SECRETS,
        OP_INVOKE,
        OP_PUBLISH,
        OP_CORE_STATUS,
        OP_WATCH,
    }
)

#: The statuses Greengrass V1's IPC put in its `{"Status": …, "Message": …}` error payloads.
ERROR_STATUSES: Final = frozenset({400, 403, 404, 408, 413, 500})
#: Lambda's invocation types that Greengrass V1 supported.
INVOCATION_TYPES: Final = frozenset({"RequestResponse", "Event"})
#: Lambda's `FunctionError` values; "" means the handler returned normally.
FUNCTION_ERRORS: Final = frozenset({"", "Handled", "Unhandled"})


# --- events ---------------------------------------------------------------------------------


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
