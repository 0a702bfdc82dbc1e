# SPDX-License-Identifier: Apache-2.0
"""The worker's end of the IPC: a blocking, thread-safe client for the core's Unix socket.

Workers run Greengrass V1 code, which is synchronous and may call the SDK from several threads,
so this client uses plain sockets and locks, never asyncio. It imports only the standard
library, msgpack, `edge.errors` and `edge.ipc.protocol`: a worker must start fast and small
(V1 functions may have 16 MB of memory), and must never load the core's supervisor side.

Calls from several threads are multiplexed over one connection by request id, so a thread
waiting on a slow `lambda.invoke` never holds up another thread's `get_secret_value`. There is
no background thread: the first waiting caller reads the socket for everyone ("leader/
follower") and hands each response to the thread that asked; when its own answer arrives it
passes the reading on to a thread still waiting.

Connection loss: the client connects lazily, and when the connection turns out to be broken it
reconnects once and resends the request if the request certainly did not reach the core (the
send failed, as it does at once on a Unix socket whose server is gone) or if the operation is
idempotent (reading a secret or the list of them). A `lambda.invoke` or `iotdata.publish`
whose connection broke after it was sent is not resent, since it may already have run: the
caller gets `IpcConnectionError`. A client made on a socket the core handed over (a worker of
another user, which can't reach the socket's path) never connects by path: once that socket is
gone, or in a forked child, which doesn't share it, every call raises `IpcConnectionError`.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
import weakref

from edge.errors import (
    FrameTooLargeError,
    IpcCallError,
    IpcConnectionError,
    IpcTimeoutError,
    LocalProtocolError,
    RemoteProtocolError,
)
from edge.ipc.protocol import (
    CLOSED,
    MAX_REQUEST_ID,
    NEED_DATA,
    OP_GET_SECRET_VALUE,
    OP_GET_SECRET_VALUE_V1,
    OP_LIST_SECRETS,
    Connection,
    Goodbye,
    Hello,
    Response,
    Role,
    Welcome,
)

# Annotations only: a worker loads no `typing` (see edge/child/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any, Final, Self

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "IDEMPOTENT_OPS",
    "IpcCallError",
    "IpcClient",
    "IpcConnectionError",
    "IpcTimeoutError",
]

#: Operations that may be sent again after a connection broke with them in flight: running
#: them twice has the same effect as once.
IDEMPOTENT_OPS: Final = frozenset({OP_GET_SECRET_VALUE, OP_GET_SECRET_VALUE_V1, OP_LIST_SECRETS})
#: Seconds allowed for connecting and the Hello/Welcome exchange when a call has no timeout.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
_READ_SIZE = 65536
# MSG_NOSIGNAL: a write to a closed socket must raise EPIPE, not kill a worker whose embedder
# left SIGPIPE at its default action.
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)


class _LinkBrokenError(Exception):
    """Internal: the connection is gone; `sent` says whether the request may have left."""

    def __init__(self, problem: str, *, sent: bool) -> None:
        super().__init__(problem)
        self.problem = problem
        self.sent = sent


class _Link:
    """One live connection and the calls waiting on it; guarded by the client's lock."""

    __slots__ = (
        "broken",
        "conn",
        "function_arn",
        "idle_waiters",
        "next_id",
        "pid",
        "reading",
        "results",
        "sock",
        "waiting",
    )

    def __init__(self, sock: socket.socket, conn: Connection, function_arn: str) -> None:
        self.sock = sock
        self.conn = conn
        self.function_arn = function_arn
        self.pid = os.getpid()
        self.next_id = 1
        #: Request ids whose caller still waits; answers to others (timed out) are dropped.
        self.waiting: set[int] = set()
        self.results: dict[int, Response] = {}
        #: Whether some thread is reading the socket for everyone.
        self.reading = False
        #: Threads blocked on the condition, so the single-threaded path skips notify_all.
        self.idle_waiters = 0
        #: Why the link is unusable, or None while it works.
        self.broken: str | None = None


# Clients alive in this process, so a fork can give the child fresh locks and no connection.
_CLIENTS: weakref.WeakSet[IpcClient] = weakref.WeakSet()


class IpcClient:
    """A blocking client for the core's IPC socket; safe to share between threads.

    Args:
        socket_path: The core's socket (`{state_dir}/ipc/core.sock`).
        token: This worker's token (`AWS_CONTAINER_AUTHORIZATION_TOKEN`). Never put in a
            message or a repr.
        connect_timeout: Seconds for connecting and the handshake, when a call's own timeout
            is shorter or absent this bounds them.
        inherited_fd: A socket already connected to the core, used instead of connecting.
        handed: The core hands this process its connection (`inherited_fd`, if this process
            may use it): never connect by path, which this process can't reach.
    """

    def __init__(
        self,
        socket_path: str,
        token: str,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        inherited_fd: int | None = None,
        handed: bool = False,
    ) -> None:
        self._socket_path = os.fspath(socket_path)
        # A socket already connected to the core (RunAs workers get one at spawn); used for the
        # first connection only: once it breaks there is no path to reconnect through.
        self._inherited_fd = inherited_fd
        self._handed = handed
        self._token = token
        self._connect_timeout = connect_timeout
        self._closed = False
        self._link: _Link | None = None
        self._init_locks()
        _CLIENTS.add(self)

    def _init_locks(self) -> None:
        # One lock guards all state; sending has its own so a thread blocked writing a large
        # frame never stops the reading thread from handing out answers (which could deadlock
        # against a core that is waiting for us to read before it reads again).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._send_lock = threading.Lock()

    def __repr__(self) -> str:
        """Name the socket, never the token."""
        return f"IpcClient(socket_path={self._socket_path!r})"

    @property
    def reconnects(self) -> bool:
        """Whether a broken connection is made again (False: the core handed it over)."""
        return not self._handed

    @property
    def function_arn(self) -> str | None:
        """The function the core identified this worker as, once connected."""
        link = self._link
        return None if link is None else link.function_arn

    def __enter__(self) -> Self:
        """Return the client; `close` it on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the client."""
        self.close()

    def call(self, op: str, args: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Ask the core to perform `op` and wait for its answer.

        Connects (and says Hello) first if there is no live connection. Safe to call from
        several threads at once; their calls share the connection and don't wait for each
        other's answers.

        Args:
            op: An operation name, e.g. `OP_GET_SECRET_VALUE`.
            args: Its arguments (msgpack-able: str, bytes, numbers, bools, None, lists, maps).
            timeout: Seconds to wait for the answer (connecting included); None waits as long
                as it takes.

        Returns:
            The operation's result map.

        Raises:
            IpcCallError: The core answered with an error (`status`, `message` as Greengrass
                V1's `{"Status", "Message"}`), refused this worker's token (403), or the
                request can't be sent: 413 if it is over the frame size limit, 400 if an
                argument can't be encoded.
            IpcTimeoutError: No answer within `timeout` (an IpcCallError with status 408).
            IpcConnectionError: The core can't be reached, or the connection broke and the
                request could not safely be sent again.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        retried = False
        while True:
            try:
                link, request_id, reader = self._send(op, args, deadline, timeout)
                response = self._wait(link, request_id, reader, deadline, timeout)
            except _LinkBrokenError as exc:
                if retried or (exc.sent and op not in IDEMPOTENT_OPS):
                    raise IpcConnectionError(self._socket_path, exc.problem) from None
                retried = True
                continue
            if response.error is None:
                # A successful Response always has a result map (it validates itself).
                return response.result or {}
            raise IpcCallError(response.error["Status"], response.error["Message"])

    def close(self) -> None:
        """Say Goodbye and close the connection; calls waiting on it fail, later calls raise.

        Idempotent.
        """
        with self._lock:
            self._closed = True
            link, self._link = self._link, None
            if link is not None and link.broken is None:
                self._break(link, "the client was closed", goodbye=True)

    # --- connecting ---------------------------------------------------------------------------

    def _relink(self, deadline: float | None, timeout: float | None) -> _Link:
        """Under the lock: replace a missing, broken or inherited (forked) link."""
        if self._closed:
            raise IpcConnectionError(self._socket_path, "the client was closed")
        # Connecting under the lock: threads arriving meanwhile wait for this connection
        # instead of opening their own.
        link = self._connect(deadline, timeout)
        self._link = link
        return link

    def _connect(self, deadline: float | None, timeout: float | None) -> _Link:
        budget = self._connect_timeout
        if deadline is not None:
            budget = min(budget, deadline - time.monotonic())
            if budget <= 0:
                raise IpcTimeoutError(timeout or 0.0)
        fd, self._inherited_fd = self._inherited_fd, None
        if fd is None and self._handed:
            raise IpcConnectionError(
                self._socket_path,
                "the connection the core handed this worker is closed, or belongs to the "
                "process the core started (not to one it forked), and can't be made again",
            )
        if fd is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        else:
            sock = socket.socket(fileno=fd)
        conn = Connection(Role.CLIENT)
        try:
            function_arn = self._handshake(sock, conn, budget)
        except TimeoutError:
            sock.close()
            if deadline is not None and time.monotonic() >= deadline:
                raise IpcTimeoutError(timeout or 0.0) from None
            raise IpcConnectionError(
                self._socket_path, f"no answer within {budget:g} s while connecting"
            ) from None
        except RemoteProtocolError as exc:
            sock.close()
            raise IpcConnectionError(
                self._socket_path, f"the core broke the protocol: {exc.problem}"
            ) from None
        except OSError as exc:
            sock.close()
            raise IpcConnectionError(
                self._socket_path, exc.strerror or type(exc).__name__
            ) from None
        except BaseException:
            sock.close()
            raise
        return _Link(sock, conn, function_arn)

    def _handshake(self, sock: socket.socket, conn: Connection, budget: float) -> str:
        """Connect, say Hello, return the function ARN from the core's Welcome."""
        sock.settimeout(budget)
        if not _is_connected(sock):
            sock.connect(self._socket_path)
        sock.sendall(conn.send(Hello(self._token, os.getpid())), _SEND_FLAGS)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                conn.receive_data(sock.recv(_READ_SIZE))
            elif type(event) is Welcome:
                # From here on the socket blocks: waits with a timeout poll() first, so one
                # thread's timeout never applies to another thread's send.
                sock.settimeout(None)
                return event.function_arn
            elif type(event) is Goodbye:
                # The core refused the token or the process: a 403, as V1's IPC answered.
                raise IpcCallError(403, f"the core refused this worker: {event.reason}")
            else:  # CLOSED
                raise IpcConnectionError(
                    self._socket_path, "the core closed the connection during the handshake"
                )

    # --- one call -----------------------------------------------------------------------------

    def _send(
        self, op: str, args: dict[str, Any], deadline: float | None, timeout: float | None
    ) -> tuple[_Link, int, bool]:
        """Send a request; return its link, its id, and whether this thread is the reader."""
        with self._lock:
            link = self._link
            if link is None or link.broken is not None or (_CHECK_PID and link.pid != os.getpid()):
                link = self._relink(deadline, timeout)
            request_id = link.next_id
            link.next_id = request_id + 1 if request_id < MAX_REQUEST_ID else 1
            try:
                data = link.conn.send_request(request_id, op, args)
            except FrameTooLargeError as exc:
                raise IpcCallError(
                    413, f"the request is {exc.size} bytes, over the {exc.limit}-byte limit"
                ) from None
            except LocalProtocolError as exc:
                raise IpcCallError(400, f"the request can't be sent: {exc.problem}") from None
            link.waiting.add(request_id)
            # Claim the reading now if nobody has it: the common, single-threaded case then
            # goes straight from sending to receiving.
            reader = not link.reading
            if reader:
                link.reading = True
        try:
            with self._send_lock:
                link.sock.sendall(data, _SEND_FLAGS)
        except OSError as exc:
            # Most likely EPIPE: the core went away while we were idle. A frame that did not
            # leave whole can't have been processed.
            with self._lock:
                link.waiting.discard(request_id)
                self._break(link, f"sending failed ({exc.strerror or type(exc).__name__})")
                if reader:
                    self._hand_over_reading(link)
            raise _LinkBrokenError(str(link.broken), sent=False) from None
        return link, request_id, reader

    def _wait(
        self,
        link: _Link,
        request_id: int,
        reader: bool,  # noqa: FBT001 - internal
        deadline: float | None,
        timeout: float | None,
    ) -> Response:
        """Wait for the answer, reading the socket for everyone whenever nobody else does."""
        if not reader:
            with self._lock:
                if not self._wait_as_follower(link, request_id, deadline, timeout):
                    return self._take(link, request_id)
        return self._read_as_leader(link, request_id, deadline, timeout)

    def _wait_as_follower(
        self, link: _Link, request_id: int, deadline: float | None, timeout: float | None
    ) -> bool:
        """Under the lock: sleep while another thread reads; True once we must read ourselves.

        Returns False when our answer has arrived (or the link broke: `_take` raises).
        """
        while request_id not in link.results and link.broken is None:
            if not link.reading:
                link.reading = True
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                link.waiting.discard(request_id)
                raise IpcTimeoutError(timeout or 0.0)
            link.idle_waiters += 1
            try:
                self._cond.wait(remaining)
            finally:
                link.idle_waiters -= 1
        return False

    def _take(self, link: _Link, request_id: int) -> Response:
        """Under the lock: our answer, or the link's failure."""
        link.waiting.discard(request_id)
        response = link.results.pop(request_id, None)
        if response is None:
            raise _LinkBrokenError(str(link.broken), sent=True)
        return response

    def _read_as_leader(
        self, link: _Link, request_id: int, deadline: float | None, timeout: float | None
    ) -> Response:
        """Read for everyone until our answer arrives (or the link breaks: then raise).

        Leaves the reading to another waiting thread on the way out, whatever happens.
        """
        sock = link.sock
        try:
            while True:
                problem = "the core closed the connection"
                try:
                    if deadline is not None and not _readable(sock, deadline - time.monotonic()):
                        with self._lock:
                            link.waiting.discard(request_id)
                        raise IpcTimeoutError(timeout or 0.0)
                    data = sock.recv(_READ_SIZE)
                except (OSError, ValueError) as exc:
                    # ValueError: close() in another thread already released the descriptor.
                    data = b""
                    problem = f"receiving failed ({getattr(exc, 'strerror', None) or exc})"
                with self._lock:
                    # Nearly always the read is exactly the answer this thread waits for.
                    response = link.conn.receive_response(data) if link.broken is None else None
                    if response is not None:
                        if response.request_id == request_id:
                            link.waiting.discard(request_id)
                            self._hand_over_reading(link)
                            return response
                        self._hand_out(link, response)
                        continue
                    self._absorb(link, data, problem)
                    if request_id in link.results or link.broken is not None:
                        self._hand_over_reading(link)
                        return self._take(link, request_id)
        except BaseException:
            with self._lock:
                if link.reading:
                    self._hand_over_reading(link)
            raise

    def _hand_over_reading(self, link: _Link) -> None:
        """Under the lock: stop reading and wake a waiting thread to take over."""
        link.reading = False
        if link.idle_waiters:
            self._cond.notify_all()

    def _absorb(self, link: _Link, data: bytes, eof_problem: str) -> None:
        """Under the lock: feed bytes to the protocol and hand each answer to its caller."""
        if link.broken is not None:
            return
        conn = link.conn
        handed_out = False
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                if type(event) is Response:
                    if event.request_id in link.waiting:
                        link.results[event.request_id] = event
                        handed_out = True
                    # else: its caller timed out and left; nobody wants it
                elif type(event) is Goodbye:
                    self._break(link, f"the core closed the connection: {event.reason}")
                    break
                elif event is CLOSED:
                    self._break(link, eof_problem)
                    break
        except RemoteProtocolError as exc:
            self._break(link, f"the core broke the protocol: {exc.problem}")
        if handed_out and link.idle_waiters:
            self._cond.notify_all()

    def _hand_out(self, link: _Link, response: Response) -> None:
        """Under the lock: give another thread's answer to it (or drop it if it left)."""
        if response.request_id in link.waiting:
            link.results[response.request_id] = response
            if link.idle_waiters:
                self._cond.notify_all()

    def _break(self, link: _Link, problem: str, *, goodbye: bool = False) -> None:
        """Under the lock: mark the link unusable, wake its waiters, release the socket."""
        if link.broken is None:
            link.broken = problem
        # Best effort, and never waiting for the send lock: its holder may be blocked writing
        # to a core that waits for us to read, and we hold the lock the reader needs.
        if goodbye and self._send_lock.acquire(blocking=False):
            try:
                link.sock.sendall(
                    link.conn.send(Goodbye("the worker closed its client")), _SEND_FLAGS
                )
            except (OSError, LocalProtocolError):
                pass  # the core is gone already; nothing to tell it
            finally:
                self._send_lock.release()
        # shutdown() wakes a thread blocked in recv() on this socket (close() alone doesn't).
        with contextlib.suppress(OSError):
            link.sock.shutdown(socket.SHUT_RDWR)
        link.sock.close()
        if link.idle_waiters:
            self._cond.notify_all()


def _readable(sock: socket.socket, seconds: float) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    # poll's timeout is in ms; round up so a short remaining time still waits a little.
    return bool(poller.poll(max(1, int(seconds * 1000 + 0.999))))


def _after_fork_in_child() -> None:
    # The parent's locks may have been held by threads that don't exist in the child, and its
    # connection belongs to the parent: the child starts clean and reconnects when it calls. So
    # does a socket the core handed the parent and it hasn't used yet: two processes writing
    # one stream would garble each other's frames.
    for client in list(_CLIENTS):
        client._init_locks()  # noqa: SLF001 - module-private cooperation
        client._link = None  # noqa: SLF001
        client._inherited_fd = None  # noqa: SLF001


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
# Where the fork hook resets clients in a child, calls needn't ask for their pid (a system call
# per request) to notice they were forked.
_CHECK_PID = not hasattr(os, "register_at_fork")


def _is_connected(sock: socket.socket) -> bool:
    """Whether the socket already has a peer (an inherited socketpair end)."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return True
