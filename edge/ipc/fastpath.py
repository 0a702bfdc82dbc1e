# SPDX-License-Identifier: Apache-2.0
"""Byte-level shortcuts for the IPC's three hottest exchanges, taken only where the table allows.

Building and checking an event costs about as much as the rest of a request, and three
exchanges happen once per secret read:

* the core answering a request it has answered before (`FastPaths.peek_request` finds it in the
  bytes read, `response_frame` splices the request's id into the remembered answer);
* a worker sending a request (`FastPaths.send_request`);
* a worker reading the one answer it waits for (`FastPaths.receive_response`).

Each shortcut has exactly the effect the general path (`Connection.send`, `receive_data` then
`next_event`) would have, or none at all and says so. Whether one may be taken is not decided
here: on entering a state, the connection derives a `Shortcuts` from its state table
(`edge.ipc.connection.TRANSITIONS`), and every shortcut starts by asking it. A change to the
table therefore changes where the shortcuts apply, with nothing to keep in step here.
"""

from __future__ import annotations

import struct

import msgpack

from edge.errors import FrameTooLargeError, LocalProtocolError, RemoteProtocolError
from edge.ipc.codec import HEADER, HEADER_SIZE, decode
from edge.ipc.events import MAX_OP_LENGTH, MAX_REQUEST_ID, Request, Response

# Annotations only: a worker loads no `typing` (see edge/child/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

    from edge.ipc.events import Event

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
#: follows, then "op" and "args": see `FastPaths.peek_request`.
REQUEST_HEAD: Final = (
    b"\x84" + msgpack.packb("type") + msgpack.packb("request") + msgpack.packb("request_id")
)
_REQUEST_ID_AT: Final = len(REQUEST_HEAD)
# Bound once: CPython 3.11 looks a method called on an imported name up again on every call.
_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from
_UINT16 = struct.Struct(">H")
_UINT64 = struct.Struct(">Q")


class Shortcuts:
    """Which shortcuts a connection's current state allows, as its state table says.

    A plain slotted class, not a `NamedTuple`, which would load `typing` into every worker.
    """

    __slots__ = ("answer_request", "receive_response", "send_request")

    def __init__(self, *, answer_request: bool, send_request: bool, receive_response: bool) -> None:
        #: Receiving a Request and sending its answer both keep the state, the Request's id
        #: opens an exchange and the answer's closes it: doing both at once leaves the
        #: connection as it was, so neither needs to be done.
        self.answer_request = answer_request
        #: Sending a Request keeps the state and opens its id.
        self.send_request = send_request
        #: Receiving a Response keeps the state and closes its id.
        self.receive_response = receive_response


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
        ok = end <= limit and _unpack_header(data, at + 1)[0] > 0xFFFF  # noqa: PLR2004
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


def response_frame(
    request_id: bytes, packed_result: bytes, max_frame_size: int | None = None
) -> bytes:
    """The frame of a successful Response, from its id as packed msgpack and its packed result.

    The same bytes as encoding `Response.success(id, result)` gives.

    Raises:
        FrameTooLargeError: The payload would exceed `max_frame_size`, if one is given (else
            the caller checks the size).
    """
    size = len(_SPLICE_HEAD) + len(request_id) + _SPLICED_SIZE + len(packed_result)
    if max_frame_size is not None and size > max_frame_size:
        raise FrameTooLargeError(Response.TAG, size, max_frame_size)
    return b"".join(
        (_pack_header(size), _SPLICE_HEAD, request_id, _SPLICE_MIDDLE, packed_result, _SPLICE_TAIL)
    )


class FastPaths:
    """The shortcuts, as methods of `Connection` (a mixin: they share its buffer and ids)."""

    __slots__ = ()
    # Connection's own, shared with the general path.
    _buffer: bytearray
    _in_flight: set[int | str]
    _max_frame_size: int
    _packer: Any
    _shortcuts: Shortcuts

    if TYPE_CHECKING:

        def send(self, event: Event) -> bytes:
            """The general path (`Connection.send`)."""
            ...

    def peek_request(self, data: bytes, start: int = 0) -> tuple[int, int] | None:
        """Find a whole Request frame at `data[start:]` that may be answered without receiving it.

        For the core's cache of repeated answers: the frame must be laid out as msgpack-python
        packs `Request.to_wire()` (see `request_id_end`), and this connection must be able to
        receive it now and answer it at once (`Shortcuts.answer_request`), with nothing
        buffered (frames are handled in order) and its id not in flight. Receiving such a
        request and sending its answer leaves the connection as it was, so the caller may skip
        both: nothing changes here either way.

        Returns:
            (where its id ends, where the frame ends), as offsets into `data`; the frame's
            payload after the id, `data[id_end:frame_end]`, is its op and args. None if there
            is no such frame (then feed `data[start:]` to `receive_data` as usual).
        """
        at = start + HEADER_SIZE
        id_start = at + _REQUEST_ID_AT
        if not self._shortcuts.answer_request or self._buffer or len(data) <= id_start:
            return None
        (size,) = _unpack_header(data, start)
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
        """`send(Request(request_id, op, args))`, without building the event.

        The same bytes, checks, state effects and errors.
        """
        if (
            not self._shortcuts.send_request
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
        return _pack_header(size) + payload

    def receive_response(self, data: bytes) -> Response | None:
        """Take `data` at once if it is exactly one whole Response frame to a request in flight.

        The same as `receive_data(data)` then `next_event()` returning that Response, in one
        step (a read usually holds exactly the one answer a worker waits for). Anything else
        (more or less than one frame, bytes already buffered, another event, an invalid frame,
        an id not in flight, a state without `Shortcuts.receive_response`) returns None and
        changes nothing: pass `data` to `receive_data` as usual, which then reports any
        problem the usual way.
        """
        if not self._shortcuts.receive_response or self._buffer:
            return None
        size = len(data) - HEADER_SIZE
        if size <= 0 or size > self._max_frame_size or _unpack_header(data)[0] != size:
            return None
        try:
            event = decode(memoryview(data)[HEADER_SIZE:])
        except RemoteProtocolError:
            return None
        if type(event) is not Response or event.request_id not in self._in_flight:
            return None
        self._in_flight.remove(event.request_id)
        return event
