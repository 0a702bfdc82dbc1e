# SPDX-License-Identifier: Apache-2.0
"""The sans-IO IPC protocol: framing, event validation and the conversation's state rules."""

from __future__ import annotations

import gc
import struct
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.errors import (
    FrameTooLargeError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from edge.ipc.protocol import (
    CLOSED,
    ERROR_STATUSES,
    EVENT_TYPES,
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    MAX_HANDSHAKE_FRAME_SIZE,
    MAX_REQUEST_ID,
    MAX_TOKEN_LENGTH,
    NEED_DATA,
    OP_GET_SECRET_VALUE,
    REQUEST_HEAD,
    TRANSITIONS,
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
    decode,
    encode,
    request_id_end,
    response_frame,
)

# --- helpers ----------------------------------------------------------------------------------


def frame(obj: object) -> bytes:
    """A well-formed frame around any msgpack-able object."""
    payload = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload


def drain(conn: Connection) -> list[Event | Sentinel]:
    """Every event the connection can produce now, ending with NEED_DATA or CLOSED."""
    out: list[Event | Sentinel] = []
    while True:
        event = conn.next_event()
        out.append(event)
        if event is NEED_DATA or event is CLOSED:
            return out


def tr(conn: Connection, data: bytes) -> list[Event | Sentinel]:
    """Feed `data` one byte at a time (h11's `tr`); return the events, without NEED_DATAs."""
    events: list[Event | Sentinel] = []
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        events.extend(e for e in drain(conn) if e is not NEED_DATA)
    return events


class ConnectionPair:
    """Two peers joined by an in-memory link (h11's `ConnectionPair`)."""

    def __init__(self, local: Role, remote: Role) -> None:
        self.conn = {local: Connection(local), remote: Connection(remote)}
        self.other = {local: remote, remote: local}

    def send(self, role: Role, event: Event) -> list[Event | Sentinel]:
        """`role` sends `event`; return what the other side parses from the bytes."""
        data = self.conn[role].send(event)
        receiver = self.conn[self.other[role]]
        receiver.receive_data(data)
        return drain(receiver)


def open_pair() -> ConnectionPair:
    """A client and a server past the handshake."""
    pair = ConnectionPair(Role.CLIENT, Role.SERVER)
    pair.send(Role.CLIENT, Hello("token-1", 42))
    pair.send(Role.SERVER, Welcome("arn:aws:lambda:us-east-1:1:function:f:1"))
    return pair


# --- strategies -------------------------------------------------------------------------------

texts = st.text(min_size=1, max_size=40)
ids = st.integers(min_value=0, max_value=MAX_REQUEST_ID)
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
arg_maps = st.dictionaries(st.text(max_size=12), msgpack_values, max_size=5)

events: st.SearchStrategy[Event] = st.one_of(
    st.builds(Hello, token=st.text(min_size=1, max_size=64), pid=st.integers(1, 2**22)),
    st.builds(Welcome, function_arn=texts),
    st.builds(Goodbye, reason=st.text(max_size=40)),
    st.builds(Request, request_id=ids, op=st.text(min_size=1, max_size=128), args=arg_maps),
    st.builds(Response.success, request_id=ids, result=arg_maps),
    st.builds(
        Response.failure,
        request_id=ids,
        status=st.sampled_from(sorted(ERROR_STATUSES)),
        message=st.text(max_size=40),
    ),
    st.builds(
        Invoke,
        invocation_id=texts,
        function_arn=texts,
        payload=st.binary(max_size=64),
        client_context=st.text(max_size=20),
        invocation_type=st.sampled_from(["RequestResponse", "Event"]),
        deadline_ms=st.integers(0, 2**40),
    ),
    st.builds(
        InvokeResult,
        invocation_id=texts,
        payload=st.binary(max_size=64),
        function_error=st.sampled_from(["", "Handled", "Unhandled"]),
    ),
)


# --- round trips ------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(events)
def test_every_event_round_trips_through_encode_and_decode(event: Event) -> None:
    """decode(encode(e)) == e for every event type and field value."""
    data = encode(event)
    assert struct.unpack(">I", data[:HEADER_SIZE])[0] == len(data) - HEADER_SIZE
    assert decode(data[HEADER_SIZE:]) == event


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.builds(Request, request_id=ids, op=texts, args=arg_maps), max_size=4))
def test_requests_arrive_one_byte_at_a_time(requests: list[Request]) -> None:
    """A server fed one byte at a time yields Hello then each request, intact and in order."""
    client = Connection(Role.CLIENT)
    server = Connection(Role.SERVER)
    wire = client.send(Hello("t", 1))
    server.receive_data(wire)
    assert drain(server) == [Hello("t", 1), NEED_DATA]
    client.receive_data(server.send(Welcome("arn")))
    assert drain(client) == [Welcome("arn"), NEED_DATA]
    unique = list({r.request_id: r for r in requests}.values())
    data = b"".join(client.send(r) for r in unique)
    assert tr(server, data) == unique
    assert server.in_flight == {r.request_id for r in unique}


@settings(max_examples=150, deadline=None)
@given(events)
def test_every_frame_parses_when_fed_byte_by_byte(event: Event) -> None:
    """Any event, split at every byte boundary, comes out whole exactly once."""
    receiver, sender_role = _receiver_for(event)
    data = Connection(sender_role).send(event) if _sendable_first(event) else encode(event)
    expected: list[Event | Sentinel] = [event, CLOSED] if isinstance(event, Goodbye) else [event]
    assert tr(receiver, data) == expected


def _receiver_for(event: Event) -> tuple[Connection, Role]:
    """A connection in a state where `event` may arrive, and the role that sends it."""
    if isinstance(event, Hello):
        return Connection(Role.SERVER), Role.CLIENT
    if isinstance(event, Welcome | Goodbye):
        client = Connection(Role.CLIENT)
        client.send(Hello("t", 1))
        return client, Role.SERVER
    if isinstance(event, Request):
        pair = ConnectionPair(Role.CLIENT, Role.SERVER)
        pair.send(Role.CLIENT, Hello("t", 1))
        pair.send(Role.SERVER, Welcome("arn"))
        return pair.conn[Role.SERVER], Role.CLIENT
    if isinstance(event, Response):
        pair = open_pair()
        pair.send(Role.CLIENT, Request(event.request_id, "op", {}))
        return pair.conn[Role.CLIENT], Role.SERVER
    if isinstance(event, Invoke):
        return Connection(Role.WORKER), Role.MANAGER
    manager = Connection(Role.MANAGER)
    manager.send(Invoke(event.invocation_id, "arn", b"", "", "Event", 0))
    return manager, Role.WORKER


def _sendable_first(event: Event) -> bool:
    """Whether a fresh connection of the sender's role may send `event` as its first frame."""
    return isinstance(event, Hello | Invoke | Goodbye)


def test_concatenated_frames_in_one_read_all_come_out() -> None:
    """Several frames in one receive_data are parsed in order, then NEED_DATA."""
    pair = open_pair()
    client, server = pair.conn[Role.CLIENT], pair.conn[Role.SERVER]
    requests = [Request(i, OP_GET_SECRET_VALUE, {"SecretId": f"s{i}"}) for i in range(5)]
    server.receive_data(b"".join(client.send(r) for r in requests))
    assert drain(server) == [*requests, NEED_DATA]
    answers = [Response.success(r.request_id, {"Name": r.args["SecretId"]}) for r in requests]
    # Answers may go out in any order: they carry the request id.
    client.receive_data(b"".join(server.send(a) for a in reversed(answers)))
    assert drain(client) == [*reversed(answers), NEED_DATA]
    assert client.in_flight == frozenset()
    assert server.in_flight == frozenset()


# --- truncation, size limits, garbage ----------------------------------------------------------


def test_eof_between_frames_closes_cleanly() -> None:
    """EOF with an empty buffer moves to CLOSED; next_event keeps saying CLOSED."""
    server = Connection(Role.SERVER)
    server.receive_data(b"")
    assert server.next_event() is CLOSED
    assert server.next_event() is CLOSED
    assert server.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        server.send(Welcome("arn"))


@pytest.mark.parametrize("cut", [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 3, -1])
def test_eof_in_the_middle_of_a_frame_is_a_remote_error(cut: int) -> None:
    """A frame cut anywhere (header or payload) then EOF raises RemoteProtocolError."""
    server = Connection(Role.SERVER)
    server.receive_data(encode(Hello("token", 7))[:cut])
    assert server.next_event() is NEED_DATA
    server.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        server.next_event()
    assert server.state is State.ERROR


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    """A length over the limit fails as soon as the 4 header bytes are in; nothing is buffered."""
    server = Connection(Role.SERVER)
    server.receive_data(struct.pack(">I", MAX_FRAME_SIZE + 1))
    with pytest.raises(RemoteProtocolError, match="frames are 1 to"):
        server.next_event()
    assert server.buffered == 0
    # The peer keeps sending: nothing of it is kept, and the error stays.
    for _ in range(64):
        server.receive_data(b"\x00" * 65536)
        assert server.buffered == 0
    with pytest.raises(RemoteProtocolError):
        server.next_event()


def test_buffer_never_exceeds_one_frame_plus_one_read() -> None:
    """Streaming a max-size frame in 64 KiB reads keeps the buffer within the cap."""
    server = open_pair().conn[Role.SERVER]
    # A legal frame of exactly MAX_FRAME_SIZE: a map with one padded string field is refused
    # as a Request (unknown field), but only after it was buffered whole, which is the point.
    filler = "x" * (MAX_FRAME_SIZE - 64)
    payload = msgpack.packb(
        {"type": "request", "request_id": 1, "op": "o", "args": {}, "pad": filler}
    )
    data = struct.pack(">I", len(payload)) + payload
    peak = 0
    last = range(0, len(data), 65536)[-1]
    for start in range(0, last, 65536):
        server.receive_data(data[start : start + 65536])
        peak = max(peak, server.buffered)
        assert server.next_event() is NEED_DATA
    server.receive_data(data[last:])
    peak = max(peak, server.buffered)
    with pytest.raises(RemoteProtocolError, match="unknown or missing fields"):
        server.next_event()
    assert server.buffered == 0
    assert peak <= MAX_FRAME_SIZE + HEADER_SIZE + 65536
    assert len(payload) <= MAX_FRAME_SIZE


def test_frames_before_the_handshake_is_over_are_capped_small() -> None:
    """Until the Welcome, a frame over 4 KiB is refused from its header, with nothing buffered.

    Anyone who can reach the socket may send a Hello, so it can't make the core hold 1 MiB.
    The longest legal Hello (a token of 4-byte characters) still fits, and after the Welcome
    frames up to `MAX_FRAME_SIZE` pass again.
    """
    client = Connection(Role.CLIENT)
    client.send(Hello("token-1", 42))
    for conn in (Connection(Role.SERVER), client):
        conn.receive_data(struct.pack(">I", MAX_HANDSHAKE_FRAME_SIZE + 1) + b"x" * 60000)
        with pytest.raises(RemoteProtocolError, match="1 to 4096 bytes before the handshake"):
            conn.next_event()
        assert conn.buffered == 0
        assert conn.state is State.ERROR

    pair = ConnectionPair(Role.CLIENT, Role.SERVER)
    longest = Hello("\U0001f511" * MAX_TOKEN_LENGTH, MAX_REQUEST_ID)
    assert len(encode(longest)) <= MAX_HANDSHAKE_FRAME_SIZE
    assert pair.send(Role.CLIENT, longest) == [longest, NEED_DATA]
    pair.send(Role.SERVER, Welcome("arn:aws:lambda:us-east-1:1:function:f:1"))
    big = Request(1, OP_GET_SECRET_VALUE, {"Blob": b"x" * (MAX_FRAME_SIZE - 100)})
    assert pair.send(Role.CLIENT, big) == [big, NEED_DATA]


def test_a_failed_connection_frees_its_buffer_without_the_cyclic_gc() -> None:
    """A frame cut short keeps nothing alive once the error was handled: no gc.collect needed.

    A connection that kept the exception it raised would keep its traceback, and with it the
    megabyte it had buffered, until the cyclic GC happened to run.
    """
    server = open_pair().conn[Role.SERVER]
    gc.disable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        server.receive_data(struct.pack(">I", MAX_FRAME_SIZE) + b"x" * (MAX_FRAME_SIZE - 1))
        assert server.next_event() is NEED_DATA
        server.receive_data(b"")
        for _ in range(3):  # later calls raise again; nothing of the buffer comes back
            with pytest.raises(RemoteProtocolError, match="middle of a frame"):
                server.next_event()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
    assert held < 64 * 1024, held


def test_zero_length_frame_is_refused() -> None:
    """A frame must hold at least one byte of msgpack."""
    server = Connection(Role.SERVER)
    server.receive_data(b"\x00\x00\x00\x00")
    with pytest.raises(RemoteProtocolError):
        server.next_event()


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_a_remote_error(data: bytes) -> None:
    """Whatever a peer sends, the parser answers with events, NEED_DATA or RemoteProtocolError."""
    for role in (Role.SERVER, Role.CLIENT, Role.WORKER, Role.MANAGER):
        conn = Connection(role)
        conn.receive_data(data)
        try:
            drain(conn)
            conn.receive_data(b"")
            drain(conn)
        except RemoteProtocolError:
            assert conn.state is State.ERROR


@settings(max_examples=600, deadline=None)
@given(
    st.one_of(
        msgpack_values,
        st.dictionaries(
            st.sampled_from(["type", "token", "pid", "request_id", "op", "args", "x"]),
            st.one_of(msgpack_values, st.sampled_from(["hello", "request", "response"])),
        ),
    )
)
def test_random_msgpack_in_a_frame_is_an_event_or_a_remote_error(obj: Any) -> None:
    """Well-framed but arbitrary msgpack never escapes as anything but RemoteProtocolError."""
    conn = Connection(Role.SERVER)
    conn.receive_data(frame(obj))
    try:
        event = conn.next_event()
    except RemoteProtocolError:
        return
    assert isinstance(event, EVENT_TYPES)


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        ([1, 2], "not a msgpack map"),
        ({"token": "t", "pid": 1}, "missing or unknown type"),
        ({"type": "nope"}, "missing or unknown type"),
        ({"type": ["hello"]}, "missing or unknown type"),
        ({"type": "hello", "token": "t"}, "unknown or missing fields"),
        ({"type": "hello", "token": "t", "pid": 1, "extra": 0}, "unknown or missing fields"),
        ({"type": "hello", "token": "t", "pid": True}, "Hello.pid"),
        ({"type": "hello", "token": "", "pid": 1}, "Hello.token"),
        ({"type": "hello", "token": b"t", "pid": 1}, "Hello.token"),
        ({"type": "hello", "token": "t" * 513, "pid": 1}, "Hello.token"),
    ],
)
def test_invalid_frames_are_named_without_quoting_the_peer(obj: object, problem: str) -> None:
    """Each kind of bad frame gives a RemoteProtocolError that says what, not what was sent."""
    conn = Connection(Role.SERVER)
    conn.receive_data(frame(obj))
    with pytest.raises(RemoteProtocolError, match=problem) as info:
        conn.next_event()
    assert "t" * 20 not in str(info.value)


def test_undecodable_payloads_are_remote_errors() -> None:
    """Bad msgpack, trailing bytes, bad UTF-8, extension types and bytes keys are refused."""
    good = msgpack.packb({"type": "hello", "token": "t", "pid": 1})
    for payload in (
        b"\xc1",  # never used in msgpack
        good + b"\x00",  # extra data after the map
        b"\x81\xa4type\xa2\xff\xfe",  # invalid UTF-8 in a str
        msgpack.packb({"type": "hello", "token": "t", "pid": msgpack.Timestamp(1, 0)}),
        msgpack.packb({"type": "hello", "token": "t", "pid": msgpack.ExtType(5, b"xx")}),
        b"\x91" * 5000,  # nesting deeper than msgpack's stack
        msgpack.packb({b"type": "hello"}, use_bin_type=True),
    ):
        conn = Connection(Role.SERVER)
        conn.receive_data(struct.pack(">I", len(payload)) + payload)
        with pytest.raises(RemoteProtocolError):
            conn.next_event()


# --- the state rules --------------------------------------------------------------------------


def test_server_requires_hello_first() -> None:
    """A Request (or anything but Hello) opening a connection is refused as a peer error."""
    client = Connection(Role.CLIENT)
    client.send(Hello("t", 1))
    request = encode(Request(1, OP_GET_SECRET_VALUE, {}))
    server = Connection(Role.SERVER)
    server.receive_data(request)
    with pytest.raises(RemoteProtocolError, match="expected a hello frame first"):
        server.next_event()
    # And the error is sticky: the connection is useless from here on.
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    with pytest.raises(LocalProtocolError):
        server.send(Welcome("arn"))


def test_server_refuses_requests_between_hello_and_welcome() -> None:
    """The server decides on the Hello before it accepts any request."""
    server = Connection(Role.SERVER)
    server.receive_data(encode(Hello("t", 1)) + encode(Request(1, "op", {})))
    assert server.next_event() == Hello("t", 1)
    with pytest.raises(RemoteProtocolError):
        server.next_event()


def test_client_may_not_send_before_welcome() -> None:
    """Sending a Request before the Welcome arrived is our bug: LocalProtocolError."""
    client = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError, match="state START"):
        client.send(Request(1, "op", {}))
    client.send(Hello("t", 1))
    with pytest.raises(LocalProtocolError, match="state HANDSHAKE"):
        client.send(Request(1, "op", {}))
    assert client.state is State.HANDSHAKE


def test_request_ids_are_tracked_both_ways() -> None:
    """Reused ids and answers to unknown ids are refused on the side that can tell."""
    pair = open_pair()
    client, server = pair.conn[Role.CLIENT], pair.conn[Role.SERVER]
    pair.send(Role.CLIENT, Request(7, "op", {}))
    with pytest.raises(LocalProtocolError, match="already in flight"):
        client.send(Request(7, "op", {}))
    with pytest.raises(LocalProtocolError, match="not in flight"):
        server.send(Response.success(8, {}))
    # A peer that reuses an id in flight, or answers one never asked, broke the protocol.
    dup = Connection(Role.SERVER)
    dup.receive_data(encode(Hello("t", 1)))
    dup.next_event()
    dup.send(Welcome("arn"))
    dup.receive_data(encode(Request(1, "op", {})) * 2)
    dup.next_event()
    with pytest.raises(RemoteProtocolError, match="reused"):
        dup.next_event()
    client.receive_data(encode(Response.success(99, {})))
    with pytest.raises(RemoteProtocolError, match="not in flight"):
        client.next_event()


def test_goodbye_ends_the_conversation_from_either_side() -> None:
    """After a Goodbye sent or received, the state is CLOSED and nothing more is sent."""
    pair = open_pair()
    assert pair.send(Role.SERVER, Goodbye("bye")) == [Goodbye("bye"), CLOSED]
    for conn in pair.conn.values():
        assert conn.state is State.CLOSED
        with pytest.raises(LocalProtocolError):
            conn.send(Goodbye("again"))
    # Data after the end is dropped, not parsed.
    client = pair.conn[Role.CLIENT]
    client.receive_data(b"garbage")
    assert client.next_event() is CLOSED
    assert client.buffered == 0


def test_refusal_before_welcome() -> None:
    """The server may answer a Hello with Goodbye (refused); the client sees it in HANDSHAKE."""
    pair = ConnectionPair(Role.CLIENT, Role.SERVER)
    pair.send(Role.CLIENT, Hello("t", 1))
    assert pair.send(Role.SERVER, Goodbye("refused")) == [Goodbye("refused"), CLOSED]


def test_control_channel_invocations() -> None:
    """Manager and worker exchange Invoke/InvokeResult without a handshake, ids tracked."""
    pair = ConnectionPair(Role.MANAGER, Role.WORKER)
    invoke = Invoke("inv-1", "arn:f", b'{"a": 1}', "", "RequestResponse", 123)
    assert pair.send(Role.MANAGER, invoke) == [invoke, NEED_DATA]
    with pytest.raises(LocalProtocolError):
        pair.conn[Role.WORKER].send(Request(1, "op", {}))
    result = InvokeResult("inv-1", b'"ok"', "")
    assert pair.send(Role.WORKER, result) == [result, NEED_DATA]
    with pytest.raises(LocalProtocolError, match="not in flight"):
        pair.conn[Role.WORKER].send(InvokeResult("inv-1", b"", ""))


def test_receive_data_after_eof_is_a_local_error() -> None:
    """Feeding bytes after signalling EOF is the caller's bug."""
    conn = Connection(Role.SERVER)
    conn.receive_data(b"\x00")
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


def _drive(role: Role, state: State) -> Connection | None:
    """A connection of `role` brought to `state` by legal moves, or None if it can't get there."""
    conn = Connection(role)
    if conn.state is state:
        return conn
    steps: dict[tuple[Role, State], list[tuple[str, Event]]] = {
        (Role.CLIENT, State.HANDSHAKE): [("send", Hello("t", 1))],
        (Role.CLIENT, State.OPEN): [("send", Hello("t", 1)), ("receive", Welcome("a"))],
        (Role.SERVER, State.HANDSHAKE): [("receive", Hello("t", 1))],
        (Role.SERVER, State.OPEN): [("receive", Hello("t", 1)), ("send", Welcome("a"))],
    }
    if state is State.CLOSED:
        steps[(role, state)] = [("send", Goodbye(""))]
    if (role, state) not in steps:
        return None
    for direction, event in steps[(role, state)]:
        if direction == "send":
            conn.send(event)
        else:
            conn.receive_data(encode(event))
            conn.next_event()
    assert conn.state is state
    return conn


#: Every (role, state) a connection can be brought to by legal moves.
REACHABLE = [(role, state) for role in Role for state in State if _drive(role, state)]


@pytest.mark.parametrize(("role", "state"), REACHABLE)
def test_the_answer_shortcut_applies_exactly_where_the_table_allows_it(
    role: Role, state: State
) -> None:
    """A request is answered without being received only where TRANSITIONS keeps the state.

    That is: this end may receive a Request and send its Response, and neither changes the
    state; everywhere else `peek_request` finds nothing and the general path decides.
    """
    conn = _drive(role, state)
    assert conn is not None
    moves = {(r, s, d.value, k): new for (r, s, d, k), new in TRANSITIONS.items()}
    allowed = (
        moves.get((role, state, "receive", Request)) is state
        and moves.get((role, state, "send", Response)) is state
    )
    found = conn.peek_request(encode(Request(5, OP_GET_SECRET_VALUE, ARGS)))
    assert (found is not None) is allowed
    assert conn.state is state


def _sample(kind: type[Event]) -> Event:
    samples: dict[type[Event], Event] = {
        Hello: Hello("t", 1),
        Welcome: Welcome("a"),
        Goodbye: Goodbye("g"),
        Request: Request(1, "op", {}),
        Response: Response.success(1, {}),
        Invoke: Invoke("i", "a", b"", "", "Event", 0),
        InvokeResult: InvokeResult("i", b"", ""),
    }
    return samples[kind]


def _open_exchange(conn: Connection, kind: type[Event]) -> None:
    """Put id 1 / "i" in flight so an answer of `kind` would be legal by id."""
    if kind is Response and conn.role is Role.SERVER:
        conn.receive_data(encode(Request(1, "op", {})))
        conn.next_event()
    elif kind is Response and conn.role is Role.CLIENT:
        conn.send(Request(1, "op", {}))
    elif kind is InvokeResult and conn.role is Role.WORKER:
        conn.receive_data(encode(Invoke("i", "a", b"", "", "Event", 0)))
        conn.next_event()
    elif kind is InvokeResult and conn.role is Role.MANAGER:
        conn.send(Invoke("i", "a", b"", "", "Event", 0))


@settings(max_examples=300, deadline=None)
@given(
    role=st.sampled_from(list(Role)),
    state=st.sampled_from([State.START, State.HANDSHAKE, State.OPEN, State.CLOSED]),
    kind=st.sampled_from(list(EVENT_TYPES)),
    sending=st.booleans(),
)
def test_state_table_is_enforced(
    role: Role,
    state: State,
    kind: type[Event],
    sending: bool,  # noqa: FBT001 - a hypothesis argument
) -> None:
    """Every (role, state, direction, event) does what TRANSITIONS says, or raises as it should."""
    conn = _drive(role, state)
    if conn is None:
        return
    if state is State.OPEN:
        _open_exchange(conn, kind)
    direction = "send" if sending else "receive"
    expected = next(
        (
            new
            for (r, s, d, k), new in TRANSITIONS.items()
            if r is role and s is state and d.value == direction and k is kind
        ),
        None,
    )
    event = _sample(kind)
    if sending:
        if expected is None:
            with pytest.raises(LocalProtocolError):
                conn.send(event)
        else:
            conn.send(event)
            assert conn.state is expected
    elif state is State.CLOSED:
        conn.receive_data(encode(event))
        assert conn.next_event() is CLOSED
    else:
        conn.receive_data(encode(event))
        if expected is None:
            with pytest.raises(RemoteProtocolError):
                conn.next_event()
        else:
            assert conn.next_event() == event
            assert conn.state is expected


# --- events -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: Hello("", 1),
        lambda: Hello("t", 0),
        lambda: Hello("t", True),
        lambda: Welcome(""),
        lambda: Goodbye(None),
        lambda: Request(-1, "op", {}),
        lambda: Request(MAX_REQUEST_ID + 1, "op", {}),
        lambda: Request(1, "", {}),
        lambda: Request(1, "op", []),
        lambda: Response(1, True, None, None),
        lambda: Response(1, True, {}, {"Status": 500, "Message": "x"}),
        lambda: Response(1, False, None, {"Status": 418, "Message": "teapot"}),
        lambda: Response(1, False, None, {"Status": "500", "Message": "x"}),
        lambda: Response(1, False, None, {"Status": 500}),
        lambda: Response(1, False, {}, {"Status": 500, "Message": "x"}),
        lambda: Response(1, 1, {}, None),
        lambda: Invoke("i", "a", "text", "", "Event", 0),
        lambda: Invoke("i", "a", b"", "", "DryRun", 0),
        lambda: Invoke("i", "a", b"", "", ["Event"], 0),
        lambda: Invoke("i", "a", b"", "", "Event", -1),
        lambda: InvokeResult("i", b"", "Oops"),
        lambda: InvokeResult("", b"", ""),
    ],
)
def test_events_validate_their_fields(build: Any) -> None:
    """Building an event with a wrong field is our bug: LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        build()


def test_reprs_never_show_tokens_values_or_payloads() -> None:
    """Reprs end up in logs and tracebacks, so they hide what may be secret."""
    shown = " ".join(
        repr(e)
        for e in (
            Hello("tok-SECRET", 1),
            Request(1, OP_GET_SECRET_VALUE, {"SecretId": "x", "Payload": b"SECRET"}),
            Response.success(1, {"SecretString": "SECRET"}),
            Invoke("i", "a", b"SECRET", "", "Event", 0),
            InvokeResult("i", b"SECRET", ""),
        )
    )
    assert "SECRET" not in shown
    assert "SecretString" in shown  # the keys are useful and harmless


def test_protocol_error_is_abstract() -> None:
    """Only the two concrete kinds may be raised."""
    with pytest.raises(TypeError):
        ProtocolError("x")
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)


def test_too_large_or_unencodable_sends_change_nothing() -> None:
    """A refused send raises LocalProtocolError and leaves state and ids as they were."""
    pair = open_pair()
    client = pair.conn[Role.CLIENT]
    with pytest.raises(FrameTooLargeError) as info:
        client.send(Request(1, "lambda.invoke", {"Payload": b"x" * MAX_FRAME_SIZE}))
    assert info.value.limit == MAX_FRAME_SIZE
    assert info.value.size > MAX_FRAME_SIZE
    with pytest.raises(LocalProtocolError, match="can't be encoded"):
        client.send(Request(1, "op", {"when": object()}))
    assert client.in_flight == frozenset()
    assert client.state is State.OPEN
    client.send(Request(1, "op", {}))  # id 1 is still free
    small = Connection(Role.CLIENT, max_frame_size=16)
    with pytest.raises(FrameTooLargeError):
        small.send(Hello("a" * 32, 1))
    assert small.state is State.START


def test_every_live_state_can_say_goodbye() -> None:
    """In the table, every role may send and receive Goodbye until the conversation is over."""
    for role in Role:
        for state in (State.START, State.HANDSHAKE, State.OPEN):
            ends = [
                new
                for (r, s, _d, kind), new in TRANSITIONS.items()
                if r is role and s is state and kind is Goodbye
            ]
            assert ends == [State.CLOSED, State.CLOSED]


@given(
    request_id=st.sampled_from([0, 1, 127, 128, 255, 65536, 2**32, MAX_REQUEST_ID]),
    result=st.dictionaries(
        st.text(max_size=8),
        st.one_of(st.text(), st.binary(), st.integers(-(2**63), 2**63 - 1), st.lists(st.text())),
        max_size=6,
    ),
)
def test_a_spliced_answer_is_the_same_frame_as_an_encoded_one(
    request_id: int, result: dict[str, Any]
) -> None:
    """An answer sent with its result pre-encoded reaches the client as the same Response."""
    frames = []
    for packed in (None, msgpack.packb(result, use_bin_type=True)):
        server = Connection(Role.SERVER)
        server.receive_data(encode(Hello("t", 1)))
        server.next_event()
        server.send(Welcome("arn"))
        server.receive_data(encode(Request(request_id, OP_GET_SECRET_VALUE, {})))
        server.next_event()
        frames.append(server.send(Response.success(request_id, result, packed)))
    assert frames[0] == frames[1]
    assert decode(frames[1][HEADER_SIZE:]) == Response.success(request_id, result)


# --- the hot paths' shortcuts -----------------------------------------------------------------

#: One request id of every msgpack width, at both ends of each.
EDGE_IDS = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, MAX_REQUEST_ID]
ARGS = {"SecretId": "db", "VersionStage": "AWSCURRENT"}


def server_with(*request_ids: int) -> Connection:
    """An OPEN server connection that has received (and answered) nothing else."""
    server = Connection(Role.SERVER)
    server.receive_data(encode(Hello("t", 1)))
    server.next_event()
    server.send(Welcome("arn"))
    for request_id in request_ids:
        server.receive_data(encode(Request(request_id, OP_GET_SECRET_VALUE, ARGS)))
        server.next_event()
    return server


@pytest.mark.parametrize("request_id", EDGE_IDS)
def test_a_repeated_request_is_found_and_its_spliced_answer_is_the_encoded_one(
    request_id: int,
) -> None:
    """peek_request finds id and key; response_frame gives what send gives; nothing changes."""
    data = encode(Request(request_id, OP_GET_SECRET_VALUE, ARGS))
    other = encode(Request(7, OP_GET_SECRET_VALUE, ARGS))
    server = server_with()
    found = server.peek_request(data)
    assert found is not None
    id_end, end = found
    assert end == len(data)
    # The key (op and args) is the same whatever the id; the id bytes are the packed id.
    other_end = server.peek_request(other)
    assert other_end is not None
    assert data[id_end:end] == other[other_end[0] :]
    assert data[HEADER_SIZE + len(REQUEST_HEAD) : id_end] == msgpack.packb(request_id)
    assert request_id_end(data[HEADER_SIZE:]) == id_end - HEADER_SIZE
    assert server.state is State.OPEN
    assert server.in_flight == frozenset()
    assert server.buffered == 0
    # The spliced answer is byte for byte what the state machine sends.
    result = {"Name": "db", "SecretString": "x"}
    packed = msgpack.packb(result, use_bin_type=True)
    server.receive_data(data)
    assert server.next_event() == Request(request_id, OP_GET_SECRET_VALUE, ARGS)
    assert bytes(server.last_payload) == data[HEADER_SIZE:]
    sent = server.send(Response.success(request_id, result, packed))
    assert response_frame(data[HEADER_SIZE + len(REQUEST_HEAD) : id_end], packed) == sent


def test_frames_after_the_first_are_found_at_their_offset() -> None:
    """Several requests in one read are found one after the other."""
    first = encode(Request(1, OP_GET_SECRET_VALUE, ARGS))
    data = first + encode(Request(2, OP_GET_SECRET_VALUE, ARGS))
    server = server_with()
    found = server.peek_request(data, len(first))
    assert found is not None
    assert found[1] == len(data)


@pytest.mark.parametrize(
    "packed_id",
    [
        b"\xcc\x05",  # 5 as uint8: not the shortest form
        b"\xcd\x00\x80",
        b"\xce\x00\x00\x01\x00",
        b"\xcf\x00\x00\x00\x00\x00\x01\x00\x00",
        b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",  # over MAX_REQUEST_ID
        b"\xd0\x05",  # a signed int
        b"\xff",  # a negative fixint
        b"\xa1x",  # not an int at all
    ],
)
def test_only_the_canonical_request_layout_is_found(packed_id: bytes) -> None:
    """Other encodings of the id go the general way, which validates (or refuses) them."""
    payload = (
        REQUEST_HEAD
        + packed_id
        + msgpack.packb("op")
        + msgpack.packb(OP_GET_SECRET_VALUE)
        + msgpack.packb("args")
        + msgpack.packb(ARGS)
    )
    assert request_id_end(payload) == -1
    assert server_with().peek_request(struct.pack(">I", len(payload)) + payload) is None


def test_a_request_in_another_layout_is_not_found() -> None:
    """Same fields, other key order: a valid request, but not one the shortcut knows."""
    data = frame({"request_id": 1, "type": "request", "op": OP_GET_SECRET_VALUE, "args": ARGS})
    server = server_with()
    assert server.peek_request(data) is None
    server.receive_data(data)
    assert server.next_event() == Request(1, OP_GET_SECRET_VALUE, ARGS)
    assert request_id_end(server.last_payload) == -1


def test_requests_are_not_found_when_the_connection_could_not_take_them_now() -> None:
    """Partial frames, buffered bytes, ids in flight, other roles and states: all None."""
    data = encode(Request(5, OP_GET_SECRET_VALUE, ARGS))
    assert server_with().peek_request(data[:-1]) is None
    assert server_with().peek_request(data[:6]) is None
    assert server_with(5).peek_request(data) is None  # id 5 is in flight: a protocol error
    assert server_with(6).peek_request(data) is not None
    buffered = server_with()
    buffered.receive_data(data[:3])
    assert buffered.peek_request(data) is None
    handshaking = Connection(Role.SERVER)
    handshaking.receive_data(encode(Hello("t", 1)))
    handshaking.next_event()
    assert handshaking.peek_request(data) is None
    assert open_pair().conn[Role.CLIENT].peek_request(data) is None
    closed = server_with()
    closed.send(Goodbye("bye"))
    assert closed.peek_request(data) is None
    small = Connection(Role.SERVER, max_frame_size=32)
    small.receive_data(encode(Hello("t", 1)))
    small.next_event()
    small.send(Welcome("arn"))
    assert len(data) - HEADER_SIZE > small.max_frame_size
    assert small.peek_request(data) is None


@settings(max_examples=200, deadline=None)
@given(request_id=ids, op=st.text(min_size=1, max_size=128), args=arg_maps)
def test_send_request_is_send_of_a_request(request_id: int, op: str, args: dict[str, Any]) -> None:
    """The client's shortcut gives the same bytes and state as sending the event."""
    short, general = open_pair().conn[Role.CLIENT], open_pair().conn[Role.CLIENT]
    assert short.send_request(request_id, op, args) == general.send(Request(request_id, op, args))
    assert short.in_flight == general.in_flight == frozenset({request_id})


@pytest.mark.parametrize(
    ("request_id", "op", "args", "error"),
    [
        (-1, "op", {}, LocalProtocolError),
        (True, "op", {}, LocalProtocolError),
        (1, "", {}, LocalProtocolError),
        (1, "x" * 129, {}, LocalProtocolError),
        (1, "op", [], LocalProtocolError),
        (1, "op", {"when": object()}, LocalProtocolError),
        (1, "op", {"blob": b"x" * MAX_FRAME_SIZE}, FrameTooLargeError),
    ],
)
def test_send_request_refuses_what_send_refuses(
    request_id: Any, op: Any, args: Any, error: type[Exception]
) -> None:
    """Bad fields, unencodable or oversized requests: the same errors, nothing in flight."""
    client = open_pair().conn[Role.CLIENT]
    with pytest.raises(error):
        client.send_request(request_id, op, args)
    assert client.in_flight == frozenset()
    client.send_request(1, "op", {})
    with pytest.raises(LocalProtocolError, match="already in flight"):
        client.send_request(1, "op", {})
    with pytest.raises(LocalProtocolError, match="can't send"):
        Connection(Role.CLIENT).send_request(1, "op", {})


def test_receive_response_takes_exactly_one_answer_in_flight() -> None:
    """One whole answer to an id in flight is taken; anything else is left to the usual path."""
    pair = open_pair()
    client, server = pair.conn[Role.CLIENT], pair.conn[Role.SERVER]
    for request_id in (1, 2, 3):
        server.receive_data(client.send_request(request_id, OP_GET_SECRET_VALUE, ARGS))
        server.next_event()
    one = server.send(Response.success(1, {"a": 1}))
    two = server.send(Response.failure(2, 404, "no"))
    assert client.receive_response(one) == Response.success(1, {"a": 1})
    assert client.in_flight == frozenset({2, 3})
    assert client.receive_response(one) is None  # id 1 is no longer in flight
    assert client.receive_response(two[:-1]) is None
    assert client.receive_response(two + two) is None
    assert client.receive_response(encode(Goodbye("bye"))) is None
    assert client.receive_response(b"\x00\x00\x00\x02\xc1\xc1") is None  # not msgpack
    assert client.in_flight == frozenset({2, 3})
    client.receive_data(two[:3])
    assert client.receive_response(two) is None  # bytes are buffered: order matters
    client.receive_data(two[3:])
    assert drain(client) == [Response.failure(2, 404, "no"), NEED_DATA]
    assert server_with().receive_response(one) is None


def test_success_checks_what_it_is_given() -> None:
    """Response.success's shortcut still refuses a bad id or a result that is not a map."""
    with pytest.raises(LocalProtocolError):
        Response.success(-1, {})
    with pytest.raises(LocalProtocolError):
        Response.success(1, None)  # type: ignore[arg-type]
    replay = lambda: True  # noqa: E731
    response = Response.success(3, {"a": 1}, b"\x81\xa1a\x01", replay)
    assert response == Response(3, True, {"a": 1}, None)
    assert (response.packed_result, response.replay) == (b"\x81\xa1a\x01", replay)
    assert Response(3, True, {}, None).replay is None
