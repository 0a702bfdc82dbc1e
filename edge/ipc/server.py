# SPDX-License-Identifier: Apache-2.0
"""The core's end of the worker IPC: a Unix-socket server that knows who is calling.

This module owns the socket (its directory, a stale file, listening, handing over socketpairs),
the registry of worker tokens, and the limits on who may hold what. Each connection is a `Peer`
(`edge.ipc.peer`); its bytes are interpreted by `edge.ipc.connection.Connection`, and its
requests are answered by `edge.ipc.dispatch`. A connection must open with a `Hello` carrying a
token the process manager registered for one worker. The token says which function the caller
claims to be; `SO_PEERCRED` then has to agree (`edge.ipc.auth`). Only then is the connection
welcomed and its requests passed to the handler, with the caller's `WorkerIdentity`.

A peer that misbehaves (garbage, an oversized frame, a wrong token, silence where a Hello
belongs) costs its own connection and, at most every few seconds, a log line that counts the
others; every other connection keeps being served. What strangers can hold is bounded: a small
frame and a few seconds before login, a few dozen such connections at once, and a reserve of
file descriptors kept for the core's own work. A worker that logged in may keep its connections
for life (pinned functions do), but only a few of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import itertools
import os
import socket
import stat
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from structlog.typing import FilteringBoundLogger

from edge.errors import IpcServerError
from edge.ipc.auth import WorkerIdentity, identity_problem, token_digest
from edge.ipc.dispatch import (
    LATENCY_BOUNDS_SECONDS,
    Dispatcher,
    LatencyHistogram,
    RequestHandler,
)
from edge.ipc.events import Hello
from edge.ipc.limits import DescriptorBudget, LogThrottle
from edge.ipc.peer import Peer
from edge.log import get_logger

__all__ = [
    "DESCRIPTORS_REASON",
    "DESCRIPTOR_RESERVE",
    "EVICTED_REASON",
    "HELLO_TIMEOUT_SECONDS",
    "LATENCY_BOUNDS_SECONDS",
    "MAX_CONCURRENT_REQUESTS",
    "MAX_CONNECTIONS_PER_WORKER",
    "MAX_UNAUTHENTICATED_CONNECTIONS",
    "REFUSED_REASON",
    "REVOKED_REASON",
    "SHUTDOWN_REASON",
    "TOO_MANY_REASON",
    "IpcServer",
    "LatencyHistogram",
    "RequestHandler",
    "WorkerIdentity",
]

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
        connections: Connection events: "accepted", "authenticated", "refused",
            "protocol_error", "hello_timeout", "revoked", and the limits' refusals:
            "refused_descriptors" (the descriptor reserve), "evicted" (the oldest of too many
            connections not logged in), "refused_per_worker" (a worker's connection cap).
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
        self._log = logger or get_logger("ipc")
        self._max_concurrent = max_concurrent_requests
        self._hello_timeout = hello_timeout
        # sha256(token) -> identity. Looking up a digest leaks nothing useful through timing:
        # a caller can't steer the digest of its guess toward a registered one (the same
        # reason hmac.compare_digest exists), and the table never holds a token itself.
        self._identities: dict[bytes, WorkerIdentity] = {}
        # Hellos waiting for their worker's pid (see WorkerIdentity.pid_pending), by digest.
        self._parked: dict[bytes, list[tuple[Peer, Hello]]] = {}
        self._peers: set[Peer] = set()
        # Connections not logged in yet, oldest first (a dict keeps insertion order).
        self._unwelcomed: dict[Peer, None] = {}
        # Logged-in connections per token digest.
        self._welcomed: Counter[bytes] = Counter()
        self._descriptors = DescriptorBudget(reserve=DESCRIPTOR_RESERVE)
        self._throttle = LogThrottle(logger=self._log, interval=REFUSED_LOG_INTERVAL_SECONDS)
        self._server: asyncio.AbstractServer | None = None
        self._socket_id: tuple[int, int] | None = None
        self._ids = itertools.count(1)
        self._dispatcher = Dispatcher(handler)
        self.connections: Counter[str] = Counter()
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

    @property
    def requests(self) -> Counter[tuple[str, str]]:
        """Answered requests by (op, outcome), outcome "ok" or the error status as text.

        Ops the core doesn't know are counted as "unknown". For Prometheus export.
        """
        return self._dispatcher.requests

    @property
    def latency(self) -> dict[str, LatencyHistogram]:
        """Per operation (as in `requests`), how long answers took.

        From the request's frame being parsed to the answer being handed to the transport.
        """
        return self._dispatcher.latency

    @property
    def measure_latency(self) -> bool:
        """Whether to fill `latency` (two clock reads and a bucket per request)."""
        return self._dispatcher.measure_latency

    @measure_latency.setter
    def measure_latency(self, value: bool) -> None:
        self._dispatcher.measure_latency = value

    @property
    def remembered_answers(self) -> int:
        """Answers remembered to repeat, over all connections (see `edge.ipc.answers`)."""
        return sum(len(peer.answers) for peer in self._peers)

    def hellos_waiting(self, token: str) -> int:
        """Hellos with `token` that wait for their worker's pid (`WorkerIdentity.pid_pending`)."""
        return len(self._parked.get(token_digest(token), ()))

    # --- identities ---------------------------------------------------------------------------

    def register(self, token: str, identity: WorkerIdentity) -> None:
        """Accept `token` from now on as proof of `identity` (replacing an earlier binding).

        Args:
            token: The worker's secret token (never logged or stored in clear).
            identity: The function it stands for and the peer credentials it requires.
        """
        digest = token_digest(token)
        self._identities[digest] = identity
        if not identity.pid_pending:
            for peer, hello in self._parked.pop(digest, ()):
                if not peer.closing:
                    self.judge_hello(peer, hello)

    def revoke(self, token: str) -> None:
        """Stop accepting `token`, and close the connections that were opened with it.

        Their requests in flight are cancelled: nothing more is answered to a stopped worker
        or anything it left behind. Revoking an unknown token does nothing.
        """
        digest = token_digest(token)
        self._identities.pop(digest, None)
        waiting = [peer for peer, _hello in self._parked.pop(digest, ())]
        for peer in [p for p in self._peers if p.token_digest == digest] + waiting:
            self.connections["revoked"] += 1
            peer.log.info("ipc.connection.revoked")
            peer.close(REVOKED_REASON)

    def drop_repeats(self) -> None:
        """Forget every connection's remembered answers (see `Response.replay`)."""
        for peer in self._peers:
            peer.answers.clear()

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
        server = await loop.create_unix_server(self._new_peer, path=os.fspath(path))
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

    async def adopt(self, sock: socket.socket, token: str, *, pid: int | None = None) -> None:
        """Serve a connected socket whose other end was handed to the worker owning `token`.

        Workers that run as another user (RunAs) can't enter the 0700 socket directory, so the
        manager gives them socketpair ends instead (one for requests, one for the cache's
        watch). The worker still has to say Hello with its token, and only that token is
        accepted on this connection; it may say it whenever its code first calls the core (no
        Hello deadline: the worker has no way to connect again). `SO_PEERCRED` of a socketpair
        names the core itself, so register such a worker's identity without uid or pid and with
        `adopted_only`; the manager names the worker's `pid` here instead, and the connection
        is served as that identity with that pid (the worker a late watch restarts).
        """
        loop = asyncio.get_running_loop()
        digest = token_digest(token)
        await loop.connect_accepted_socket(
            lambda: self._new_peer(adopted_for=digest, adopted_pid=pid), sock=sock
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

    # --- connections (PeerHost) ---------------------------------------------------------------

    def _new_peer(self, adopted_for: bytes | None = None, adopted_pid: int | None = None) -> Peer:
        return Peer(
            self,
            self._dispatcher,
            conn_id=next(self._ids),
            log=self._log,
            hello_timeout=self._hello_timeout,
            max_concurrent=self._max_concurrent,
            adopted_for=adopted_for,
            adopted_pid=adopted_pid,
        )

    def admit(self, peer: Peer, fd: int) -> bool:
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

    def forget(self, peer: Peer) -> None:
        """The connection is gone: it holds nothing any more."""
        self._peers.discard(peer)
        self._unwelcomed.pop(peer, None)
        digest = peer.token_digest
        if digest is not None:
            left = self._welcomed.get(digest, 0) - 1
            if left > 0:
                self._welcomed[digest] = left
            else:  # also after a shutdown, which forgot them all
                self._welcomed.pop(digest, None)

    def failed(self, peer: Peer, counter: str, event: str, **fields: Any) -> None:  # noqa: ANN401 - whatever the event carries
        """Count a connection that broke a rule; log it at most every few seconds per event."""
        self.connections[counter] += 1
        self._throttle.warning(event, peer.log, **fields)

    def judge_hello(self, peer: Peer, hello: Hello) -> bool | None:
        """Judge a Hello: Welcome (True), refuse (False), or wait for the worker's pid (None)."""
        digest = token_digest(hello.token)
        identity = self._identities.get(digest)
        if identity is not None and identity.pid_pending and peer.adopted_for is None:
            # A worker being started: its token is known, so a flood of strangers must not
            # evict it while its pid is on the way (the Hello timeout still bounds the wait).
            self._unwelcomed.pop(peer, None)
            self._parked.setdefault(digest, []).append((peer, hello))
            return None
        peer.hello_decided()
        self._unwelcomed.pop(peer, None)
        problem = identity_problem(
            identity,
            digest,
            adopted_for=peer.adopted_for,
            peer_pid=peer.peer_pid,
            peer_uid=peer.peer_uid,
        )
        if identity is None or problem is not None:
            self.connections["refused"] += 1
            # Each kind of refusal has its own window: a flood of wrong tokens must not hide
            # the one line about a token presented by the wrong process.
            self._throttle.warning(
                "ipc.auth.refused",
                peer.log,
                key=problem,
                problem=problem,
                claimed_pid=hello.pid,
                function_arn=identity.function_arn if identity else None,
            )
            peer.close(REFUSED_REASON)
            return False
        if self._welcomed[digest] >= MAX_CONNECTIONS_PER_WORKER:
            self.connections["refused_per_worker"] += 1
            self._throttle.warning(
                "ipc.refused.too_many_for_worker",
                peer.log,
                function_arn=identity.function_arn,
                limit=MAX_CONNECTIONS_PER_WORKER,
            )
            peer.close(TOO_MANY_REASON)
            return False
        self._welcomed[digest] += 1
        if peer.adopted_pid is not None:
            # The kernel can't say which process holds a handed socket: the manager did.
            identity = dataclasses.replace(identity, pid=peer.adopted_pid)
        peer.welcome(identity, digest)
        self.connections["authenticated"] += 1
        peer.log.debug("ipc.connection.authenticated")
        return True
