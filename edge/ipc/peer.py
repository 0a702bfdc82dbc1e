# SPDX-License-Identifier: Apache-2.0
"""One accepted IPC connection on the core's side: bytes in, events out, answers back.

`Peer` is the asyncio Protocol of one connection. It feeds what arrives to its `Connection`
(`edge.ipc.connection`), answers repeats from its `AnswerCache` (`edge.ipc.answers`), hands a
Hello to the server to judge (`PeerHost`, `edge.ipc.server`) and every request to request
handling (`edge.ipc.dispatch`). It reads no further while the worker doesn't read its answers or
too many of its requests are being handled.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol, cast

from structlog.typing import FilteringBoundLogger

from edge.errors import LocalProtocolError, RemoteProtocolError
from edge.ipc.answers import AnswerCache
from edge.ipc.auth import WorkerIdentity, peer_credentials
from edge.ipc.connection import NEED_DATA, Connection, Role
from edge.ipc.dispatch import Dispatcher
from edge.ipc.events import Goodbye, Hello, Request, Welcome


class PeerHost(Protocol):
    """What a connection asks of the server that accepted it."""

    def admit(self, peer: Peer, fd: int) -> bool:
        """Take in a new connection (True) or refuse it, having closed it (False)."""
        ...

    def judge_hello(self, peer: Peer, hello: Hello) -> bool | None:
        """Welcome (True), refuse (False), or keep the Hello waiting for its worker (None)."""
        ...

    def failed(self, peer: Peer, counter: str, event: str, **fields: Any) -> None:  # noqa: ANN401 - whatever the event carries
        """Count and (rate-limited) log a connection that broke a rule; the peer closes."""
        ...

    def forget(self, peer: Peer) -> None:
        """The connection is gone."""
        ...


class Peer(asyncio.Protocol):
    """One accepted connection; no task of its own.

    The callbacks drive `Connection` directly (`data_received` feeds it and handles every
    complete frame before returning) rather than a task looping on `StreamReader.read`: that
    saves a future and a task wake-up per read, which is most of the loop's own cost (a bare
    echo over uvloop here: ~7 µs of server CPU per round trip against ~16 µs with streams).

    Backpressure: reading pauses while the peer doesn't read our answers (`pause_writing`) or
    while `max_concurrent` of its requests are being handled; unparsed frames then wait in the
    Connection's buffer.

    Args:
        host: The server that accepted it.
        dispatcher: Handles its requests.
        conn_id: A number for its log lines and task names.
        log: The server's logger.
        hello_timeout: Seconds it has to say Hello.
        max_concurrent: Its requests handled at once before it is read no further.
        adopted_for: For a connection handed to one worker (`IpcServer.adopt`): its token's
            digest.
        adopted_pid: For such a connection, the worker's pid, as the manager knows it.
    """

    def __init__(
        self,
        host: PeerHost,
        dispatcher: Dispatcher,
        *,
        conn_id: int,
        log: FilteringBoundLogger,
        hello_timeout: float,
        max_concurrent: int,
        adopted_for: bytes | None = None,
        adopted_pid: int | None = None,
    ) -> None:
        self._host = host
        self._dispatcher = dispatcher
        self.adopted_for = adopted_for
        self.adopted_pid = adopted_pid
        self.conn_id = conn_id
        self.conn = Connection(Role.SERVER)
        self.log = log
        self.identity: WorkerIdentity | None = None
        self.token_digest: bytes | None = None
        self.peer_pid: int | None = None
        self.peer_uid: int | None = None
        #: Requests being handled by tasks (awaitable handler results).
        self.tasks: set[asyncio.Task[None]] = set()
        #: Answers to repeat (`Response.replay`).
        self.answers = AnswerCache(self.conn, dispatcher)
        self._transport: asyncio.Transport | None = None
        self._hello_timeout = hello_timeout
        self._hello_timer: asyncio.TimerHandle | None = None
        self._writes_paused = False
        self._reading_paused = False
        self._max_concurrent = max_concurrent

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Record the kernel's view of the peer and give a stranger a deadline for its Hello."""
        # A stream server's transport (uvloop's doesn't subclass asyncio.Transport).
        self._transport = cast("asyncio.Transport", transport)
        sock = transport.get_extra_info("socket")
        self.peer_pid, self.peer_uid = peer_credentials(sock)
        self.log = self.log.bind(conn=self.conn_id, peer_pid=self.peer_pid, peer_uid=self.peer_uid)
        fd = sock.fileno() if sock is not None else -1
        # A connection the core handed to its own worker (`adopted_for`) has no Hello deadline:
        # its worker says Hello at its first call, which may come long after it started, and
        # the connection can't be made again once closed.
        if self._host.admit(self, fd) and self.adopted_for is None:
            self._hello_timer = asyncio.get_running_loop().call_later(
                self._hello_timeout, self._hello_expired
            )

    def data_received(self, data: bytes) -> None:
        """Answer repeated requests from the cache, feed the rest, handle every whole frame."""
        if len(self.tasks) < self._max_concurrent:
            start = self.answers.answer(data, self._transport, self.log)
            if start == len(data):
                return
            if start:
                data = data[start:]
        self.conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        """The peer closed its end: handle what is buffered, then close ours."""
        self.conn.receive_data(b"")
        self._process()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection and cancel its unfinished requests: nobody will read them."""
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        for task in self.tasks:
            task.cancel()
        self._host.forget(self)
        self.log.debug("ipc.connection.closed", error=exc)

    def pause_writing(self) -> None:
        """The peer isn't reading our answers: stop reading its requests meanwhile."""
        self._writes_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        """The peer caught up."""
        self._writes_paused = False
        self._update_reading()

    # the conversation

    def _process(self) -> None:
        try:
            self._handle_events()
        except RemoteProtocolError as exc:
            self._host.failed(self, "protocol_error", "ipc.protocol.error", problem=exc.problem)
            self.close()
        except Exception:  # our bug: log it, lose this connection, keep serving the others
            self.log.exception("ipc.connection.crashed")
            self.close()
        else:
            if self._reading_paused:
                self._update_reading()

    def _handle_events(self) -> None:
        """Handle complete frames until more bytes are needed or enough requests are running."""
        conn = self.conn
        while len(self.tasks) < self._max_concurrent:
            event = conn.next_event()
            if event is NEED_DATA:
                return
            if isinstance(event, Request):
                identity = self.identity
                if identity is None:  # the protocol refuses a Request before Welcome
                    raise LocalProtocolError("request on an unauthenticated connection")
                self._dispatcher.dispatch(self, identity, event)
            elif isinstance(event, Hello):
                if not self._host.judge_hello(self, event):  # refused or waiting
                    return
            else:  # Goodbye or CLOSED: the peer is done
                self.close()
                return

    @property
    def closing(self) -> bool:
        """Whether the connection is closed or closing."""
        return self._transport is None or self._transport.is_closing()

    def hello_decided(self) -> None:
        """The Hello was judged: its deadline no longer applies."""
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None

    def welcome(self, identity: WorkerIdentity, digest: bytes) -> None:
        """The Hello was accepted: serve this connection as `identity` from now on."""
        self.identity = identity
        self.token_digest = digest
        self.log = self.log.bind(function_arn=identity.function_arn)
        self.write(self.conn.send(Welcome(identity.function_arn)))

    def _hello_expired(self) -> None:
        self._hello_timer = None
        self._host.failed(self, "hello_timeout", "ipc.hello.timeout", seconds=self._hello_timeout)
        self.close()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        pause = self._writes_paused or len(self.tasks) >= self._max_concurrent
        if pause and not self._reading_paused:
            transport.pause_reading()
        elif not pause and self._reading_paused:
            transport.resume_reading()
        self._reading_paused = pause

    def track(self, task: asyncio.Task[None]) -> None:
        """Own a request's task; when it ends, handle frames it held back, if any."""
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        if len(self.tasks) >= self._max_concurrent:
            self._update_reading()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self._transport is not None and not self._transport.is_closing():
            # Frames may wait in the buffer since the limit was reached.
            self._process()

    def write(self, data: bytes) -> None:
        """Send bytes unless the connection is closing."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def close(self, reason: str | None = None) -> None:
        """Say Goodbye if possible, close the connection, cancel this peer's requests."""
        # A revoked or refused peer gets no more answers, remembered ones included.
        self.answers.clear()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if reason is not None:
            # Best effort: a peer that already ended the conversation simply doesn't get it.
            with contextlib.suppress(LocalProtocolError):
                transport.write(self.conn.send(Goodbye(reason)))
        transport.close()  # flushes what is buffered, then connection_lost
        for task in self.tasks:
            task.cancel()
