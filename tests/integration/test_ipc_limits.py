# SPDX-License-Identifier: Apache-2.0
"""The IPC socket's limits, on the real server over a real socket and on a real `edge run`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest
import structlog.testing

from edge.errors import IpcCallError
from edge.fixtures.core import CoreProcess, edge_cli, secret_resource
from edge.fixtures.procfs import open_fds, vm_rss_kib
from edge.fixtures.reference import write_v1_package
from edge.fixtures.services import AWS_TEST_ENV
from edge.ipc.client import IpcClient
from edge.ipc.protocol import (
    MAX_FRAME_SIZE,
    MAX_HANDSHAKE_FRAME_SIZE,
    OP_GET_SECRET_VALUE,
    Hello,
    encode,
)
from edge.ipc.server import (
    DESCRIPTOR_RESERVE,
    DESCRIPTORS_REASON,
    EVICTED_REASON,
    MAX_CONNECTIONS_PER_WORKER,
    MAX_UNAUTHENTICATED_CONNECTIONS,
    TOO_MANY_REASON,
    WorkerIdentity,
)
from tests.integration.test_ipc import (
    ARN,
    OTHER_TOKEN,
    TOKEN,
    call,
    events,
    frames,
    serving,
    short_socket_path,
)
from tests.support import REPO
from tests.support.env import Env
from tests.support.functions import function, function_arn

#: What the floods may add to the core's resident memory, during and after.
RSS_MARGIN_KB = 20 * 1024
#: The core's descriptor limit in the function flood: low enough that 2,000 logged-in
#: connections would exhaust it, as ~19,000 exhausted a core's 20,000.
CORE_NOFILE = 1024

#: A V1 handler that floods the socket with its own worker's token (see its docstring).
FLOOD_FUNCTION = REPO / "bench" / "functions" / "ipc_flood.py"


def core_pid(env: Env) -> int:
    assert env.core.proc is not None
    return env.core.proc.pid


class Sampler:
    """Samples a value in a thread until stopped; keeps the largest seen."""

    def __init__(self, sample: Any) -> None:
        self._sample = sample
        self._stop = threading.Event()
        self.peak = sample()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(0.01)

    def __enter__(self) -> Self:
        """Start sampling."""
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop sampling, with one last sample."""
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self._sample())


def partial_frames(path: Path, connections: int, token: str | None = None) -> None:
    """Announce a 1 MiB frame, send all of it but one byte, hang up; `connections` times.

    With a `token`, each connection logs in first (and waits for the Welcome), so the frame is
    one the core accepts to buffer: the whole megabyte is read before the connection fails.
    """
    hello = encode(Hello(token, os.getpid())) if token else b""
    data = struct.pack(">I", MAX_FRAME_SIZE) + b"x" * (MAX_FRAME_SIZE - 1)
    for _ in range(connections):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            try:
                sock.connect(str(path))
                if hello:
                    sock.sendall(hello)
                    assert b"welcome" in sock.recv(4096)
                sock.sendall(data)
            except OSError:
                pass  # the core hung up on the header: the point


def flood_partial_frames(path: Path, *, threads: int, each: int, token: str | None = None) -> None:
    """`partial_frames` from `threads` threads at once."""
    running = [
        threading.Thread(target=partial_frames, args=(path, each, token)) for _ in range(threads)
    ]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(120)


def wait_until(condition: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


@pytest.mark.network
def test_a_flood_of_partial_frames_before_login_leaves_the_core_memory_as_it_was(
    env: Env,
) -> None:
    """Hundreds of parallel 1 MiB frames left one byte short cost the core no lasting memory.

    The core's RSS stays within 20 MB of where it started while the flood runs and after it,
    with no help from a forced garbage collection, and its log holds a few lines about it.
    """
    pid = core_pid(env)
    socket_path = env.state_dir / "ipc" / "core.sock"
    partial_frames(socket_path, 20)  # warm up whatever a first refusal allocates once
    wait_until(lambda: env.core.count("ipc.protocol.error") > 0, timeout=10, what="a refusal")
    before = vm_rss_kib(pid)
    with Sampler(lambda: vm_rss_kib(pid)) as during:
        flood_partial_frames(socket_path, threads=8, each=40)
    assert during.peak - before <= RSS_MARGIN_KB, (before, during.peak)
    wait_until(
        lambda: vm_rss_kib(pid) - before <= RSS_MARGIN_KB,
        timeout=10,
        what=f"RSS back within 20 MB of {before} KiB (now {vm_rss_kib(pid)} KiB)",
    )
    # 340 refused connections, a handful of lines: one per event name per interval.
    assert env.core.count("ipc.protocol.error") <= 3


class LimitedCore(CoreProcess):
    """A core process started under `prlimit`: its descriptor limit holds from its first step."""

    nofile: tuple[int, int] = (CORE_NOFILE, CORE_NOFILE)

    def start(self) -> None:
        """`CoreProcess.start`, the command run under `prlimit --nofile=SOFT:HARD`."""
        limit = f"--nofile={self.nofile[0]}:{self.nofile[1]}"
        command = [sys.executable, "-m", "edge", "run", "--config", str(self.config)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["prlimit", limit, *command],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **AWS_TEST_ENV},
                cwd=REPO,
            )


@pytest.mark.network
def test_connections_that_fail_after_login_give_their_memory_back(env: Env) -> None:
    """A logged-in peer's megabyte frames cut short: the core's memory comes back at once.

    After login a frame may be a megabyte, so each of these connections makes the core buffer
    one before it fails. Nothing of a failed connection is kept, so the RSS of the real core
    stays within 20 MB of where it started, during and after, with no forced garbage
    collection (`edge invoke`'s token, which binds no pid, stands in for a worker's).
    """
    pid = core_pid(env)
    socket_path = env.state_dir / "ipc" / "core.sock"
    token = (env.state_dir / "ipc" / "operator.token").read_text()
    partial_frames(socket_path, 10, token)  # warm up
    wait_until(lambda: env.core.count("ipc.protocol.error") > 0, timeout=10, what="a failure")
    before = vm_rss_kib(pid)
    with Sampler(lambda: vm_rss_kib(pid)) as during:
        flood_partial_frames(socket_path, threads=4, each=80, token=token)
    assert during.peak - before <= RSS_MARGIN_KB, (before, during.peak)
    wait_until(
        lambda: vm_rss_kib(pid) - before <= RSS_MARGIN_KB,
        timeout=10,
        what=f"RSS back within 20 MB of {before} KiB (now {vm_rss_kib(pid)} KiB)",
    )


@pytest.fixture
def limited_core(env: Env, request: pytest.FixtureRequest) -> Iterator[Env]:
    """`env`, its core restarted with a descriptor limit of `CORE_NOFILE` (soft and hard).

    Parametrize it indirectly with (soft, hard) for other limits.
    """
    env.core.stop()
    core = LimitedCore(config=env.core.config, log_path=env.core.log_path)
    core.nofile = getattr(request, "param", core.nofile)
    env.core = core
    core.start()
    try:
        core.wait_for_event("mqtt.connected", after=1)
        yield env
    finally:
        # `env` stops the core it started, not this one.
        if core.proc is not None:
            core.stop()


@pytest.mark.network
def test_a_function_opening_2000_connections_is_capped_and_a_deployment_still_succeeds(
    limited_core: Env, tmp_path: Path
) -> None:
    """A function flooding the socket with its own token keeps 16 connections, no more.

    Each Hello past the 16th gets a Goodbye that says why; the core's descriptors stay far
    below its limit, and a deployment made while the flood goes on succeeds.
    """
    env = limited_core
    pid = core_pid(env)
    zipped = tmp_path / "flood.zip"
    package = write_v1_package(zipped, {"ipc_flood.py": FLOOD_FUNCTION.read_bytes()})
    code = {"Uri": zipped.as_uri(), "Sha256": hashlib.sha256(package).hexdigest()}
    flooder = function("flooder", "ipc_flood.flood", code, memory_kb=65536, timeout=120)
    env.operator.wait_status(env.operator.deploy(functions=[flooder]), "Success")
    before = open_fds(pid)

    answer: dict[str, Any] = {}
    payload = json.dumps({"connections": 2000, "hold_seconds": 60})

    def run_invoke() -> None:
        args = ("--config", str(env.config), "--function-arn", function_arn("flooder"))
        answer["result"] = edge_cli("invoke", *args, "--payload", payload, timeout=120)

    invoking = threading.Thread(target=run_invoke)
    with Sampler(lambda: open_fds(pid)) as descriptors:
        invoking.start()
        printed = env.core.wait_for_event("worker.output", stream="stdout", timeout=90)
        # The flood goes on (a new connection every few ms) while a deployment is made.
        arn, _, _ = env.create_secret("during/flood")
        during = env.operator.deploy([secret_resource("s", arn)], functions=[flooder])
        status = env.operator.final_status(during, timeout=60)
        invoking.join(130)
    assert status["DeploymentStatus"] == "Success", status
    answers = json.loads(printed["line"].removeprefix("flood "))
    assert answers == {
        "welcome": MAX_CONNECTIONS_PER_WORKER,
        f"goodbye: {TOO_MANY_REASON}": 2000 - MAX_CONNECTIONS_PER_WORKER,
    }
    assert descriptors.peak < CORE_NOFILE - DESCRIPTOR_RESERVE
    assert descriptors.peak - before < 100, (before, descriptors.peak)
    assert env.core.count("ipc.refused.too_many_for_worker") <= 10


# --- the server itself, over a real socket ------------------------------------------------------


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A socket path in a short temporary directory."""
    with short_socket_path() as path:
        yield path


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Every test's log events."""
    with structlog.testing.capture_logs() as captured:
        yield captured


async def until(condition: Any, *, timeout: float = 10) -> None:
    """Wait, serving the loop meanwhile, until `condition()` holds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def raw(path: Path, data: bytes = b"") -> Any:
    """A connection without a client: send `data`; yields (reader, writer)."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        if data:
            writer.write(data)
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_to_end(reader: asyncio.StreamReader, timeout: float = 5) -> list[dict[str, Any]]:
    """The frames the server sends until it closes the connection."""
    async with asyncio.timeout(timeout):
        return frames(await reader.read())


async def first_frame(reader: asyncio.StreamReader, timeout: float = 5) -> dict[str, Any]:
    """The server's first frame on a connection ({} if it closed without one)."""
    async with asyncio.timeout(timeout):
        try:
            header = await reader.readexactly(4)
            return frames(header + await reader.readexactly(struct.unpack(">I", header)[0]))[0]
        except asyncio.IncompleteReadError:
            return {}


async def test_a_frame_over_4_kib_before_login_is_refused_from_its_header(socket_path, logs):
    """Announcing more than a Hello can be gets the connection closed at once, not buffered."""
    async with serving(socket_path, hello_timeout=60) as server:
        header = struct.pack(">I", MAX_HANDSHAKE_FRAME_SIZE + 1)
        async with raw(socket_path, header + b"x" * 1000) as (reader, _writer):
            assert await read_to_end(reader) == []
        assert server.connections["protocol_error"] == 1
    (error,) = events(logs, "ipc.protocol.error")
    assert "1 to 4096 bytes before the handshake" in error["problem"]


async def test_a_17th_connection_of_one_worker_is_refused_and_its_16_keep_working(socket_path):
    """One worker's token holds 16 connections; the 17th is told why; closing one frees a slot."""
    async with serving(socket_path) as server:
        clients = [IpcClient(str(socket_path), TOKEN) for _ in range(MAX_CONNECTIONS_PER_WORKER)]
        try:
            for client in clients:
                await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"})
            with IpcClient(str(socket_path), TOKEN) as extra, pytest.raises(IpcCallError) as info:
                await call(extra, OP_GET_SECRET_VALUE, {"SecretId": "db"})
            assert info.value.status == 403
            assert TOO_MANY_REASON in info.value.message
            assert server.connections["refused_per_worker"] == 1
            # Another worker is not affected, and the 16 keep being served.
            server.register(OTHER_TOKEN, WorkerIdentity(function_arn=ARN, uid=os.getuid()))
            with IpcClient(str(socket_path), OTHER_TOKEN) as other:
                await call(other, OP_GET_SECRET_VALUE, {"SecretId": "db"})
            for client in clients:
                assert (await call(client, OP_GET_SECRET_VALUE, {"SecretId": "x"}))["Name"] == "x"
            clients.pop().close()
            await until(lambda: server.active_connections == MAX_CONNECTIONS_PER_WORKER - 1)
            with IpcClient(str(socket_path), TOKEN) as again:
                await call(again, OP_GET_SECRET_VALUE, {"SecretId": "db"})
        finally:
            for client in clients:
                client.close()


async def test_connections_that_never_log_in_are_capped_the_oldest_going_first(socket_path):
    """Past 64 silent connections the oldest is closed, so a worker still gets in and is served."""
    async with (
        serving(socket_path, hello_timeout=60) as server,
        contextlib.AsyncExitStack() as stack,
    ):
        silent = [
            await stack.enter_async_context(raw(socket_path))
            for _ in range(MAX_UNAUTHENTICATED_CONNECTIONS)
        ]
        await until(lambda: server.active_connections == MAX_UNAUTHENTICATED_CONNECTIONS)
        await stack.enter_async_context(raw(socket_path))
        oldest_reader, _ = silent[0]
        assert await read_to_end(oldest_reader) == [{"type": "goodbye", "reason": EVICTED_REASON}]
        await until(lambda: server.connections["evicted"] == 1)
        assert server.active_connections == MAX_UNAUTHENTICATED_CONNECTIONS
        with IpcClient(str(socket_path), TOKEN) as client:
            assert (await call(client, OP_GET_SECRET_VALUE, {"SecretId": "db"}))["Name"] == "db"
        assert server.connections["evicted"] == 2


async def test_a_worker_waiting_for_its_pid_is_not_evicted_by_a_flood(socket_path):
    """A Hello with a starting worker's token outlives 64 silent strangers, then is served."""
    async with (
        serving(socket_path, hello_timeout=60) as server,
        contextlib.AsyncExitStack() as stack,
    ):
        server.register(OTHER_TOKEN, WorkerIdentity(function_arn=ARN, pid_pending=True))
        with IpcClient(str(socket_path), OTHER_TOKEN) as starting:
            answer = asyncio.create_task(call(starting, OP_GET_SECRET_VALUE, {"SecretId": "db"}))
            await until(lambda: server.active_connections == 1)
            for _ in range(MAX_UNAUTHENTICATED_CONNECTIONS + 1):
                await stack.enter_async_context(raw(socket_path))
            await until(lambda: server.connections["evicted"] == 1)
            server.register(OTHER_TOKEN, WorkerIdentity(function_arn=ARN, pid=os.getpid()))
            assert (await answer)["Name"] == "db"


@pytest.fixture
def low_descriptor_limit() -> Iterator[int]:
    """This process's soft RLIMIT_NOFILE set 200 above what it has open; yields that limit."""
    import resource  # noqa: PLC0415

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = open_fds(os.getpid()) + 200
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_connections_are_refused_before_descriptors_run_short(
    socket_path, low_descriptor_limit
):
    """Once connections would leave fewer than 128 descriptors free, new ones are refused.

    The core's own work (here: opening files) still finds the descriptors it needs.
    """
    tokens = [f"worker-token-{i:02d}-0123456789abcdef" for i in range(8)]
    answers: list[str] = []
    async with serving(socket_path) as server, contextlib.AsyncExitStack() as held:
        for token in tokens:
            server.register(token, WorkerIdentity(function_arn=ARN, uid=os.getuid()))
        for i in range(60):
            hello = encode(Hello(tokens[i % len(tokens)], os.getpid()))
            async with contextlib.AsyncExitStack() as attempt:
                reader, _writer = await attempt.enter_async_context(raw(socket_path, hello))
                frame = await first_frame(reader)
                answers.append(frame.get("reason", frame.get("type", "closed")))
                if frame.get("type") == "welcome":
                    held.push_async_exit(attempt.pop_all())
        assert server.connections["refused_descriptors"] >= 1
        # This process is both ends (the server's connections and the clients holding them);
        # give or take the listing's own descriptor and a client's end, the reserve is free.
        assert open_fds(os.getpid()) <= low_descriptor_limit - DESCRIPTOR_RESERVE + 3
        with contextlib.ExitStack() as files:
            for _ in range(DESCRIPTOR_RESERVE - 8):
                files.enter_context(Path(os.devnull).open("rb"))
    assert set(answers) == {"welcome", DESCRIPTORS_REASON}, answers
    assert answers.index(DESCRIPTORS_REASON) > 10, answers


async def test_a_burst_of_1000_refused_connections_logs_a_handful_of_lines_with_counts(
    socket_path, logs
):
    """A thousand wrong tokens write a few warnings, whose counts add up to the thousand."""
    hello = encode(Hello(OTHER_TOKEN, os.getpid()))

    async def refused() -> None:
        async with raw(socket_path, hello) as (reader, _writer):
            await read_to_end(reader, timeout=30)

    async with serving(socket_path) as server:
        for _ in range(20):
            await asyncio.gather(*(refused() for _ in range(50)))
        assert server.connections["refused"] == 1000
    lines = events(logs, "ipc.auth.refused")
    assert 2 <= len(lines) <= 5, lines
    assert len(lines) + sum(line["suppressed"] for line in lines) == 1000
    assert lines[0]["suppressed"] == 0
    assert lines[0]["problem"] == "unknown or revoked token"


@pytest.mark.network
@pytest.mark.parametrize("limited_core", [(256, 4096)], indirect=True)
def test_the_core_raises_its_soft_descriptor_limit_to_the_hard_one(limited_core: Env) -> None:
    """Started with a soft limit of 256 under a hard one of 4096, the core works with 4096.

    The IPC's reserve is counted below the soft limit; a distribution's default soft 1024
    would refuse workers long before the machine's real limit.
    """
    event = limited_core.core.wait_for_event("core.descriptor_limit_raised")
    assert (event["was"], event["soft"]) == (256, 4096)
    limits = Path(f"/proc/{core_pid(limited_core)}/limits").read_text()
    (line,) = [line for line in limits.splitlines() if line.startswith("Max open files")]
    assert line.split()[3:5] == ["4096", "4096"]
    listening = limited_core.core.wait_for_event("ipc.listening", after=1)
    assert listening["descriptor_ceiling"] == 4096 - DESCRIPTOR_RESERVE
