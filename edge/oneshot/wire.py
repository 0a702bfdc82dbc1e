# SPDX-License-Identifier: Apache-2.0
"""What crosses the pipes between the core and a one-shot child: msgpack maps, and errors.

A frame is one msgpack map; a stream of them needs no length prefix (msgpack's `Unpacker`
splits it). The core writes a request on the child's stdin; the child writes frames on a private
copy of its stdout (`answer_pipe`), the last of them its answer.

Errors cross by class name and constructor arguments, from a closed allow-list (`ErrorTable`):
a child can only make the core raise one of the errors the core would have raised itself, with
the same attributes, never an arbitrary class.

No asyncio here: `FrameReader` only awaits the stream it is given, and a synchronous child reads
its request with `read_frame`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any, Final

import msgpack

if TYPE_CHECKING:
    import asyncio

#: Largest frame either side reads: a Lambda package (250 MB) with room for its envelope.
MAX_FRAME_BYTES: Final = 300 * 1024 * 1024

#: Bytes read from a pipe at a time.
_CHUNK: Final = 1 << 16


class Frames:
    """Splits bytes from a pipe into frames, each a map (sans-IO)."""

    def __init__(self) -> None:
        self._unpacker = msgpack.Unpacker(max_buffer_size=MAX_FRAME_BYTES)

    def feed(self, data: bytes) -> None:
        """Add bytes read from the pipe.

        Raises:
            ValueError: More than `MAX_FRAME_BYTES` are buffered without a whole frame.
        """
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull as exc:
            raise ValueError("a frame is larger than the pipe allows") from exc

    def next(self) -> dict[str, Any] | None:
        """The next whole frame, or None until more bytes are fed.

        Raises:
            TypeError: The frame is not a map.
            ValueError: The bytes are not msgpack.
        """
        for frame in self._unpacker:
            if not isinstance(frame, dict):
                raise TypeError("a frame on the pipe is not a map")
            return frame
        return None


class FrameReader:
    """Reads frames from one asyncio stream."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream
        self._frames = Frames()

    async def next(self) -> dict[str, Any]:
        """The next frame.

        Raises:
            EOFError: The pipe closed before a whole frame arrived.
            TypeError: The frame is not a map.
            ValueError: The bytes are not msgpack.
        """
        while (frame := self._frames.next()) is None:
            chunk = await self._stream.read(_CHUNK)
            if not chunk:
                raise EOFError
            self._frames.feed(chunk)
        return frame


def read_frame(fd: int) -> dict[str, Any]:
    """Read one frame from a file descriptor, blocking (a synchronous child's request).

    Raises:
        EOFError: The pipe closed before a whole frame arrived.
        TypeError: The frame is not a map.
        ValueError: The bytes are not msgpack.
    """
    frames = Frames()
    while (frame := frames.next()) is None:
        chunk = os.read(fd, _CHUNK)
        if not chunk:
            raise EOFError
        frames.feed(chunk)
    return frame


def pack(frame: Mapping[str, Any]) -> bytes:
    """One frame's bytes."""
    data: bytes = msgpack.packb(frame)
    return data


def answer_pipe() -> IO[bytes]:
    """The child's side: where its frames go, a private copy of stdout.

    Whatever a library prints lands on stderr (which the core relays into its log), so nothing
    but frames ever reaches the core's reader.
    """
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    return out


#: How an error crosses: its constructor arguments from an instance, an instance from them.
ErrorCodec = tuple[Callable[[Any], dict[str, Any]], Callable[[dict[str, Any]], Exception]]


def by_fields(error_class: type[Exception], *names: str) -> ErrorCodec:
    """The codec of a class built from keyword arguments it keeps as same-named attributes."""
    return (lambda e: {n: getattr(e, n) for n in names}), (lambda args: error_class(**args))


class ErrorTable:
    """The errors a child may answer, each with how to read and rebuild its arguments."""

    def __init__(
        self,
        what: str,
        entries: Mapping[type[Exception], ErrorCodec],
    ) -> None:
        """Name the child (for messages) and list its errors.

        Args:
            what: The child, as messages name it: "the fetch process".
            entries: Each class and its codec (`by_fields` for most).
        """
        self._what = what
        self._entries = {cls.__name__: (cls, *codec) for cls, codec in entries.items()}

    def to_plain(self, error: Exception) -> dict[str, Any] | None:
        """The error as {"type", "args"}, or None if its exact class is not on the list."""
        entry = self._entries.get(type(error).__name__)
        if entry is None or type(error) is not entry[0]:
            return None
        return {"type": type(error).__name__, "args": entry[1](error)}

    def from_plain(self, plain: Mapping[str, Any]) -> Exception:
        """Rebuild an error on the list.

        Raises:
            ValueError: The class is not on the list, or its arguments don't fit it.
        """
        entry = self._entries.get(str(plain.get("type")))
        args = plain.get("args")
        if entry is None or not isinstance(args, dict):
            raise ValueError(f"{self._what} answered an error it may not answer")
        try:
            return entry[2]({str(k): v for k, v in args.items()})
        except (TypeError, KeyError) as exc:
            raise ValueError(f"{self._what} answered an error with the wrong arguments") from exc
