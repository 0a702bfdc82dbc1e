# SPDX-License-Identifier: Apache-2.0
"""Where a read's microseconds go: each layer timed in a worker-like process, and how it is run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

from bench.ipcbench.clients import worker_environment
from bench.ipcbench.constants import REPO, SCRIPT, SECRET_NAME, SECRETS_MANAGER_ARN
from edge.ipc.protocol import OP_GET_SECRET_VALUE

#: Calls per timed batch in the breakdown, and batches (the median batch is kept).
BREAKDOWN_CALLS = 2000
BREAKDOWN_BATCHES = 51
#: Calls per batch in the first-read breakdown: each one is a round trip.
FIRST_READ_BREAKDOWN_CALLS = 200


def run_breakdown(socket_path: str, token: str) -> None:
    """Time each layer of a cached greengrasssdk read in this process; print µs per call.

    The process is a worker to the bench's IPC server (the core's own handler, watches
    included): its cache turns on as in a real worker. Each layer is timed alone, so the
    differences say where a cached read's microseconds go.
    """
    worker_environment(socket_path, token, cache=True)
    sys.path.insert(0, str(REPO / "edge" / "child" / "compat"))
    import greengrasssdk  # noqa: PLC0415
    from greengrass_ipc_python_sdk.ipc_client import IPCClient  # noqa: PLC0415

    from edge.child import function  # noqa: PLC0415
    from edge.child.cache import cache_key  # noqa: PLC0415
    from edge.ipc.protocol import OP_GET_SECRET_VALUE_V1  # noqa: PLC0415

    sdk = greengrasssdk.client("secretsmanager")
    sdk.get_secret_value(SecretId=SECRET_NAME)  # the first read: starts the watch
    deadline = time.monotonic() + 10
    while not function.answers_cached() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not function.answers_cached():
        raise RuntimeError("the cache did not turn on")
    sdk.get_secret_value(SecretId=SECRET_NAME)  # a miss, now stored
    payload = json.dumps({"SecretId": SECRET_NAME}).encode()
    args = {"Payload": payload}
    compat = IPCClient()
    cache = function._cache  # noqa: SLF001 - timing the layer itself
    key = cache_key(OP_GET_SECRET_VALUE_V1, args)
    answer_json = function.answer(OP_GET_SECRET_VALUE_V1, args)["Payload"]

    def through_compat() -> None:
        compat.get_work_result(SECRETS_MANAGER_ARN, compat.post_work(SECRETS_MANAGER_ARN, payload))

    layers = {
        "greengrasssdk get_secret_value (cache hit), whole call": lambda: sdk.get_secret_value(
            SecretId=SECRET_NAME
        ),
        "compat IPCClient post_work + get_work_result (cache hit)": through_compat,
        "edge.child.function.answer (cache hit)": lambda: function.answer(
            OP_GET_SECRET_VALUE_V1, args
        ),
        "cache_key + AnswerCache.lookup": lambda: cache.lookup(
            cache_key(OP_GET_SECRET_VALUE_V1, args)
        ),
        "AnswerCache.lookup alone (dict get + read count)": lambda: cache.lookup(key),
        "json.loads of the answer (the SDK's own parse)": lambda: json.loads(answer_json),
        "miss bookkeeping: ticket + store (lock)": lambda: cache.store(
            cache.ticket(), key, {"Payload": answer_json}
        ),
    }
    print(json.dumps(time_layers(layers, BREAKDOWN_CALLS)), flush=True)


def time_layers(layers: dict[str, Callable[[], object]], calls: int) -> dict[str, float]:
    """µs per call of each layer: the median of BREAKDOWN_BATCHES batches of `calls` calls."""
    clock = time.perf_counter_ns
    # Layers interleaved batch by batch, so a change in the machine's load hits them alike.
    batches: dict[str, list[float]] = {name: [] for name in layers}
    for _ in range(BREAKDOWN_BATCHES):
        for name, call in layers.items():
            start = clock()
            for _ in range(calls):
                call()
            batches[name].append((clock() - start) / calls / 1000)
    return {name: sorted(times)[len(times) // 2] for name, times in batches.items()}


def run_first_read_breakdown(socket_path: str, token: str) -> None:
    """Time a first read (every call a round trip) through each layer; print µs per call.

    The same worker-like process as `run_breakdown`, its cache off, against the bench's IPC
    server with the core's own handler: each layer adds its own code to the same round trip,
    from the native request to the whole `greengrasssdk` call.
    """
    worker_environment(socket_path, token, cache=False)
    sys.path.insert(0, str(REPO / "edge" / "child" / "compat"))
    import greengrasssdk  # noqa: PLC0415
    from greengrass_ipc_python_sdk.ipc_client import IPCClient  # noqa: PLC0415

    from edge.child import function  # noqa: PLC0415
    from edge.ipc.protocol import OP_GET_SECRET_VALUE_V1  # noqa: PLC0415

    sdk = greengrasssdk.client("secretsmanager")
    native = {"SecretId": SECRET_NAME}
    payload = json.dumps({"SecretId": SECRET_NAME}).encode()
    v1 = {"Payload": payload}
    compat = IPCClient()

    def through_compat() -> None:
        compat.get_work_result(SECRETS_MANAGER_ARN, compat.post_work(SECRETS_MANAGER_ARN, payload))

    layers: dict[str, Callable[[], object]] = {
        "edge.child.function.answer, native request and answer": lambda: function.answer(
            OP_GET_SECRET_VALUE, native
        ),
        "edge.child.function.answer, the SDK's JSON request and the core's JSON answer": (
            lambda: function.answer(OP_GET_SECRET_VALUE_V1, v1)
        ),
        "compat IPCClient post_work + get_work_result": through_compat,
        "greengrasssdk get_secret_value, whole call": lambda: sdk.get_secret_value(
            SecretId=SECRET_NAME
        ),
    }
    print(json.dumps(time_layers(layers, FIRST_READ_BREAKDOWN_CALLS)), flush=True)


def breakdown(role: str, socket_path: str, token: str, cpus: set[int] | None = None) -> str:
    """Run a breakdown's worker-like process against the IPC server; its JSON line.

    `cpus`: where the process runs (with `--pin`, the server's CPU, as a lone client's).
    """
    done = subprocess.run(
        [sys.executable, SCRIPT, role, socket_path, token],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
    )
    if done.returncode != 0:
        raise RuntimeError(f"the breakdown failed:\n{done.stderr}")
    return done.stdout
