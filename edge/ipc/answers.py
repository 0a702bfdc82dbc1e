# SPDX-License-Identifier: Apache-2.0
"""One connection's cache of answers to repeated requests, answered without decoding them.

A worker asks for its few secrets over and over, with the same bytes but for the request id.
When the handler's answer carries `Response.replay` (it holds for every such repeat for as long
as the handler's view of the world is unchanged), the connection remembers it, keyed by the
request's op and args as packed. The next repeat found at the front of a read
(`Connection.peek_request`, allowed only where the state table lets a request be received and
answered at once) is answered by splicing its id into the remembered packed result
(`response_frame`): no decoding, no events, no handler. `replay()` still runs for each: it does
what the handler would have done besides answering (count the read, audit it) and says whether
the answer still holds; if not, every remembered answer goes and the general path answers.

The handler can also drop the caches at once when its answers change (`IpcServer.drop_repeats`,
wired to the handler's `on_change`), so no connection keeps an old secret value in memory until
its next request.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Final, Protocol

from structlog.typing import FilteringBoundLogger

from edge.ipc.codec import HEADER_SIZE
from edge.ipc.connection import Connection
from edge.ipc.fastpath import REQUEST_HEAD, request_id_end, response_frame

#: Distinct requests a connection remembers the answer of: a worker asks for its few secrets
#: over and over. Emptied when full, so a worker cycling through more requests than this only
#: loses the shortcut.
MAX_ANSWERS: Final = 64
#: Longest request (op and args, packed) whose answer is remembered; the answers themselves
#: are the handler's own bytes, shared, not copies.
MAX_KEY_BYTES: Final = 1024
# A repeated answer's frame around its packed result: the map's keys and fixed values (~40
# bytes) and the longest packed id (9), rounded up; larger answers are not remembered.
_FRAME_OVERHEAD = 64
_ID_START = HEADER_SIZE + len(REQUEST_HEAD)
_now_ns = time.perf_counter_ns


class Tally(Protocol):
    """Where answered requests are counted (the server's request handling)."""

    requests: Counter[tuple[str, str]]
    measure_latency: bool

    def observe(self, op: str, started: int) -> None:
        """Count a request's latency from `started` (`perf_counter_ns`) until now."""
        ...


class AnswerCache:
    """The answers one connection may repeat: packed op and args -> (op, packed result, replay).

    Args:
        conn: The connection's state machine, which says whether a request may be answered.
        tally: Where answered repeats are counted, as the handler's answers are.
    """

    __slots__ = ("_conn", "_entries", "_tally")

    def __init__(self, conn: Connection, tally: Tally) -> None:
        self._conn = conn
        self._tally = tally
        self._entries: dict[bytes, tuple[str, bytes, Callable[[], bool]]] = {}

    def __len__(self) -> int:
        """How many answers are remembered."""
        return len(self._entries)

    def clear(self) -> None:
        """Forget every answer (the handler's answers changed, or the connection ends)."""
        self._entries.clear()

    def remember(self, op: str, packed_result: bytes | None, replay: Callable[[], bool]) -> None:
        """Keep the answer just sent, to the request the connection received last."""
        conn = self._conn
        payload = conn.last_payload
        id_end = request_id_end(payload)
        if (
            packed_result is None
            or id_end < 0
            or len(payload) - id_end > MAX_KEY_BYTES
            or len(packed_result) + _FRAME_OVERHEAD > conn.max_frame_size
        ):
            return
        if len(self._entries) >= MAX_ANSWERS:
            self._entries.clear()
        self._entries[bytes(payload[id_end:])] = (op, packed_result, replay)

    def answer(
        self, data: bytes, transport: asyncio.Transport | None, log: FilteringBoundLogger
    ) -> int:
        """Answer the frames at the front of `data` that repeat a remembered request.

        Returns how many bytes were answered; the caller feeds the rest to the connection.
        """
        entries = self._entries
        if not entries:
            return 0
        conn = self._conn
        tally = self._tally
        start = 0
        size = len(data)
        while start < size:
            found = conn.peek_request(data, start)
            if found is None:
                return start
            id_end, end = found
            entry = entries.get(data[id_end:end])
            if entry is None:
                return start
            started = _now_ns() if tally.measure_latency else 0
            op, packed, replay = entry
            try:
                holds = replay()
            except Exception:  # the handler's bug: log it; the general path answers (or 500s)
                log.exception("ipc.replay.failed", op=op)
                holds = False
            if not holds:
                entries.clear()
                return start
            if transport is not None and not transport.is_closing():
                transport.write(response_frame(data[start + _ID_START : id_end], packed))
            tally.requests[op, "ok"] += 1
            if started:
                tally.observe(op, started)
            start = end
        return start
