# SPDX-License-Identifier: Apache-2.0
"""The IPC's frames: length-prefixed msgpack maps, to and from events, with no state.

Frame format::

    +------------------------+---------------------------------------------+
    | length: uint32, big-   | msgpack map (bin type for bytes), `length`  |
    | endian, of the payload | bytes: {"type": "<tag>", <field>: <value>…} |
    +------------------------+---------------------------------------------+

The map holds exactly the event's fields plus "type" (see `edge.ipc.events`). Unknown or
missing fields, wrong field types, msgpack extension types and anything longer than
`MAX_FRAME_SIZE` are refused, so a peer can only ever hand the core the seven event shapes.
"""

from __future__ import annotations

import struct

import msgpack

from edge.errors import FrameTooLargeError, LocalProtocolError, RemoteProtocolError
from edge.ipc.events import EVENT_TYPES, Event

# Annotations only: a worker loads no `typing` (see edge/child/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

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
#: The length prefix itself.
HEADER: Final = struct.Struct(">I")

_BY_TAG: Final[dict[str, type[Event]]] = {cls.TAG: cls for cls in EVENT_TYPES}


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
    return frame(event, payload, max_frame_size)


def frame(event: Event, payload: bytes, max_frame_size: int) -> bytes:
    """Put the length prefix in front of `event`'s packed payload, refusing it if too large."""
    size = len(payload)
    if size > max_frame_size:
        raise FrameTooLargeError(event.TAG, size, max_frame_size)
    return HEADER.pack(size) + payload


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
