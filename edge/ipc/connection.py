# SPDX-License-Identifier: Apache-2.0
"""One end of one IPC conversation, as a pure state machine over one table (after h11).

A `Connection` never touches a socket. Whoever owns the socket feeds it the bytes that arrived
(`receive_data`, `b""` for EOF), pulls typed events out (`next_event`) until it says
`NEED_DATA`, and turns outgoing events into bytes (`send`) that it writes itself. The same code
therefore runs under the core's asyncio server, inside a worker's blocking client, and in tests
that feed it one byte at a time.

Two conversations use it:

* A worker's connection to the core's socket. The client (role `CLIENT`) sends `Hello` with its
  token and waits for `Welcome` (or `Goodbye` if refused); then it sends `Request`s and gets a
  `Response` for each, matched by `request_id`, possibly out of order.
* The process manager's control channel to one worker (a socketpair the child inherits). It is
  private by construction, so there is no handshake: the manager (role `MANAGER`) sends
  `Invoke`, the worker (role `WORKER`) answers `InvokeResult` with the same `invocation_id`.

Either side may send `Goodbye` at any time; after it, the conversation is over.

`TRANSITIONS` is the only statement of what may happen when. The shortcuts of
`edge.ipc.fastpath` are derived from it per state (`_shortcuts_for`), not restated.
"""

from __future__ import annotations

import enum

import msgpack

from edge.errors import LocalProtocolError, RemoteProtocolError
from edge.ipc.codec import (
    HEADER,
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    MAX_HANDSHAKE_FRAME_SIZE,
    decode,
    frame,
)
from edge.ipc.events import (
    Event,
    Goodbye,
    Hello,
    Invoke,
    InvokeResult,
    Request,
    Response,
    Welcome,
)
from edge.ipc.fastpath import FastPaths, Shortcuts, response_frame

# Annotations only: a worker loads no `typing` (see edge/child/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, NoReturn

# Bound once: CPython 3.11 looks a method called on an imported name up again on every call.
_unpack_header = HEADER.unpack_from


class Sentinel(enum.Enum):
    """What `Connection.next_event` returns when it has no event."""

    #: Feed more bytes with `receive_data`, then ask again.
    NEED_DATA = "NEED_DATA"
    #: The conversation is over (Goodbye, or EOF between frames); nothing more will come.
    CLOSED = "CLOSED"


NEED_DATA: Final = Sentinel.NEED_DATA
CLOSED: Final = Sentinel.CLOSED


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


class _RoleRules:
    """One role's slice of TRANSITIONS, shaped for one dict lookup (by type) per event.

    A plain slotted class, not a `NamedTuple`, which would load `typing` into every worker.
    """

    __slots__ = (
        "closes_on_receive",
        "closes_on_send",
        "id_field",
        "opens_on_receive",
        "opens_on_send",
        "receive",
        "send",
        "shortcuts",
    )

    def __init__(
        self,
        *,
        send: dict[State, dict[type[Event], State]],
        receive: dict[State, dict[type[Event], State]],
        opens_on_send: type[Event] | None,
        closes_on_send: type[Event] | None,
        opens_on_receive: type[Event] | None,
        closes_on_receive: type[Event] | None,
        id_field: str,
        shortcuts: dict[State, Shortcuts],
    ) -> None:
        self.send = send
        self.receive = receive
        self.opens_on_send = opens_on_send
        self.closes_on_send = closes_on_send
        self.opens_on_receive = opens_on_receive
        self.closes_on_receive = closes_on_receive
        #: The field that names an exchange: `request_id` or `invocation_id`.
        self.id_field = id_field
        #: Per state, which shortcuts of `edge.ipc.fastpath` the table allows.
        self.shortcuts = shortcuts


def _rules_for(role: Role) -> _RoleRules:
    tables: dict[_Dir, dict[State, dict[type[Event], State]]] = {
        d: {state: {} for state in State} for d in _Dir
    }
    for (r, state, d, kind), new in TRANSITIONS.items():
        if r is role:
            tables[d][state][kind] = new
    opens = {d: _OPENS.get((role, d)) for d in _Dir}
    closes = {d: _CLOSES.get((role, d)) for d in _Dir}
    return _RoleRules(
        send=tables[_Dir.SEND],
        receive=tables[_Dir.RECEIVE],
        opens_on_send=opens[_Dir.SEND],
        closes_on_send=closes[_Dir.SEND],
        opens_on_receive=opens[_Dir.RECEIVE],
        closes_on_receive=closes[_Dir.RECEIVE],
        id_field="request_id" if role in (Role.CLIENT, Role.SERVER) else "invocation_id",
        shortcuts={state: _shortcuts_for(tables, opens, closes, state) for state in State},
    )


def _shortcuts_for(
    tables: dict[_Dir, dict[State, dict[type[Event], State]]],
    opens: dict[_Dir, type[Event] | None],
    closes: dict[_Dir, type[Event] | None],
    state: State,
) -> Shortcuts:
    """What the table lets a connection in `state` do without building events (see Shortcuts)."""

    def keeps_state(direction: _Dir, kind: type[Event]) -> bool:
        return tables[direction][state].get(kind) is state

    return Shortcuts(
        answer_request=keeps_state(_Dir.RECEIVE, Request)
        and keeps_state(_Dir.SEND, Response)
        and opens[_Dir.RECEIVE] is Request
        and closes[_Dir.SEND] is Response,
        send_request=keeps_state(_Dir.SEND, Request) and opens[_Dir.SEND] is Request,
        receive_response=keeps_state(_Dir.RECEIVE, Response) and closes[_Dir.RECEIVE] is Response,
    )


_RULES: Final = {role: _rules_for(role) for role in Role}


class Connection(FastPaths):
    """One end of one IPC conversation, as a pure state machine (h11 style).

    The owner of the socket loops: `next_event()`; on `NEED_DATA` read from the socket and pass
    the bytes to `receive_data` (`b""` at EOF); handle the event; write what `send` returns.
    Between two `receive_data` calls, call `next_event` until it returns `NEED_DATA`: the
    buffer then never holds more than one incomplete frame (at most `MAX_FRAME_SIZE` +
    `HEADER_SIZE` bytes) plus the latest read.

    The hot paths' shortcuts (`peek_request`, `send_request`, `receive_response`) come from
    `edge.ipc.fastpath.FastPaths`; the table decides where they apply (`_shortcuts_for`).

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
        "_shortcuts",
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
            (size,) = _unpack_header(buffer)
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
                data = response_frame(
                    self._packer.pack(event.request_id),
                    event.packed_result,
                    self._max_frame_size,
                )
            else:
                data = frame(event, self._packer.pack(event.to_wire()), self._max_frame_size)
        except (TypeError, ValueError, OverflowError) as exc:
            # msgpack names the offending type, never the value.
            raise LocalProtocolError(f"a {event.TAG} frame can't be encoded: {exc}") from None
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
        self._shortcuts = self._rules.shortcuts[state]
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
