# SPDX-License-Identifier: Apache-2.0
"""The client processes: each warms up, waits for go, times its calls, prints what it measured."""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
import sys
import time
from typing import Any

from bench.ipcbench.constants import (
    SDK_ACCOUNT,
    SECRET_NAME,
    SECRETS_MANAGER_ARN,
    WARMUP_CALLS,
)
from edge.ipc.protocol import OP_GET_SECRET_VALUE


def client_loop(call: Any, seconds: float) -> None:
    """Warm up, say ready, wait for go, call for `seconds`, print latencies and CPU time."""
    for _ in range(WARMUP_CALLS):
        call()
    print("ready", flush=True)
    sys.stdin.readline()
    latencies: list[int] = []
    append = latencies.append
    clock = time.perf_counter_ns
    cpu_before = time.process_time()
    end = clock() + int(seconds * 1e9)
    now = clock()
    while now < end:
        call()
        after = clock()
        append(after - now)
        now = after
    cpu = time.process_time() - cpu_before
    print(json.dumps({"latencies_ns": latencies, "cpu_seconds": cpu}), flush=True)


def worker_environment(socket_path: str, token: str, *, cache: bool) -> None:
    """Make this process look like a worker to `edge.child.function` (import it after)."""
    os.environ["EDGE_IPC_SOCKET"] = socket_path
    os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = token
    os.environ["SECRETS_MANAGER_FUNCTION_ARN"] = SECRETS_MANAGER_ARN
    # greengrasssdk answers from a mock unless it runs as a function.
    os.environ["MY_FUNCTION_ARN"] = f"arn:aws:lambda:us-east-1:{SDK_ACCOUNT}:function:bench:1"
    os.environ["EDGE_ANSWER_CACHE"] = "on" if cache else "off"


def run_ipc_client(socket_path: str, token: str, seconds: float) -> None:
    """A worker-like process reading through `edge.child.function` with its cache off.

    Every read then takes the path of a first read: the cache is consulted and missed, then one
    round trip on the worker's shared `IpcClient`.
    """
    worker_environment(socket_path, token, cache=False)
    from edge.child.function import answer  # noqa: PLC0415

    args = {"SecretId": SECRET_NAME, "VersionStage": "AWSCURRENT"}

    def call() -> None:
        if answer(OP_GET_SECRET_VALUE, args)["Name"] != SECRET_NAME:
            raise RuntimeError("wrong answer")

    client_loop(call, seconds)


def run_bare_client(socket_path: str, seconds: float) -> None:
    """The reference's client: one blocking socket, msgpack in and out, nothing else."""
    import msgpack  # noqa: PLC0415

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    header = struct.Struct(">I")
    ids = iter(range(1, 2**62))
    args = {"SecretId": SECRET_NAME, "VersionStage": "AWSCURRENT"}

    def call() -> None:
        body = msgpack.packb(
            {"type": "request", "request_id": next(ids), "op": OP_GET_SECRET_VALUE, "args": args}
        )
        sock.sendall(header.pack(len(body)) + body)
        data = sock.recv(65536)
        while len(data) < header.size or len(data) < header.size + header.unpack_from(data)[0]:
            data += sock.recv(65536)
        if msgpack.unpackb(data[header.size :])["result"]["Name"] != SECRET_NAME:
            raise RuntimeError("wrong answer")

    client_loop(call, seconds)
    sock.close()


def run_http_client(port: int, token: str, seconds: float) -> None:
    """A Lambda-extension-style client: keep-alive http.client, JSON decoded."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    path = f"/secretsmanager/get?secretId={SECRET_NAME}"
    headers = {"X-Aws-Parameters-Secrets-Token": token}

    def call() -> None:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        if json.loads(response.read())["Name"] != SECRET_NAME:
            raise RuntimeError("wrong answer")

    client_loop(call, seconds)
    conn.close()
