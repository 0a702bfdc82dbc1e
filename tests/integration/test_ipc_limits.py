# SPDX-License-Identifier: Apache-2.0
"""The IPC socket under attack, on a real `edge run` core: floods before and after login."""

from __future__ import annotations

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

from edge.demo.reference import write_v1_package
from edge.ipc.protocol import MAX_FRAME_SIZE
from edge.ipc.server import DESCRIPTOR_RESERVE, MAX_CONNECTIONS_PER_WORKER, TOO_MANY_REASON
from tests.support.core import REPO, CoreProcess, edge_cli, secret_resource
from tests.support.env import Env
from tests.support.functions import function, function_arn
from tests.support.services import AWS_TEST_ENV

pytestmark = pytest.mark.network

#: What the floods may add to the core's resident memory, during and after.
RSS_MARGIN_KB = 20 * 1024
#: The core's descriptor limit in the function flood: low enough that 2,000 logged-in
#: connections would exhaust it, as ~19,000 exhausted a core's 20,000.
CORE_NOFILE = 1024

#: A V1 handler that opens connections to the core's socket with its own worker's token (so
#: the kernel's peer credentials match: it is the worker), keeps those the core welcomes, then
#: goes on opening more until told how long to hold. It prints what the core answered.
FLOOD_SOURCE = b"""
import json, os, socket, struct, time

import msgpack


def _frame(obj):
    payload = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload


def _first_frame(sock):
    data = b""
    try:
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    return msgpack.unpackb(data[4 : 4 + struct.unpack(">I", data[:4])[0]])


def _count(answers, key):
    answers[key] = answers.get(key, 0) + 1


def _attempt(path, hello, batch, answers, held):
    opened = []
    for _ in range(batch):
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            _count(answers, "socket failed: " + exc.strerror)
            continue
        sock.settimeout(10)
        try:
            sock.connect(path)
            sock.sendall(hello)
        except OSError as exc:
            sock.close()
            _count(answers, "connect failed: " + exc.strerror)
            continue
        opened.append(sock)
    for sock in opened:
        frame = _first_frame(sock)
        if frame is None:
            key = "closed"
        elif frame["type"] == "goodbye":
            key = "goodbye: " + frame["reason"]
        else:
            key = frame["type"]
        _count(answers, key)
        if key == "welcome":
            held.append(sock)
        else:
            sock.close()


def flood(event, context):
    path = os.environ["EDGE_IPC_SOCKET"]
    token = os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    hello = _frame({"type": "hello", "token": token, "pid": os.getpid()})
    answers, held = {}, []
    for _ in range(event["connections"] // 50):
        _attempt(path, hello, 50, answers, held)
    print("flood " + json.dumps(answers), flush=True)
    until = time.monotonic() + event["hold_seconds"]
    while time.monotonic() < until:
        _attempt(path, hello, 10, {}, held)
        time.sleep(0.01)
    return {"held": len(held)}
"""


def rss_kb(pid: int) -> int:
    """The process's resident memory (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def open_descriptors(pid: int) -> int:
    """How many descriptors the process has open."""
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


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


def partial_frames(path: Path, connections: int) -> None:
    """Announce a 1 MiB frame, send all of it but one byte, hang up; `connections` times."""
    header = struct.pack(">I", MAX_FRAME_SIZE)
    body = b"x" * (MAX_FRAME_SIZE - 1)
    for _ in range(connections):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect(str(path))
            sock.sendall(header + body)
        except OSError:
            pass  # the core hung up on the header: the point
        finally:
            sock.close()


def wait_until(condition: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


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
    before = rss_kb(pid)
    with Sampler(lambda: rss_kb(pid)) as during:
        threads = [
            threading.Thread(target=partial_frames, args=(socket_path, 40)) for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert during.peak - before <= RSS_MARGIN_KB, (before, during.peak)
    wait_until(
        lambda: rss_kb(pid) - before <= RSS_MARGIN_KB,
        timeout=10,
        what=f"RSS back within 20 MB of {before} KiB (now {rss_kb(pid)} KiB)",
    )
    # 340 refused connections, a handful of lines: one per event name per interval.
    assert env.core.count("ipc.protocol.error") <= 3


class LimitedCore(CoreProcess):
    """A core process started under `prlimit`: its descriptor limit holds from its first step."""

    def start(self) -> None:
        """`CoreProcess.start`, the command run under `prlimit --nofile`."""
        limit = f"--nofile={CORE_NOFILE}:{CORE_NOFILE}"
        command = [sys.executable, "-m", "edge", "run", "--config", str(self.config)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["prlimit", limit, *command],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **AWS_TEST_ENV},
                cwd=REPO,
            )


@pytest.fixture
def limited_core(env: Env) -> Iterator[Env]:
    """`env`, its core restarted with a descriptor limit of `CORE_NOFILE` (soft and hard)."""
    env.core.stop()
    core = LimitedCore(config=env.core.config, log_path=env.core.log_path)
    env.core = core
    core.start()
    try:
        core.wait_for_event("mqtt.connected", after=1)
        yield env
    finally:
        # `env` stops the core it started, not this one.
        if core.proc is not None:
            core.stop()


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
    digest = hashlib.sha256(write_v1_package(zipped, {"flood.py": FLOOD_SOURCE}))
    code = {"Uri": zipped.as_uri(), "Sha256": digest.hexdigest()}
    flooder = function("flooder", "flood.flood", code, memory_kb=65536, timeout=120)
    env.operator.wait_status(env.operator.deploy(functions=[flooder]), "Success")
    before = open_descriptors(pid)

    answer: dict[str, Any] = {}
    payload = json.dumps({"connections": 2000, "hold_seconds": 60})

    def run_invoke() -> None:
        args = ("--config", str(env.config), "--function-arn", function_arn("flooder"))
        answer["result"] = edge_cli("invoke", *args, "--payload", payload, timeout=120)

    invoking = threading.Thread(target=run_invoke)
    with Sampler(lambda: open_descriptors(pid)) as descriptors:
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
