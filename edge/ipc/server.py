# SPDX-License-Identifier: Apache-2.0
"""The core's end of the worker IPC: an asyncio Unix-socket server that knows who is calling.

This is the only IPC code on the core's side that touches a socket; the bytes are interpreted
by `edge.ipc.protocol.Connection`. Each connection must open with a `Hello` carrying a token the
process manager registered for one worker. The token says which function the caller claims to
be; `SO_PEERCRED` (the kernel's word, not the peer's) then has to agree: the same uid, and a pid
that is the worker's or one of its descendants. Only then is the connection welcomed and its
requests passed to the handler, with the caller's `WorkerIdentity`.

A peer that misbehaves (garbage, an oversized frame, a wrong token, silence where a Hello
belongs) costs its own connection and, at most every few seconds, a log line that counts the
others; every other connection keeps being served. What strangers can hold is bounded: a small
frame and a few seconds before login, a few dozen such connections at once, and a reserve of
file descriptors kept for the core's own work. A worker that logged in may keep its connections
for life (pinned functions do), but only a few of them.

Handlers answer from memory, so the fast path is synchronous: a handler may return a `Response`
directly (answered before the next frame is read, with no task created) or an awaitable (run as
a task of its own, so a slow `lambda.invoke` never holds up a `get_secret_value`, on this
connection or any other; answers carry their request id and may go out of order).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import hashlib
import itertools
import os
import socket
import stat
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol, Self, cast

from structlog.typing import FilteringBoundLogger

from edge.errors import FrameTooLargeError, IpcServerError, LocalProtocolError, RemoteProtocolError
from edge.ipc.limits import DescriptorBudget, LogThrottle
from edge.ipc.protocol import (
    HEADER_SIZE,
    KNOWN_OPS,
    NEED_DATA,
    REQUEST_HEAD,
    Connection,
    Goodbye,
    Hello,
    Request,
    Response,
    Role,
    State,
    Welcome,
    request_id_end,
    response_frame,
)
from edge.log import get_logger

#: Mode of the socket's directory and of the socket: only the core's user may connect. The
#: directory is what really keeps others out (a socket's own mode is ignored by some systems).
SOCKET_DIR_MODE: Final = 0o700
SOCKET_MODE: Final = 0o600
#: A connection must say Hello this soon or be closed, so idle strangers hold nothing.
HELLO_TIMEOUT_SECONDS: Final = 5.0
#: Connections that have not logged in yet, at most. A worker says Hello the moment it connects
#: and is judged within the same read, so even a core starting many workers at once has a few
#: waiting; more are someone holding the socket. Past it, the oldest is closed, not the new
#: one: a flood that refused newcomers would lock every worker out for as long as it went on,
#: while one that evicts can only race a worker's Hello, which is already on its way.
MAX_UNAUTHENTICATED_CONNECTIONS: Final = 64
#: Logged-in connections one worker's token may hold at once. A worker needs one (its client
#: multiplexes every thread over it), a few more if it forks or runs several clients: 16 is
#: plenty, and keeps a function from taking the core's descriptors with its own token.
MAX_CONNECTIONS_PER_WORKER: Final = 16
#: File descriptors kept free below the core's limit for its own work (a deployment's files,
#: the store, MQTT, workers' pipes; a deployment of a few functions needs a few dozen): when
#: a new connection would leave fewer, it is refused.
DESCRIPTOR_RESERVE: Final = 128
#: Seconds between two warnings of the same event about refused or failed connections; those
#: in between are counted in the next line (see `LogThrottle`).
REFUSED_LOG_INTERVAL_SECONDS: Final = 10.0
#: Requests of one connection being handled at once; past it the server stops reading that
#: connection until one finishes (backpressure instead of an unbounded pile of tasks).
MAX_CONCURRENT_REQUESTS: Final = 64
#: How far up the process tree a peer may be from the worker it claims to be (a worker's shell
#: script starting Python is 1-2 levels; the bound keeps a /proc walk short whatever happens).
MAX_ANCESTRY_DEPTH: Final = 32
#: Longest socket path Linux accepts: sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES: Final = 107
#: What a refused peer is told: the same for every cause, so probing learns nothing.
REFUSED_REASON: Final = "the core refused this worker's credentials"
SHUTDOWN_REASON: Final = "the core is shutting down"
REVOKED_REASON: Final = "this worker's token was revoked"
TOO_MANY_REASON: Final = (
    f"this worker already holds {MAX_CONNECTIONS_PER_WORKER} connections to the core, the most "
    "one worker may; share one client between threads instead of opening more"
)
EVICTED_REASON: Final = (
    "too many connections to the core have not logged in; this one waited longest "
    "(send the Hello as soon as you connect)"
)
DESCRIPTORS_REASON: Final = "the core is short of file descriptors; try again later"
# How long shutdown waits for cancelled connection tasks to unwind.
_SHUTDOWN_GRACE_SECONDS = 5.0
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
#: Upper bounds of the request latency histogram (`IpcServer.latency`), in seconds: answers
#: from memory take tens of microseconds, invocations up to a function's Timeout.
LATENCY_BOUNDS_SECONDS: Final = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.01,
    0.1,
    1.0,
    10.0,
    60.0,
)
_LATENCY_BOUNDS_NS: Final = tuple(int(b * 1e9) for b in LATENCY_BOUNDS_SECONDS)
#: Distinct requests a connection remembers the answer of (`Response.replay`): a worker asks
#: for its few secrets over and over. Emptied when full, so a worker cycling through more
#: requests than this only loses the shortcut.
MAX_REPEATS: Final = 64
#: Longest request (op and args, packed) whose answer is remembered; the answers themselves
#: are the handler's own bytes, shared, not copies.
MAX_REPEAT_KEY_BYTES: Final = 1024
# A repeated answer's frame around its packed result: the map's keys and fixed values (~40
# bytes) and the longest packed id (9), rounded up; larger answers are not remembered.
_REPEAT_FRAME_OVERHEAD = 64
_ID_START = HEADER_SIZE + len(REQUEST_HEAD)
_now_ns = time.perf_counter_ns
_bucket = bisect.bisect_left


class LatencyHistogram:
    """Request latencies of one operation: counts per `LATENCY_BOUNDS_SECONDS` bucket."""

    __slots__ = ("count", "counts", "total_ns")

    def __init__(self) -> None:
        self.count = 0
        self.total_ns = 0
        #: Per bucket (not cumulative); the last one counts what is over the largest bound.
        self.counts = [0] * (len(_LATENCY_BOUNDS_NS) + 1)

    def observe(self, nanoseconds: int) -> None:
        """Count one request that took `nanoseconds`."""
        self.count += 1
        self.total_ns += nanoseconds
        self.counts[bisect.bisect_left(_LATENCY_BOUNDS_NS, nanoseconds)] += 1


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Who a token belongs to, and what the kernel must confirm about whoever presents it.

    Attributes:
        function_arn: The (qualified) ARN of the function the worker runs.
        uid: If set, the connecting process's uid (`SO_PEERCRED`) must be exactly this.
        pid: If set, the connecting process must be this process or one of its descendants.
        pid_pending: The worker is being started and its pid is not known yet: a Hello with
            this token waits (within the Hello timeout) until the identity is registered again
            with the pid, and is judged against that. Without it, any process of the same uid
            that read the token (from /proc/<pid>/environ, say) could get in first.
        adopted_only: Accept the token only on the connection `adopt` was given for it (a
            worker running as another user, whose socketpair's peer credentials name the core):
            another worker of that user can't use a stolen token on its own connection.
    """

    function_arn: str
    uid: int | None = None
    pid: int | None = None
    pid_pending: bool = False
    adopted_only: bool = False


class RequestHandler(Protocol):
    """Answers one request of an authenticated worker.

    Return a `Response` when the answer is known at once (in-memory lookups: the fast path,
    no task is created) or an awaitable of one for work that waits (an invocation). Either way
    the response must carry the request's id; use `Response.success` / `Response.failure`.
    An exception becomes a status 500 answer and an `ipc.handler.failed` log event.

    A synchronous answer may carry `Response.replay`: the connection then answers requests
    with the same bytes (but for the id) from a cache, calling `replay()` instead of the
    handler, until `replay()` returns False. The handler is then asked again. A handler with
    an `on_change(callback)` method is given a callback that drops those caches at once.
    """

    def __call__(
        self, identity: WorkerIdentity, request: Request, /
    ) -> Response | Awaitable[Response]:
        """Answer `request` from `identity`."""
        ...


class IpcServer:
    """Serves worker requests on a Unix socket; an async context manager that owns its tasks.

    Entering creates the socket's directory (0700, tightened if looser), replaces a stale socket
    file (refusing to steal one a live server still listens on), listens, and makes the socket
    0600. Exiting stops listening, removes the socket file, says Goodbye to every connection and
    cancels their in-flight requests; the file is removed even when exit is cancelled. Reusable
    (enter again after exit), not re-entrant.

    Args:
        socket_path: Where to listen, e.g. `{state_dir}/ipc/core.sock`; at most 107 bytes.
        handler: Answers authenticated requests (see `RequestHandler`).
        logger: Structlog logger; defaults to the `ipc` component logger.
        max_concurrent_requests: Requests of one connection handled at once before the server
            stops reading from it.
        hello_timeout: Seconds a new connection has to send its Hello.

    Attributes:
        requests: Answered requests by (op, outcome), outcome "ok" or the error status as text;
            ops the core doesn't know are counted as "unknown". For Prometheus export.
        connections: Connection events: "accepted", "authenticated", "refused",
            "protocol_error", "hello_timeout", "revoked", and the limits' refusals:
            "refused_descriptors" (the descriptor reserve), "evicted" (the oldest of too many
            connections not logged in), "refused_per_worker" (a worker's connection cap).
        latency: Per operation (as in `requests`), how long answers took from the request's
            frame being parsed to the answer being handed to the transport.
    """

    def __init__(
        self,
        *,
        socket_path: Path,
        handler: RequestHandler,
        logger: FilteringBoundLogger | None = None,
        max_concurrent_requests: int = MAX_CONCURRENT_REQUESTS,
        hello_timeout: float = HELLO_TIMEOUT_SECONDS,
    ) -> None:
        self._socket_path = Path(socket_path)
        self._handler = handler
        self._log = logger or get_logger("ipc")
        self._max_concurrent = max_concurrent_requests
        self._hello_timeout = hello_timeout
        # sha256(token) -> identity. Looking up a digest leaks nothing useful through timing:
        # a caller can't steer the digest of its guess toward a registered one (the same
        # reason hmac.compare_digest exists), and the table never holds a token itself.
        self._identities: dict[bytes, WorkerIdentity] = {}
        # Hellos waiting for their worker's pid (see WorkerIdentity.pid_pending), by digest.
        self._parked: dict[bytes, list[tuple[_PeerProtocol, Hello]]] = {}
        self._peers: set[_PeerProtocol] = set()
        # Connections not logged in yet, oldest first (a dict keeps insertion order).
        self._unwelcomed: dict[_PeerProtocol, None] = {}
        # Logged-in connections per token digest.
        self._welcomed: Counter[bytes] = Counter()
        self._descriptors = DescriptorBudget(reserve=DESCRIPTOR_RESERVE)
        self._throttle = LogThrottle(logger=self._log, interval=REFUSED_LOG_INTERVAL_SECONDS)
        self._server: asyncio.AbstractServer | None = None
        self._socket_id: tuple[int, int] | None = None
        self._ids = itertools.count(1)
        self.requests: Counter[tuple[str, str]] = Counter()
        self.connections: Counter[str] = Counter()
        self.latency: dict[str, LatencyHistogram] = {}
        #: Whether to fill `latency` (two clock reads and a bucket per request: only when
        #: something exports it).
        self.measure_latency = False
        # A handler that can say when its answers change (CoreServices: every deployment and
        # refresh) gets the remembered answers dropped at once, so no connection keeps an old
        # secret value in memory until its next request; `replay()` checks again anyway.
        on_change = getattr(handler, "on_change", None)
        if callable(on_change):
            on_change(self.drop_repeats)

    @property
    def socket_path(self) -> Path:
        """Where the server listens."""
        return self._socket_path

    @property
    def active_connections(self) -> int:
        """Connections currently open (authenticated or not yet)."""
        return len(self._peers)

    # --- identities ---------------------------------------------------------------------------

    def register(self, token: str, identity: WorkerIdentity) -> None:
        """Accept `token` from now on as proof of `identity` (replacing an earlier binding).

        Args:
            token: The worker's secret token (never logged or stored in clear).
            identity: The function it stands for and the peer credentials it requires.
        """
        digest = _digest(token)
        self._identities[digest] = identity
        if not identity.pid_pending:
            for peer, hello in self._parked.pop(digest, ()):
                if not peer.closing:
                    self._welcome(peer, hello)

    def revoke(self, token: str) -> None:
        """Stop accepting `token`, and close the connections that were opened with it.

        Their requests in flight are cancelled: nothing more is answered to a stopped worker
        or anything it left behind. Revoking an unknown token does nothing.
        """
        digest = _digest(token)
        self._identities.pop(digest, None)
        waiting = [peer for peer, _hello in self._parked.pop(digest, ())]
        for peer in [p for p in self._peers if p.token_digest == digest] + waiting:
            self.connections["revoked"] += 1
            peer.log.info("ipc.connection.revoked")
            peer.close(REVOKED_REASON)

    def drop_repeats(self) -> None:
        """Forget every connection's remembered answers (see `Response.replay`)."""
        for peer in self._peers:
            peer.repeats.clear()

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Prepare the directory, clear a stale socket, listen, restrict the socket to 0600.

        Raises:
            IpcServerError: The path is too long, the directory is not ours or not a
                directory, something other than a socket is in the way, or another live
                server already listens on the path.
            RuntimeError: The server is already running.
        """
        if self._server is not None:
            raise RuntimeError("IpcServer is already running; it is not re-entrant")
        path = self._socket_path
        if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
            raise IpcServerError(
                str(path),
                f"the path is longer than the {MAX_SOCKET_PATH_BYTES} bytes a Unix socket "
                f"allows; use a shorter [core] state_dir",
            )
        self._prepare_directory(path.parent)
        self._clear_stale_socket(path)
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: _PeerProtocol(self), path=os.fspath(path))
        try:
            # Between bind and chmod the socket has the umask's mode, but its directory is 0700
            # already, so nobody else can reach it in that window.
            os.chmod(path, SOCKET_MODE)
            info = os.lstat(path)
        except BaseException:
            server.close()
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._server = server
        self._socket_id = (info.st_dev, info.st_ino)
        self._descriptors.start(len(self._peers))
        self._log.info(
            "ipc.listening", socket=str(path), descriptor_ceiling=self._descriptors.ceiling
        )
        return self

    async def adopt(self, sock: socket.socket, token: str) -> None:
        """Serve a connected socket whose other end was handed to the worker owning `token`.

        Workers that run as another user (RunAs) can't enter the 0700 socket directory, so the
        manager gives them one end of a socketpair instead. The worker still has to say Hello
        with its token, and only that token is accepted on this connection. `SO_PEERCRED` of
        a socketpair names the core itself, so register such a worker's identity without uid
        or pid and with `adopted_only`.
        """
        loop = asyncio.get_running_loop()
        digest = _digest(token)
        await loop.connect_accepted_socket(
            lambda: _PeerProtocol(self, adopted_for=digest), sock=sock
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop listening, remove the socket file, close every connection, wait for them."""
        await self._shutdown()

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        # Everything that must happen is synchronous and comes first, so a cancellation
        # arriving while we wait below can't leave the socket file behind or a peer served.
        server.close()
        self._remove_socket_file()
        tasks: list[asyncio.Task[None]] = []
        for peer in list(self._peers):
            tasks.extend(peer.tasks)
            peer.close(SHUTDOWN_REASON)
        self._peers.clear()
        self._unwelcomed.clear()
        self._welcomed.clear()
        self._throttle.flush()
        self._log.info("ipc.stopped", socket=str(self._socket_path))
        if tasks:
            # Shielded: a second cancellation must not abandon tasks mid-unwind; they were all
            # cancelled above and finish promptly. The wait itself is bounded.
            waiting = asyncio.ensure_future(asyncio.wait(tasks, timeout=_SHUTDOWN_GRACE_SECONDS))
            await asyncio.shield(waiting)
        await server.wait_closed()

    def _prepare_directory(self, directory: Path) -> None:
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=SOCKET_DIR_MODE)
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode):
            raise IpcServerError(
                str(self._socket_path),
                f"{directory} is not a directory (a symlink or a file?); remove it",
            )
        if info.st_uid != os.geteuid():
            raise IpcServerError(
                str(self._socket_path),
                f"{directory} belongs to uid {info.st_uid}, not to the core's uid "
                f"{os.geteuid()}; remove it or give it to the core's user",
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode != SOCKET_DIR_MODE:
            # Ours, so fix it rather than refuse: a looser mode only means some earlier tool
            # (or umask) created it, and the socket it holds is about to be replaced anyway.
            os.chmod(directory, SOCKET_DIR_MODE)
            self._log.warning(
                "ipc.socket_dir.mode_fixed", directory=str(directory), was=f"{mode:04o}"
            )

    def _clear_stale_socket(self, path: Path) -> None:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise IpcServerError(str(path), "something other than a socket is there; move it")
        # A socket file outlives the process that made it. Connecting tells a leftover (refused)
        # from a core that is still running (accepted), whose socket we must not take over.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(os.fspath(path))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise IpcServerError(str(path), f"can't probe the old socket: {exc}") from exc
        else:
            raise IpcServerError(str(path), "another core is listening on it; stop that one first")
        finally:
            probe.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._log.info("ipc.socket.stale_removed", socket=str(path))

    def _remove_socket_file(self) -> None:
        # Only our own socket: if another server replaced it meanwhile, that file is not ours.
        try:
            info = os.lstat(self._socket_path)
            if (info.st_dev, info.st_ino) == self._socket_id:
                self._socket_path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._log.warning("ipc.socket.remove_failed", socket=str(self._socket_path), error=exc)
        self._socket_id = None

    # --- serving (called by the connections) -------------------------------------------------

    def _connection_made(self, peer: _PeerProtocol, fd: int) -> bool:
        """Admit a new connection (True), or refuse it at once: descriptors run short (False).

        Connections the core handed over itself (`adopt`) are its own workers': always in.
        """
        self.connections["accepted"] += 1
        if peer.adopted_for is None:
            if self._descriptors.short(fd, len(self._peers)):
                self.connections["refused_descriptors"] += 1
                self._throttle.warning(
                    "ipc.refused.descriptor_reserve",
                    peer.log,
                    ceiling=self._descriptors.ceiling,
                    connections=len(self._peers),
                )
                peer.close(DESCRIPTORS_REASON)
                return False
            if len(self._unwelcomed) >= MAX_UNAUTHENTICATED_CONNECTIONS:
                oldest = next(iter(self._unwelcomed))
                del self._unwelcomed[oldest]
                self.connections["evicted"] += 1
                self._throttle.warning(
                    "ipc.refused.too_many_unauthenticated",
                    oldest.log,
                    limit=MAX_UNAUTHENTICATED_CONNECTIONS,
                )
                oldest.close(EVICTED_REASON)
            self._unwelcomed[peer] = None
        self._peers.add(peer)
        return True

    def _connection_lost(self, peer: _PeerProtocol) -> None:
        self._peers.discard(peer)
        self._unwelcomed.pop(peer, None)
        digest = peer.token_digest
        if digest is not None:
            left = self._welcomed.get(digest, 0) - 1
            if left > 0:
                self._welcomed[digest] = left
            else:  # also after a shutdown, which forgot them all
                self._welcomed.pop(digest, None)

    def _warn(
        self, event: str, peer: _PeerProtocol, *, key: str | None = None, **fields: object
    ) -> None:
        """Log a refused or failed connection, at most every few seconds per event (and key)."""
        self._throttle.warning(event, peer.log, key=key, **fields)

    def _welcome(self, peer: _PeerProtocol, hello: Hello) -> bool | None:
        """Judge a Hello: Welcome (True), refuse (False), or wait for the worker's pid (None)."""
        digest = _digest(hello.token)
        identity = self._identities.get(digest)
        if identity is not None and identity.pid_pending and peer.adopted_for is None:
            # A worker being started: its token is known, so a flood of strangers must not
            # evict it while its pid is on the way (the Hello timeout still bounds the wait).
            self._unwelcomed.pop(peer, None)
            self._parked.setdefault(digest, []).append((peer, hello))
            return None
        peer.hello_decided()
        self._unwelcomed.pop(peer, None)
        problem = _identity_problem(identity, peer, digest)
        if identity is None or problem is not None:
            self.connections["refused"] += 1
            # Each kind of refusal has its own window: a flood of wrong tokens must not hide
            # the one line about a token presented by the wrong process.
            self._warn(
                "ipc.auth.refused",
                peer,
                key=problem,
                problem=problem,
                claimed_pid=hello.pid,
                function_arn=identity.function_arn if identity else None,
            )
            peer.close(REFUSED_REASON)
            return False
        if self._welcomed[digest] >= MAX_CONNECTIONS_PER_WORKER:
            self.connections["refused_per_worker"] += 1
            self._warn(
                "ipc.refused.too_many_for_worker",
                peer,
                function_arn=identity.function_arn,
                limit=MAX_CONNECTIONS_PER_WORKER,
            )
            peer.close(TOO_MANY_REASON)
            return False
        self._welcomed[digest] += 1
        peer.identity = identity
        peer.token_digest = digest
        peer.log = peer.log.bind(function_arn=identity.function_arn)
        peer.write(peer.conn.send(Welcome(identity.function_arn)))
        self.connections["authenticated"] += 1
        peer.log.debug("ipc.connection.authenticated")
        return True

    def _dispatch(self, peer: _PeerProtocol, identity: WorkerIdentity, request: Request) -> None:
        """Answer a request now (synchronous handler result) or from a task of its own."""
        started = _now_ns() if self.measure_latency else 0
        if request.op not in KNOWN_OPS:
            failure = Response.failure(request.request_id, 400, "unknown operation")
            self._respond(peer, request, failure, started)
            return
        try:
            answer = self._handler(identity, request)
        except Exception:
            peer.log.exception("ipc.handler.failed", op=request.op)
            answer = _internal_error(request)
        if isinstance(answer, Response):
            if self._respond(peer, request, answer, started) and answer.replay is not None:
                peer.remember(request.op, answer.packed_result, answer.replay)
            return
        task = asyncio.ensure_future(self._finish(peer, request, answer, started))
        task.set_name(f"ipc-request-{peer.conn_id}-{request.request_id}")
        peer.track(task)

    async def _finish(
        self, peer: _PeerProtocol, request: Request, answer: Awaitable[Response], started: int
    ) -> None:
        try:
            response = await answer
        except Exception:
            peer.log.exception("ipc.handler.failed", op=request.op)
            response = _internal_error(request)
        self._respond(peer, request, response, started)

    def _respond(
        self, peer: _PeerProtocol, request: Request, response: Response, started: int
    ) -> bool:
        """Send the answer, count it; whether `response` itself went out (not a substitute)."""
        if type(response) is not Response or response.request_id != request.request_id:
            peer.log.error("ipc.handler.bad_response", op=request.op)
            response = _internal_error(request)
        conn = peer.conn
        if conn.state is not State.OPEN:
            return False  # the connection ended while the handler ran: nobody to answer
        given = response
        try:
            data = conn.send(response)
        except FrameTooLargeError as exc:
            peer.log.warning("ipc.response.too_large", op=request.op, size=exc.size)
            response = Response.failure(
                request.request_id,
                413,
                f"the answer is {exc.size} bytes, over the {exc.limit}-byte IPC frame limit",
            )
            data = conn.send(response)
        except LocalProtocolError as exc:
            peer.log.exception("ipc.response.unencodable", op=request.op, problem=exc.problem)
            response = _internal_error(request)
            data = conn.send(response)
        op = request.op if request.op in KNOWN_OPS else "unknown"
        outcome = "ok" if response.error is None else str(response.error["Status"])
        self.requests[op, outcome] += 1
        peer.write(data)
        if started:
            self._observe(op, started)
        return response is given

    def _observe(self, op: str, started: int) -> None:
        """Count a request's latency, from `started` (`perf_counter_ns`) until now."""
        elapsed = _now_ns() - started
        histogram = self.latency.get(op)
        if histogram is None:
            histogram = self.latency[op] = LatencyHistogram()
        # LatencyHistogram.observe, inlined: this runs for every request.
        histogram.count += 1
        histogram.total_ns += elapsed
        histogram.counts[_bucket(_LATENCY_BOUNDS_NS, elapsed)] += 1


class _PeerProtocol(asyncio.Protocol):
    """One accepted connection: bytes in, events out, answers back; no task of its own.

    The callbacks drive `Connection` directly (`data_received` feeds it and handles every
    complete frame before returning) rather than a task looping on `StreamReader.read`: that
    saves a future and a task wake-up per read, which is most of the loop's own cost (a bare
    echo over uvloop here: ~7 µs of server CPU per round trip against ~16 µs with streams;
    this server went from ~23 to ~17 µs per request in bench/ipc.py).

    Backpressure: reading pauses while the peer doesn't read our answers (`pause_writing`) or
    while `max_concurrent` of its requests are being handled; unparsed frames then wait in the
    Connection's buffer.
    """

    def __init__(self, server: IpcServer, *, adopted_for: bytes | None = None) -> None:
        self._server = server
        #: For a connection handed to one worker (`IpcServer.adopt`): its token's digest.
        self.adopted_for = adopted_for
        self.conn_id = next(server._ids)  # noqa: SLF001 - the server's own helper
        self.conn = Connection(Role.SERVER)
        self.log = server._log  # noqa: SLF001
        self.identity: WorkerIdentity | None = None
        self.token_digest: bytes | None = None
        self.peer_pid: int | None = None
        self.peer_uid: int | None = None
        #: Requests being handled by tasks (awaitable handler results).
        self.tasks: set[asyncio.Task[None]] = set()
        #: Answers to repeat (`Response.replay`): a request's op and args as packed (its frame
        #: after the id) -> (op, the answer's packed result, its replay).
        self.repeats: dict[bytes, tuple[str, bytes, Callable[[], bool]]] = {}
        self._transport: asyncio.Transport | None = None
        self._hello_timer: asyncio.TimerHandle | None = None
        self._writes_paused = False
        self._reading_paused = False
        self._max_concurrent = server._max_concurrent  # noqa: SLF001

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Record the kernel's view of the peer and give it a deadline for its Hello."""
        # A stream server's transport (uvloop's doesn't subclass asyncio.Transport).
        self._transport = cast("asyncio.Transport", transport)
        sock = transport.get_extra_info("socket")
        self.peer_pid, self.peer_uid = _peer_credentials(sock)
        self.log = self.log.bind(conn=self.conn_id, peer_pid=self.peer_pid, peer_uid=self.peer_uid)
        fd = sock.fileno() if sock is not None else -1
        if self._server._connection_made(self, fd):  # noqa: SLF001
            self._hello_timer = asyncio.get_running_loop().call_later(
                self._server._hello_timeout,  # noqa: SLF001
                self._hello_expired,
            )

    def data_received(self, data: bytes) -> None:
        """Answer repeated requests from the cache, feed the rest, handle every whole frame."""
        if self.repeats and len(self.tasks) < self._max_concurrent:
            start = self._answer_repeats(data)
            if start == len(data):
                return
            if start:
                data = data[start:]
        self.conn.receive_data(data)
        self._process()

    def _answer_repeats(self, data: bytes) -> int:
        """Answer the frames at the front of `data` that repeat a remembered request.

        The shortcut of this connection's sync path: no decoding, no Request or Response, no
        handler; the answer frame is spliced from the request's own id bytes and the answer's
        packed result. `replay()` counts the read as the handler would (audit, staleness) and
        says whether the answer still holds (a deployment or refresh swapped the handler's
        index: then every remembered answer goes). Returns how many bytes were answered.
        """
        conn = self.conn
        repeats = self.repeats
        server = self._server
        transport = self._transport
        start = 0
        size = len(data)
        while start < size:
            found = conn.peek_request(data, start)
            if found is None:
                return start
            id_end, end = found
            entry = repeats.get(data[id_end:end])
            if entry is None:
                return start
            started = _now_ns() if server.measure_latency else 0
            op, packed, replay = entry
            try:
                holds = replay()
            except Exception:  # the handler's bug: log it; the general path answers (or 500s)
                self.log.exception("ipc.replay.failed", op=op)
                holds = False
            if not holds:
                repeats.clear()
                return start
            if transport is not None and not transport.is_closing():
                transport.write(response_frame(data[start + _ID_START : id_end], packed))
            server.requests[op, "ok"] += 1
            if started:
                server._observe(op, started)  # noqa: SLF001
            start = end
        return start

    def remember(self, op: str, packed_result: bytes | None, replay: Callable[[], bool]) -> None:
        """Keep the answer just sent, for the request `conn` returned last, to repeat it."""
        conn = self.conn
        payload = conn.last_payload
        id_end = request_id_end(payload)
        if (
            packed_result is None
            or id_end < 0
            or len(payload) - id_end > MAX_REPEAT_KEY_BYTES
            or len(packed_result) + _REPEAT_FRAME_OVERHEAD > conn.max_frame_size
        ):
            return
        if len(self.repeats) >= MAX_REPEATS:
            self.repeats.clear()
        self.repeats[bytes(payload[id_end:])] = (op, packed_result, replay)

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
        self._server._connection_lost(self)  # noqa: SLF001
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
            self._server.connections["protocol_error"] += 1
            self._server._warn("ipc.protocol.error", self, problem=exc.problem)  # noqa: SLF001
            self.close()
        except Exception:  # our bug: log it, lose this connection, keep serving the others
            self.log.exception("ipc.connection.crashed")
            self.close()
        else:
            if self._reading_paused:
                self._update_reading()

    def _handle_events(self) -> None:
        """Handle complete frames until more bytes are needed or enough requests are running."""
        server = self._server
        conn = self.conn
        while len(self.tasks) < self._max_concurrent:
            event = conn.next_event()
            if event is NEED_DATA:
                return
            if isinstance(event, Request):
                identity = self.identity
                if identity is None:  # the protocol refuses a Request before Welcome
                    raise LocalProtocolError("request on an unauthenticated connection")
                server._dispatch(self, identity, event)  # noqa: SLF001
            elif isinstance(event, Hello):
                if not server._welcome(self, event):  # noqa: SLF001 - refused or waiting
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

    def _hello_expired(self) -> None:
        self._hello_timer = None
        self._server.connections["hello_timeout"] += 1
        seconds = self._server._hello_timeout  # noqa: SLF001
        self._server._warn("ipc.hello.timeout", self, seconds=seconds)  # noqa: SLF001
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
        self.repeats.clear()
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


def _internal_error(request: Request) -> Response:
    return Response.failure(request.request_id, 500, "the core failed to handle the request")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _peer_credentials(sock: socket.socket | None) -> tuple[int | None, int | None]:
    """Return (pid, uid) of the process that connected, from the kernel, or Nones."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None, None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None, None
    pid, uid, _gid = _PEERCRED.unpack(raw)
    return pid, uid


def _identity_problem(
    identity: WorkerIdentity | None, peer: _PeerProtocol, digest: bytes
) -> str | None:
    """Say why this peer may not present this token, or None if it may."""
    if identity is None:
        return "unknown or revoked token"
    if peer.adopted_for is not None and peer.adopted_for != digest:
        return "another worker's token on a handed-over connection"
    if identity.adopted_only and peer.adopted_for != digest:
        return "this worker's token is only valid on the connection handed to it"
    return _credentials_problem(identity, peer.peer_pid, peer.peer_uid)


def _credentials_problem(
    identity: WorkerIdentity, peer_pid: int | None, peer_uid: int | None
) -> str | None:
    """Say why the peer's kernel credentials don't fit the identity, or None if they do."""
    if identity.uid is not None and peer_uid != identity.uid:
        return "peer uid does not match the worker's"
    if identity.pid is not None and (
        peer_pid is None or not _descends_from(peer_pid, identity.pid)
    ):
        return "peer process is not the worker or one of its descendants"
    return None


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether `pid` is `ancestor` or below it in the process tree (/proc, bounded walk)."""
    for _ in range(MAX_ANCESTRY_DEPTH):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        parent = _parent_pid(pid)
        if parent is None:
            return False
        pid = parent
    return False


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:  # noqa: PTH123 - procfs, one small read
            stat_line = f.read()
    except OSError:
        return None
    # Format: "pid (comm) state ppid ...". comm may hold spaces and parentheses, so split
    # after the last ')'.
    fields = stat_line[stat_line.rfind(b")") + 2 :].split()
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None
