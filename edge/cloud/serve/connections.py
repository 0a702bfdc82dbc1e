# SPDX-License-Identifier: Apache-2.0
"""Connection limits for `edge cloud serve`: a request-head timeout, an idle timeout and a cap.

aiohttp bounds the size of a request head but not the time it takes to arrive, so a client
that sends half a request line and stops would hold its descriptor forever, and enough of them
(Slowloris) take every descriptor the process has. Each connection is therefore wrapped in a
`Guarded` protocol that forwards everything to aiohttp's own protocol and keeps one deadline:

* from the moment the connection is made, or the first byte of a later request arrives, its
  head must be complete within `HEAD_TIMEOUT_SECONDS`;
* after an answer, the next request must start within `IDLE_TIMEOUT_SECONDS`.

A connection past its deadline is aborted. "Head complete" is learnt from aiohttp itself: the
application marks the connection busy (`Connections.busy`) when a request reaches it, so no
HTTP is parsed here; while busy, time is the handler's to bound (the body read has its own
timeout in `app`).

The number of open connections is capped (`MAX_CONNECTIONS`, kept below the descriptor limit).
Past the cap, a new connection doesn't wait and isn't refused outright: the connection that has
waited longest without a request in progress (a half-sent head, an idle keep-alive) is aborted
to make room, and only when every connection is busy is the new one closed. So a flood of idle
or half-open connections can't keep out a signed client or `/health`: real clients send their
head within milliseconds of connecting and are never the oldest waiting.
"""

from __future__ import annotations

import asyncio
import resource
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

#: Seconds a request head (request line and headers) may take to arrive. An SDK sends it in one
#: write; ten seconds covers a congested link (Go's usual ReadHeaderTimeout) while making a
#: half-sent request cost an attacker a reconnect every ten seconds.
HEAD_TIMEOUT_SECONDS: Final = 10.0
#: Seconds an idle keep-alive connection is kept for the next request. SDKs hold a connection
#: pool and reconnect when the server has closed one, so this is only a saving, not a contract.
IDLE_TIMEOUT_SECONDS: Final = 60.0
#: Most connections open at once. Each costs a descriptor and a few KB (plus up to aiohttp's
#: read buffer while a body arrives); 512 is far more than a fleet's operators and CI jobs use.
MAX_CONNECTIONS: Final = 512
#: Descriptors kept for everything else the service opens: the database (and its WAL and shm
#: files), the MQTT connection, TLS and log files, a listening socket per address; and for
#: connections past the cap between being accepted and being closed: asyncio accepts up to the
#: listen backlog (128) at a time, and an aborted socket is closed on a later loop turn.
RESERVED_DESCRIPTORS: Final = 64 + 2 * 128


def connection_cap(wanted: int = MAX_CONNECTIONS) -> int:
    """`wanted`, lowered to fit under the process's descriptor limit with the reserve kept."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - RESERVED_DESCRIPTORS))


class Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, with a deadline and a place in the registry."""

    def __init__(self, inner: asyncio.Protocol, registry: Connections) -> None:
        self._inner = inner
        self._registry = registry
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.BaseTransport | None = None
        #: A request is being handled (its head arrived); no deadline applies here then.
        self.busy = False
        #: Bytes of the next request head have arrived since the last answer.
        self._head_started = False

    # --- asyncio.Protocol, forwarded ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register, make room under the cap, start the head deadline, hand over to aiohttp."""
        self.transport = transport
        self._inner.connection_made(transport)
        self._arm(HEAD_TIMEOUT_SECONDS)
        self._registry.add(self)

    def data_received(self, data: bytes) -> None:
        """Forward; the first byte of a new request head shortens the idle deadline."""
        if not self.busy and not self._head_started:
            self._head_started = True
            self._arm(HEAD_TIMEOUT_SECONDS)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        """Forward."""
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection, then let aiohttp clean up."""
        self._cancel()
        self._registry.remove(self)
        self._inner.connection_lost(exc)
        self.transport = None

    def pause_writing(self) -> None:
        """Forward (aiohttp's write flow control)."""
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        """Forward."""
        self._inner.resume_writing()

    # --- deadlines ------------------------------------------------------------------------------

    def start_request(self) -> None:
        """A request head arrived and is being handled: no deadline until it is answered."""
        self.busy = True
        self._cancel()

    def end_request(self) -> None:
        """The request was answered: the next one must start within the idle timeout."""
        self.busy = False
        self._head_started = False
        self._arm(IDLE_TIMEOUT_SECONDS)
        self._registry.touch(self)

    def abort(self) -> None:
        """Close the connection at once (no lingering, nothing more is read)."""
        self._cancel()
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined] # every stream transport has it

    def _arm(self, seconds: float) -> None:
        self._cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if not self.busy:
            self._registry.expired += 1
            self.abort()


class Connections:
    """Every open connection, oldest-waiting first."""

    def __init__(self, *, cap: int) -> None:
        self.cap = cap
        # Insertion order is "waiting since": moved to the end each time a request is answered.
        self._open: OrderedDict[Guarded, None] = OrderedDict()
        self._by_transport: dict[asyncio.BaseTransport, Guarded] = {}
        #: Connections closed for running out of time, and to make room under the cap.
        self.expired = 0
        self.evicted = 0

    def protocol(self, inner: asyncio.Protocol) -> Guarded:
        """A new connection's protocol: `inner` (aiohttp's) inside the deadlines and the cap."""
        return Guarded(inner, self)

    def __len__(self) -> int:
        """How many connections are open."""
        return len(self._open)

    def add(self, conn: Guarded) -> None:
        """Register a new connection; if that passes the cap, close the longest-waiting one."""
        assert conn.transport is not None  # noqa: S101 - set by connection_made
        self._open[conn] = None
        self._by_transport[conn.transport] = conn
        if len(self._open) <= self.cap:
            return
        # The new connection is last, so it is chosen only when every other one is busy.
        victim = next(c for c in self._open if not c.busy)
        self.evicted += 1
        victim.abort()
        # abort() closes the socket and reports connection_lost on a later loop turn; forget it
        # now, so that connections accepted in the same burst don't evict a second victim for
        # the same slot. Its descriptor is counted in RESERVED_DESCRIPTORS until then.
        self.remove(victim)

    def remove(self, conn: Guarded) -> None:
        """Forget a connection (idempotent)."""
        self._open.pop(conn, None)
        if conn.transport is not None and self._by_transport.get(conn.transport) is conn:
            del self._by_transport[conn.transport]

    def touch(self, conn: Guarded) -> None:
        """Mark a connection as waiting since now."""
        if conn in self._open:
            self._open.move_to_end(conn)

    @contextmanager
    def busy(self, transport: asyncio.BaseTransport | None) -> Iterator[None]:
        """While a request is handled: its connection has no deadline and can't be evicted."""
        conn = self._by_transport.get(transport) if transport is not None else None
        if conn is None:
            yield
            return
        conn.start_request()
        try:
            yield
        finally:
            conn.end_request()
