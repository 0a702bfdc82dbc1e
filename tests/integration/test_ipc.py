# SPDX-License-Identifier: Apache-2.0
"""The IPC for real: an IpcServer on a Unix socket, blocking clients in threads and processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
import structlog.testing

from edge.audit import AuditLog, read_entries
from edge.child.cache import AnswerCache
from edge.errors import (
    IpcCallError,
    IpcConnectionError,
    IpcServerError,
    IpcTimeoutError,
)
from edge.ipc.client import IpcClient
from edge.ipc.invalidations import Invalidations
from edge.ipc.protocol import (
    MAX_FRAME_SIZE,
    OP_GET_SECRET_VALUE,
    OP_GET_SECRET_VALUE_V1,
    OP_INVOKE,
    OP_PUBLISH,
    OP_WATCH,
    Hello,
    Request,
    Response,
    encode,
)
from edge.ipc.server import IpcServer, WorkerIdentity
from edge.secrets.contents import LocalSecret, SecretVersion, StoreContents
from edge.secrets.keys import generate_key
from edge.secrets.live import LiveSecrets
from edge.secrets.store import SecretStore
from edge.workers.services import CoreServices

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "worker-token-0123456789abcdef"
OTHER_TOKEN = "worker-token-fedcba9876543210"
ARN = "arn:aws:lambda:us-east-1:123456789012:function:reader:1"
SECRET = "s3cr3t-value-never-logged"


class Handler:
    """A tiny core: secrets answered at once, invocations slow (or never), publish fails."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        #: Set once an invoke with "Hold" runs; it answers only once `release` is set.
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        #: The workers' cache watches (`OP_WATCH`); its snapshots mean nothing here.
        self.watches: Invalidations[None] = Invalidations(
            current=lambda: None, on_reads=lambda *_: None
        )

    def __call__(self, identity: WorkerIdentity, request: Request) -> Any:
        args = request.args
        if request.op == OP_GET_SECRET_VALUE:
            if args.get("SecretId") == "missing":
                return Response.failure(request.request_id, 404, "no such secret")
            if args.get("SecretId") == "huge":
                return Response.success(request.request_id, {"Blob": b"x" * MAX_FRAME_SIZE})
            return Response.success(
                request.request_id,
                {
                    "Name": args["SecretId"],
                    "SecretString": SECRET,
                    "Caller": identity.function_arn,
                    **({"CallerPid": identity.pid} if args.get("WithPid") else {}),
                },
            )
        if request.op == OP_INVOKE:
            return self._invoke(request)
        if request.op == OP_WATCH:
            return self._watch(identity, request)
        raise RuntimeError(f"publish exploded with {SECRET}")

    async def _watch(self, identity: WorkerIdentity, request: Request) -> Response:
        result = await self.watches.watch(identity, request.args)
        return Response.success(request.request_id, result)

    async def _invoke(self, request: Request) -> Response:
        try:
            if request.args.get("Hold"):
                self.holding.set()
                await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return Response.success(request.request_id, {"Payload": request.args.get("Payload")})


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    """Every test's log events; none of them may hold a token or a secret value."""
    with structlog.testing.capture_logs() as captured:
        yield captured
    text = json.dumps(captured, default=repr)
    for value in (TOKEN, OTHER_TOKEN, SECRET):
        assert value not in text


@contextlib.contextmanager
def short_socket_path() -> Iterator[Path]:
    """A socket path in a short directory: AF_UNIX paths end at 107 bytes, pytest's are long."""
    base = Path(tempfile.mkdtemp(prefix="edge-ipc-"))
    try:
        yield base / "ipc" / "core.sock"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A socket path in a short temporary directory."""
    with short_socket_path() as path:
        yield path


@contextlib.asynccontextmanager
async def serving(
    socket_path: Path, handler: Handler | None = None, **options: Any
) -> AsyncIterator[IpcServer]:
    """A running server with TOKEN registered for ARN (this uid, any pid)."""
    async with IpcServer(
        socket_path=socket_path, handler=handler or Handler(), **options
    ) as server:
        server.register(TOKEN, WorkerIdentity(function_arn=ARN, uid=os.getuid()))
        yield server


async def call(client: IpcClient, op: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """Run a blocking client call in a thread, so the loop keeps serving meanwhile."""
    return await asyncio.to_thread(client.call, op, args, **kw)


async def hello_parked(server: IpcServer, token: str) -> None:
    """Wait (10 s at most) until a Hello with `token` waits in the server for its worker's pid.

    The server logs nothing then, so this asks it how many such Hellos it holds.
    """
    async with asyncio.timeout(10):
        while not server.hellos_waiting(token):
            await asyncio.sleep(0.01)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def raw_exchange(socket_path: Path, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Connect without a client, send `data`, return everything read until the server closes."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def frames(data: bytes) -> list[dict[str, Any]]:
    """Split raw bytes from the server into decoded frames."""
    out = []
    while data:
        (size,) = struct.unpack(">I", data[:4])
        out.append(msgpack.unpackb(data[4 : 4 + size]))
        data = data[4 + size :]
    return out


# --- authentication ---------------------------------------------------------------------------


async def test_authenticated_call_gets_its_answer(socket_path, logs):
    """A client with a registered token is welcomed and served with its own identity."""
    async with serving(socket_path) as server:
        with IpcClient(str(socket_path), TOKEN) as client:
            result = await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"})
            assert result == {"Name": "db", "SecretString": SECRET, "Caller": ARN}
            assert client.function_arn == ARN
            with pytest.raises(IpcCallError) as info:
                await call(client, OP_GET_SECRET_VALUE, {"SecretId": "missing"})
            assert (info.value.status, info.value.message) == (404, "no such secret")
        assert server.requests[(OP_GET_SECRET_VALUE, "ok")] == 1
        assert server.requests[(OP_GET_SECRET_VALUE, "404")] == 1
        assert server.connections["authenticated"] == 1
    assert events(logs, "ipc.auth.refused") == []


async def test_wrong_token_is_refused_and_logged_once(socket_path, logs):
    """An unknown token gets a Goodbye (403 for the client), one log line, and no answers."""
    async with serving(socket_path) as server:
        with IpcClient(str(socket_path), OTHER_TOKEN) as client:
            with pytest.raises(IpcCallError) as info:
                await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"})
            assert info.value.status == 403
        refused = events(logs, "ipc.auth.refused")
        assert len(refused) == 1
        assert refused[0]["problem"] == "unknown or revoked token"
        assert refused[0]["peer_uid"] == os.getuid()
        assert server.connections["refused"] == 1
        assert not server.requests


async def test_revoked_token_closes_its_connections_and_is_refused(socket_path, logs):
    """Revoking a token ends connections opened with it; a new connection is refused."""
    async with serving(socket_path) as server:
        with IpcClient(str(socket_path), TOKEN) as client:
            await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"})
            server.revoke(TOKEN)
            # The client finds its connection closed, reconnects once, and is refused.
            with pytest.raises(IpcCallError) as info:
                await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"})
            assert info.value.status == 403
        assert len(events(logs, "ipc.connection.revoked")) == 1
        assert events(logs, "ipc.auth.refused")[0]["problem"] == "unknown or revoked token"


async def test_peer_uid_must_match(socket_path, logs):
    """A token bound to another uid is refused for this process, whatever the token says."""
    async with serving(socket_path) as server:
        server.register(OTHER_TOKEN, WorkerIdentity(function_arn=ARN, uid=os.getuid() + 1))
        with (
            IpcClient(str(socket_path), OTHER_TOKEN) as client,
            pytest.raises(IpcCallError) as info,
        ):
            await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"})
        assert info.value.status == 403
        assert "uid" in events(logs, "ipc.auth.refused")[0]["problem"]


async def test_peer_pid_must_be_the_worker_or_a_descendant(socket_path, logs):
    """A pid-bound token works from that process and its children, not from anyone else."""
    async with serving(socket_path) as server:
        server.register(TOKEN, WorkerIdentity(function_arn=ARN, uid=os.getuid(), pid=os.getpid()))
        with IpcClient(str(socket_path), TOKEN) as client:
            assert (await call(client, OP_GET_SECRET_VALUE, {"SecretId": "a"}))["Caller"] == ARN
        # A child of this process (the worker's own subprocess) may use the token too.
        out = await run_python(
            socket_path,
            "print(IpcClient(path, token).call(OP_GET_SECRET_VALUE, {'SecretId': 'c'})['Caller'])",
            TOKEN,
        )
        assert out.strip() == ARN
        # A process that is not below the registered pid may not.
        stranger = subprocess.Popen(["sleep", "30"])
        try:
            server.register(
                OTHER_TOKEN, WorkerIdentity(function_arn=ARN, uid=os.getuid(), pid=stranger.pid)
            )
            with (
                IpcClient(str(socket_path), OTHER_TOKEN) as client,
                pytest.raises(IpcCallError),
            ):
                await call(client, OP_GET_SECRET_VALUE, {"SecretId": "a"})
        finally:
            stranger.kill()
            stranger.wait()
        assert "descendants" in events(logs, "ipc.auth.refused")[0]["problem"]


async def test_a_hello_for_a_worker_being_started_waits_for_its_pid(socket_path, logs):
    """A token registered before its worker exists is judged only once the pid is bound.

    Otherwise a same-uid process that read the new worker's token from /proc/<pid>/environ
    could get in between the two registrations.
    """
    async with serving(socket_path) as server:
        pending = WorkerIdentity(function_arn=ARN, uid=os.getuid(), pid_pending=True)
        server.register(OTHER_TOKEN, pending)
        with IpcClient(str(socket_path), OTHER_TOKEN) as thief:
            attempt = asyncio.ensure_future(call(thief, OP_GET_SECRET_VALUE, {"SecretId": "a"}))
            await hello_parked(server, OTHER_TOKEN)
            assert not attempt.done()  # no Welcome while the pid is unknown
            worker = subprocess.Popen(["sleep", "30"])
            try:
                server.register(
                    OTHER_TOKEN, WorkerIdentity(function_arn=ARN, uid=os.getuid(), pid=worker.pid)
                )
                with pytest.raises(IpcCallError):
                    await attempt
            finally:
                worker.kill()
                worker.wait()
        # The real worker (here: this process and its threads) waits, then gets in.
        server.register(TOKEN, pending)
        with IpcClient(str(socket_path), TOKEN) as client:
            call_ = asyncio.ensure_future(call(client, OP_GET_SECRET_VALUE, {"SecretId": "b"}))
            await hello_parked(server, TOKEN)
            assert not call_.done()
            server.register(
                TOKEN, WorkerIdentity(function_arn=ARN, uid=os.getuid(), pid=os.getpid())
            )
            assert (await call_)["Caller"] == ARN
    assert "descendants" in events(logs, "ipc.auth.refused")[0]["problem"]


async def test_a_handed_over_connection_takes_only_its_own_workers_token(socket_path, logs):
    """RunAs workers get a socketpair: only their token works on it, and only on it."""
    async with serving(socket_path) as server:
        server.register(OTHER_TOKEN, WorkerIdentity(function_arn=ARN, adopted_only=True))
        # Its token over the ordinary socket: refused.
        with IpcClient(str(socket_path), OTHER_TOKEN) as client, pytest.raises(IpcCallError):
            await call(client, OP_GET_SECRET_VALUE, {"SecretId": "a"})
        # Another worker's token on the connection handed to OTHER_TOKEN's worker: refused.
        mine, theirs = socket.socketpair()
        await server.adopt(mine, OTHER_TOKEN)
        with (
            IpcClient(str(socket_path), TOKEN, inherited_fd=theirs.detach()) as client,
            pytest.raises(IpcCallError),
        ):
            await call(client, OP_GET_SECRET_VALUE, {"SecretId": "a"})
        # Its own token on its own connection: served.
        mine, theirs = socket.socketpair()
        await server.adopt(mine, OTHER_TOKEN)
        with IpcClient(str(socket_path), OTHER_TOKEN, inherited_fd=theirs.detach()) as client:
            assert (await call(client, OP_GET_SECRET_VALUE, {"SecretId": "a"}))["Caller"] == ARN
    problems = [e["problem"] for e in events(logs, "ipc.auth.refused")]
    assert problems == [
        "this worker's token is only valid on the connection handed to it",
        "another worker's token on a handed-over connection",
    ]


async def test_a_handed_connection_is_served_as_its_worker_and_never_made_again(socket_path):
    """The manager names the worker's pid; once the connection closes, the client gives up.

    The kernel's peer credentials of a socketpair name the core, so the pid the connection is
    served as (whom a late cache watch restarts) is the one the manager gave. A client on a
    handed socket can't reach the socket's path: when its connection is gone it says so and
    doesn't try.
    """
    async with serving(socket_path) as server:
        server.register(OTHER_TOKEN, WorkerIdentity(function_arn=ARN, adopted_only=True))
        mine, theirs = socket.socketpair()
        await server.adopt(mine, OTHER_TOKEN, pid=4242)
        with IpcClient(
            str(socket_path), OTHER_TOKEN, inherited_fd=theirs.detach(), handed=True
        ) as client:
            answer = await call(client, OP_GET_SECRET_VALUE, {"SecretId": "a", "WithPid": True})
            assert (answer["Caller"], answer["CallerPid"]) == (ARN, 4242)
            assert not client.reconnects
            accepted = server.connections["accepted"]
            server.revoke(OTHER_TOKEN)  # closes its connection
            server.register(OTHER_TOKEN, WorkerIdentity(function_arn=ARN, adopted_only=True))
            with pytest.raises(IpcConnectionError, match="can't be made again"):
                await call(client, OP_GET_SECRET_VALUE, {"SecretId": "a"})
            assert server.connections["accepted"] == accepted  # nothing connected by path


async def test_a_cache_watching_over_a_handed_connection_stops_for_good_when_it_closes(
    socket_path,
):
    """The watch of a worker of another user can't be made again: its cache goes off for good.

    It caches while the handed connection holds a watch; once the core closes it, the cache is
    off and empty, its thread ends, nothing connects by path, and asking it to watch again
    starts nothing.
    """
    handler = Handler()
    async with serving(socket_path, handler) as server:
        server.register(OTHER_TOKEN, WorkerIdentity(function_arn=ARN, adopted_only=True))
        mine, theirs = socket.socketpair()
        await server.adopt(mine, OTHER_TOKEN, pid=os.getpid())
        fd = theirs.detach()
        cache = AnswerCache(
            lambda: IpcClient(str(socket_path), OTHER_TOKEN, inherited_fd=fd, handed=True)
        )
        cache.watch()
        async with asyncio.timeout(10):
            while not cache.active:
                await asyncio.sleep(0.01)
        assert handler.watches.watches == 1
        (thread,) = [t for t in threading.enumerate() if t.name == "edge-answer-cache"]
        accepted = server.connections["accepted"]
        server.revoke(OTHER_TOKEN)  # closes the handed connection
        await asyncio.to_thread(thread.join, 10)
        assert not thread.is_alive()
        assert not cache.active
        assert server.connections["accepted"] == accepted
        cache.watch()
        assert not [t for t in threading.enumerate() if t.name == "edge-answer-cache"]


async def run_python(socket_path: Path, code: str, token: str) -> str:
    """Run `code` in a fresh interpreter with `path`, `token` and the client in scope."""
    prelude = (
        "import sys\n"
        "from edge.ipc.client import IpcClient\n"
        "from edge.ipc.protocol import OP_GET_SECRET_VALUE\n"
        "path, token = sys.argv[1], sys.argv[2]\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        prelude + code,
        str(socket_path),
        token,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_a_second_process_without_the_token_gets_nothing(socket_path, logs):
    """A process that connects with a guessed token, or none, receives no Welcome or answer."""
    async with serving(socket_path):
        code = (
            "import socket, struct, msgpack\n"
            "from edge.ipc.protocol import Hello, Request, encode\n"
            "got = []\n"
            "for first in (encode(Hello('guess', 1)), b''):\n"
            "    s = socket.socket(socket.AF_UNIX)\n"
            "    s.connect(path)\n"
            "    s.sendall(first + encode(Request(1, 'secretsmanager.get_secret_value',"
            " {'SecretId': 'db'})))\n"
            "    data = b''\n"
            "    while chunk := s.recv(65536):\n"
            "        data += chunk\n"
            "    while data:\n"
            "        (n,) = struct.unpack('>I', data[:4])\n"
            "        got.append(msgpack.unpackb(data[4:4 + n])['type'])\n"
            "        data = data[4 + n:]\n"
            "    s.close()\n"
            "print(got)\n"
        )
        out = await run_python(socket_path, code, "unused")
    # Only the refusal, and nothing at all without a Hello.
    assert out.strip() == "['goodbye']"
    assert len(events(logs, "ipc.auth.refused")) == 1
    assert len(events(logs, "ipc.protocol.error")) == 1


# --- the socket file --------------------------------------------------------------------------


async def test_socket_is_0600_in_a_0700_directory_and_removed_on_exit(socket_path):
    """Only the core's user can reach the socket; exit removes the file; the server is reusable."""
    server = IpcServer(socket_path=socket_path, handler=Handler())
    server.register(TOKEN, WorkerIdentity(function_arn=ARN))
    for _ in range(2):
        async with server:
            assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
            assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
            assert stat.S_ISSOCK(socket_path.stat().st_mode)
            with pytest.raises(RuntimeError, match="not re-entrant"):
                await server.__aenter__()
            with IpcClient(str(socket_path), TOKEN) as client:
                await call(client, OP_GET_SECRET_VALUE, {"SecretId": "x"})
        assert not socket_path.exists()


async def test_a_looser_directory_is_tightened(socket_path, logs):
    """An existing socket directory readable by others is set back to 0700, and said so."""
    socket_path.parent.mkdir(mode=0o755)
    socket_path.parent.chmod(0o755)
    async with serving(socket_path):
        assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
    assert events(logs, "ipc.socket_dir.mode_fixed")[0]["was"] == "0755"


async def test_stale_socket_is_replaced_but_a_live_one_is_not(socket_path, logs):
    """A socket left by a dead core is removed; one a running core listens on is refused."""
    socket_path.parent.mkdir(mode=0o700)
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(socket_path))
    leftover.close()  # the file stays, nobody listens
    async with serving(socket_path):
        assert len(events(logs, "ipc.socket.stale_removed")) == 1
        with IpcClient(str(socket_path), TOKEN) as client:
            await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"})
        with pytest.raises(IpcServerError, match="another core is listening"):
            async with IpcServer(socket_path=socket_path, handler=Handler()):
                pass
        assert socket_path.exists()  # the live server's socket was left alone


async def test_unsafe_paths_are_refused(socket_path):
    """Too-long paths and non-sockets in the way are errors that say what to do."""
    long_path = socket_path.parent / ("x" * 120) / "core.sock"
    with pytest.raises(IpcServerError, match="107 bytes"):
        async with IpcServer(socket_path=long_path, handler=Handler()):
            pass
    socket_path.parent.mkdir(mode=0o700)
    socket_path.write_text("not a socket")
    with pytest.raises(IpcServerError, match="other than a socket"):
        async with IpcServer(socket_path=socket_path, handler=Handler()):
            pass


async def test_exit_removes_the_socket_even_when_cancelled_mid_request(socket_path):
    """Cancelling the server's owner with a request in flight still cleans up everything."""
    handler = Handler()
    started = asyncio.Event()
    client = IpcClient(str(socket_path), TOKEN)

    async def run_core() -> None:
        async with serving(socket_path, handler):
            started.set()
            await asyncio.Event().wait()

    core = asyncio.create_task(run_core(), name="core")
    await started.wait()
    pending = asyncio.create_task(call(client, OP_INVOKE, {"Hold": True}))
    await asyncio.wait_for(handler.holding.wait(), 10)
    core.cancel()
    with pytest.raises(asyncio.CancelledError):
        await core
    assert not socket_path.exists()
    assert handler.cancelled.is_set()
    with pytest.raises(IpcConnectionError, match="shutting down"):
        await pending
    client.close()


# --- misbehaving peers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("garbage", "problem"),
    [
        (b"\xff\xff\xff\xff" + b"x" * 1000, "frames are 1 to"),
        (struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1", "not valid msgpack"),
        (encode(Request(1, OP_GET_SECRET_VALUE, {})), "expected a hello frame first"),
        (encode(Hello(TOKEN, 1)) + struct.pack(">I", 3) + b"\x92\x01\x02", "not a msgpack map"),
    ],
    ids=["oversized", "bad-msgpack", "no-hello", "not-a-map"],
)
async def test_garbage_closes_only_that_connection(socket_path, logs, garbage, problem):
    """A peer sending garbage is cut off with one log line; another client keeps working."""
    async with serving(socket_path) as server:
        with IpcClient(str(socket_path), TOKEN) as good:
            await call(good, OP_GET_SECRET_VALUE, {"SecretId": "before"})
            received = await raw_exchange(socket_path, garbage)
            assert [f["type"] for f in frames(received)] in ([], ["welcome"])
            result = await call(good, OP_GET_SECRET_VALUE, {"SecretId": "after"})
            assert result["Name"] == "after"
        errors = events(logs, "ipc.protocol.error")
        assert len(errors) == 1
        assert problem in errors[0]["problem"]
        assert server.connections["protocol_error"] == 1


async def test_oversized_frame_is_refused_before_it_is_read(socket_path, logs):
    """A 2 MiB frame is refused from its header; the sender is disconnected mid-stream."""
    async with serving(socket_path):
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        header = struct.pack(">I", 2 * MAX_FRAME_SIZE)
        writer.write(header)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert len(events(logs, "ipc.protocol.error")) == 1


async def test_silent_connection_is_closed_after_the_hello_timeout(socket_path, logs):
    """A connection that never says Hello is closed, and logged once."""
    async with serving(socket_path, hello_timeout=0.2) as server:
        # Closed by the server well before raw_exchange gives up waiting.
        assert await raw_exchange(socket_path, b"", timeout=3) == b""
        assert server.connections["hello_timeout"] == 1
    assert len(events(logs, "ipc.hello.timeout")) == 1


async def test_unknown_ops_and_handler_failures_are_answered_not_fatal(socket_path, logs):
    """Unknown ops get 400, a crashing handler 500 (logged); the connection stays usable."""
    async with serving(socket_path) as server:
        with IpcClient(str(socket_path), TOKEN) as client:
            with pytest.raises(IpcCallError) as info:
                await call(client, "shadow.delete_everything", {})
            assert info.value.status == 400
            with pytest.raises(IpcCallError) as info:
                await call(client, OP_PUBLISH, {"Topic": "t"})
            assert info.value.status == 500
            assert SECRET not in info.value.message
            assert (await call(client, OP_GET_SECRET_VALUE, {"SecretId": "x"}))["Name"] == "x"
        assert server.requests[("unknown", "400")] == 1
        assert server.requests[(OP_PUBLISH, "500")] == 1
    assert len(events(logs, "ipc.handler.failed")) == 1


async def test_frames_over_the_limit_become_413s(socket_path):
    """Too large a request fails in the client; too large an answer becomes a 413 answer."""
    async with serving(socket_path):
        with IpcClient(str(socket_path), TOKEN) as client:
            with pytest.raises(IpcCallError) as info:
                await call(client, OP_INVOKE, {"Payload": b"x" * MAX_FRAME_SIZE})
            assert info.value.status == 413
            with pytest.raises(IpcCallError) as info:
                await call(client, OP_GET_SECRET_VALUE, {"SecretId": "huge"})
            assert info.value.status == 413
            assert (await call(client, OP_GET_SECRET_VALUE, {"SecretId": "x"}))["Name"] == "x"


# --- concurrency, timeouts, reconnection -------------------------------------------------------


async def test_threads_sharing_a_client_each_get_their_own_answers(socket_path):
    """8 threads calling at once over one connection each get the answers to their requests."""
    async with serving(socket_path):
        with IpcClient(str(socket_path), TOKEN) as client:

            def worker(n: int) -> list[str]:
                return [
                    client.call(OP_GET_SECRET_VALUE, {"SecretId": f"t{n}-{i}"})["Name"]
                    for i in range(200)
                ]

            results = await asyncio.gather(*(asyncio.to_thread(worker, n) for n in range(8)))
    for n, names in enumerate(results):
        assert names == [f"t{n}-{i}" for i in range(200)]


async def test_a_slow_invoke_does_not_hold_up_secrets(socket_path):
    """While one thread waits on a slow invoke, others (same client or not) are served."""
    handler = Handler()
    async with serving(socket_path, handler):
        with (
            IpcClient(str(socket_path), TOKEN) as shared,
            IpcClient(str(socket_path), TOKEN) as other,
        ):
            slow = asyncio.create_task(call(shared, OP_INVOKE, {"Hold": True, "Payload": b"p"}))
            try:
                await asyncio.wait_for(handler.holding.wait(), 10)
                # The invoke answers only after these two: they must not wait for it.
                same = call(shared, OP_GET_SECRET_VALUE, {"SecretId": "same-connection"})
                assert (await asyncio.wait_for(same, 10))["Name"] == "same-connection"
                another = call(other, OP_GET_SECRET_VALUE, {"SecretId": "other-connection"})
                assert (await asyncio.wait_for(another, 10))["Name"] == "other-connection"
                assert not slow.done()
            finally:
                handler.release.set()
            assert await slow == {"Payload": b"p"}


async def test_timeout_is_a_408_and_the_late_answer_is_dropped(socket_path):
    """A call that times out raises IpcTimeoutError; the client keeps working afterwards."""
    handler = Handler()
    async with serving(socket_path, handler) as server:
        with IpcClient(str(socket_path), TOKEN) as client:
            with pytest.raises(IpcTimeoutError) as info:
                await call(client, OP_INVOKE, {"Hold": True, "Payload": b"late"}, timeout=0.1)
            assert info.value.status == 408
            handler.release.set()
            # The late answer is on the connection before the next call's: it must be ignored.
            async with asyncio.timeout(10):
                while not server.requests[OP_INVOKE, "ok"]:
                    await asyncio.sleep(0.01)
            assert (await call(client, OP_GET_SECRET_VALUE, {"SecretId": "x"}))["Name"] == "x"


async def test_client_reconnects_once_after_the_core_restarts(socket_path):
    """A connection broken while idle is replaced transparently, for every operation."""
    with IpcClient(str(socket_path), TOKEN) as client:
        async with serving(socket_path):
            await call(client, OP_GET_SECRET_VALUE, {"SecretId": "before"})
        with pytest.raises(IpcConnectionError):
            await call(client, OP_GET_SECRET_VALUE, {"SecretId": "down"})
        async with serving(socket_path):
            assert (await call(client, OP_INVOKE, {"Payload": b"1"}))["Payload"] == b"1"
            await call(client, OP_GET_SECRET_VALUE, {"SecretId": "after"})


async def test_closed_client_refuses_calls(socket_path):
    """After close(), calls raise IpcConnectionError instead of reconnecting."""
    async with serving(socket_path):
        client = IpcClient(str(socket_path), TOKEN)
        await call(client, OP_GET_SECRET_VALUE, {"SecretId": "x"})
        client.close()
        client.close()
        with pytest.raises(IpcConnectionError, match="closed"):
            await call(client, OP_GET_SECRET_VALUE, {"SecretId": "x"})


def test_unreachable_core_is_a_connection_error(socket_path):
    """No socket at all: IpcConnectionError naming the path, never the token."""
    client = IpcClient(str(socket_path), TOKEN)
    with pytest.raises(IpcConnectionError) as info:
        client.call(OP_GET_SECRET_VALUE, {"SecretId": "x"})
    assert str(socket_path) in str(info.value)
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(client)


def test_worker_side_import_stays_lean():
    """Importing the client loads neither asyncio nor the core side."""
    code = "import sys, json, edge.ipc.client; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(out.stdout))
    forbidden = {
        "asyncio",
        "structlog",
        "edge.ipc.server",
        "edge.ipc.peer",
        "edge.ipc.dispatch",
        "edge.ipc.answers",
        "edge.ipc.auth",
        "edge.ipc.limits",
        "edge.deploy",
        "edge.core",
        "edge.log",
        "edge.redaction",
        "aiobotocore",
        "aiomqtt",
    }
    assert not loaded & forbidden
    assert {"msgpack", "edge.ipc.protocol", "edge.ipc.connection", "edge.errors"} <= loaded


def test_server_runs_under_uvloop(socket_path):
    """The server works on uvloop's transports too (peer credentials, flow control)."""
    uvloop = pytest.importorskip(
        "uvloop", reason="uvloop ships wheels for Linux x86_64 and aarch64 only"
    )

    async def main() -> dict[str, Any]:
        async with serving(socket_path):
            with IpcClient(str(socket_path), TOKEN) as client:
                return await call(client, OP_GET_SECRET_VALUE, {"SecretId": "uv"})

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(main())["Name"] == "uv"
    finally:
        loop.close()


# --- repeated requests answered from the connection's cache ------------------------------------


class RepeatHandler:
    """Answers secrets with a `replay`, counting how often it was asked and replayed."""

    def __init__(self) -> None:
        self.asked = 0
        self.replayed = 0
        self.valid = True
        self.broken = False

    def __call__(self, _identity: WorkerIdentity, request: Request) -> Response:
        self.asked += 1
        result = {"Name": request.args["SecretId"], "SecretString": SECRET, "Asked": self.asked}
        packed = msgpack.packb(result, use_bin_type=True)
        if request.args.get("Once"):
            return Response.success(request.request_id, result, packed)
        return Response.success(request.request_id, result, packed, self.replay)

    def replay(self) -> bool:
        if self.broken:
            raise RuntimeError("replay exploded")
        if not self.valid:
            return False
        self.replayed += 1
        return True


async def test_repeated_requests_are_answered_from_the_cache_and_counted(socket_path):
    """The same request bytes get the first answer again, replayed and counted, not re-asked."""
    handler = RepeatHandler()
    async with serving(socket_path, handler) as server:
        server.measure_latency = True
        with IpcClient(str(socket_path), TOKEN) as client:
            for _ in range(3):
                assert (await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"}))["Asked"] == 1
            assert (handler.asked, handler.replayed) == (1, 2)
            # Other bytes are other requests; answers without a replay are never repeated.
            assert (await call(client, OP_GET_SECRET_VALUE, {"SecretId": "api"}))["Asked"] == 2
            for expected in (3, 4):
                answer = await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db", "Once": 1})
                assert answer["Asked"] == expected
            # The handler's world changed: the cache goes and the handler is asked again.
            handler.valid = False
            assert (await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"}))["Asked"] == 5
            handler.valid = True
            assert (await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"}))["Asked"] == 5
            assert (await call(client, OP_GET_SECRET_VALUE, {"SecretId": "api"}))["Asked"] == 6
            assert (handler.asked, handler.replayed) == (6, 3)
            # Each connection has its own cache: a second client is answered by the handler.
            with IpcClient(str(socket_path), TOKEN) as second:
                assert (await call(second, OP_GET_SECRET_VALUE, {"SecretId": "db"}))["Asked"] == 7
        assert server.requests[(OP_GET_SECRET_VALUE, "ok")] == 10
        assert server.latency[OP_GET_SECRET_VALUE].count == 10


async def test_pipelined_repeats_in_one_read_are_all_answered_in_order(socket_path):
    """Several repeated requests arriving together are each answered, with their own ids."""
    handler = RepeatHandler()
    async with serving(socket_path, handler):
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        try:
            writer.write(encode(Hello(TOKEN, os.getpid())))
            request = {"SecretId": "db"}
            writer.write(encode(Request(1, OP_GET_SECRET_VALUE, request)))
            await writer.drain()
            await reader.readexactly(struct.unpack(">I", await reader.readexactly(4))[0])
            first = await reader.readexactly(struct.unpack(">I", await reader.readexactly(4))[0])
            ids = [2, 300, 70000, 2**40, 5]
            writer.write(b"".join(encode(Request(i, OP_GET_SECRET_VALUE, request)) for i in ids))
            await writer.drain()
            answers = []
            for _ in ids:
                size = struct.unpack(">I", await reader.readexactly(4))[0]
                answers.append(msgpack.unpackb(await reader.readexactly(size)))
        finally:
            writer.close()
    assert [a["request_id"] for a in answers] == ids
    assert all(a["result"] == msgpack.unpackb(first)["result"] for a in answers)
    assert (handler.asked, handler.replayed) == (1, len(ids))


async def test_a_revoked_tokens_cached_answers_stop(socket_path):
    """Revoking a token ends its connection, cache and all: nothing more is answered."""
    handler = RepeatHandler()
    async with serving(socket_path, handler) as server:
        with IpcClient(str(socket_path), TOKEN) as client:
            await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"})
            await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"})
            server.revoke(TOKEN)
            with pytest.raises(IpcCallError) as info:
                await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"})
            assert info.value.status == 403
    assert (handler.asked, handler.replayed) == (1, 1)


def store(value: str, version_id: str) -> StoreContents:
    """A store holding one secret, "db", whose AWSCURRENT version is `value`."""
    version = SecretVersion(version_id, ("AWSCURRENT",), 1764331200.0, secret_string=value)
    secret = LocalSecret(
        resource_id="db-secret",
        arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf",
        name="db",
        labels={"AWSCURRENT": version_id},
        versions={version_id: version},
    )
    return StoreContents(secrets={secret.resource_id: secret})


def grant(*resources: str) -> Any:
    """ARN's function, allowed to read `resources`."""
    return SimpleNamespace(function_arn=ARN, readable_resources=frozenset(resources))


async def test_core_services_answers_change_with_every_index_swap(socket_path, tmp_path):
    """Rotated values are served after a redeploy or refresh; a withdrawn grant is a 403.

    Every read, from the cache or not, is counted in the audit log and the stale-read metric.
    """
    audit = AuditLog(tmp_path / "audit.jsonl")
    live = LiveSecrets(
        SecretStore(path=tmp_path / "secrets.store", key=generate_key(tmp_path / "core.key"))
    )
    await live.commit(live.current, store(SECRET, "v1"), readers=[grant("db-secret")])
    services = CoreServices(manager=None, publish=None, secrets=live, audit=audit)  # type: ignore[arg-type]
    services.count_stale_reads(0.0, 0.0)  # every read from now on counts as stale
    v1_request = {"Payload": json.dumps({"SecretId": "db", "VersionStage": ""}).encode()}

    async def value() -> str:
        return (await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"}))["SecretString"]

    async def v1_value() -> str:
        payload = (await call(client, OP_GET_SECRET_VALUE_V1, v1_request))["Payload"]
        return json.loads(payload)["SecretString"]

    async with serving(socket_path, services) as server:
        with IpcClient(str(socket_path), TOKEN) as client:
            assert [await value() for _ in range(3)] == [SECRET] * 3
            assert [await v1_value() for _ in range(3)] == [SECRET] * 3
            assert server.remembered_answers == 2
            # A deployment's commit swaps the index: the rotated value, at once, and no
            # connection keeps the old answers in memory meanwhile.
            await live.commit(
                live.current, store("rotated-value-0001", "v2"), readers=[grant("db-secret")]
            )
            assert server.remembered_answers == 0
            assert [await value() for _ in range(2)] == ["rotated-value-0001"] * 2
            assert [await v1_value() for _ in range(2)] == ["rotated-value-0001"] * 2
            # A refresh swaps it too, keeping the grants.
            await live.commit(live.current, store("rotated-value-0002", "v3"))
            assert await value() == "rotated-value-0002"
            assert await v1_value() == "rotated-value-0002"
            # A deployment that withdraws the grant: the cached answer is not served any more.
            await live.commit(live.current, store("rotated-value-0002", "v3"), readers=[grant()])
            with pytest.raises(IpcCallError) as info:
                await value()
            assert info.value.status == 403
    assert services.stale_reads == 12
    await audit.flush()
    reads = {
        entry["version_id"]: entry["count"]
        for entry in read_entries(audit.path)
        if entry["outcome"] == "allowed"
    }
    assert reads == {"v1": 6, "v2": 4, "v3": 2}


async def test_a_failing_replay_is_logged_and_the_handler_answers(socket_path, logs):
    """A replay that raises costs its cache and one log line; the request is still answered."""
    handler = RepeatHandler()
    async with serving(socket_path, handler):
        with IpcClient(str(socket_path), TOKEN) as client:
            await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"})
            handler.broken = True
            assert (await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"}))["Asked"] == 2
    assert len(events(logs, "ipc.replay.failed")) == 1
