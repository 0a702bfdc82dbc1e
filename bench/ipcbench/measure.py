# SPDX-License-Identifier: Apache-2.0
"""The conductor's measurement of a mode: a server, N clients started together, their figures."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.ipcbench.constants import SCRIPT


@dataclass
class Run:
    """One measured run of one mode."""

    requests_per_second: float
    p50_us: float
    p99_us: float
    server_cpu_us: float
    client_cpu_us: float


@dataclass
class Mode:
    """A server and a client count, with its runs."""

    kind: str  # "ipc", "http", "sdk", "sdk-first" or "bare"
    clients: int
    runs: list[Run] = field(default_factory=list)

    @property
    def median(self) -> Run:
        """The run with the median throughput."""
        ordered = sorted(self.runs, key=lambda r: r.requests_per_second)
        return ordered[len(ordered) // 2]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn(*args: str) -> subprocess.Popen[str]:
    """Start bench/ipc.py in another role, with pipes to talk to it."""
    return subprocess.Popen(
        [sys.executable, SCRIPT, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@contextlib.contextmanager
def server(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """A server process, stopped by closing its stdin."""
    proc = spawn(*args)
    try:
        info = json.loads(proc.stdout.readline())
        yield proc, info
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(
    server_pid: int, client_args: list[str], clients: int, seconds: float, *, pin: bool
) -> Run:
    """Run `clients` client processes together and gather what they measured."""
    procs = [spawn(*client_args) for _ in range(clients)]
    if pin and clients == 1:
        os.sched_setaffinity(procs[0].pid, os.sched_getaffinity(server_pid))
    try:
        for proc in procs:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a client failed to start")
        before = cpu_seconds(server_pid)
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        latencies: list[int] = []
        client_cpu = 0.0
        for proc in procs:
            result = json.loads(proc.stdout.readline())
            latencies.extend(result["latencies_ns"])
            client_cpu += result["cpu_seconds"]
        after = cpu_seconds(server_pid)
    finally:
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            proc.wait(10)
    latencies.sort()
    count = len(latencies)
    return Run(
        requests_per_second=count / seconds,
        p50_us=latencies[count // 2] / 1000,
        p99_us=latencies[min(count - 1, int(count * 0.99))] / 1000,
        server_cpu_us=(after - before) / count * 1e6,
        client_cpu_us=client_cpu / count * 1e6,
    )
