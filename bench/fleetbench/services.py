# SPDX-License-Identifier: Apache-2.0
"""The fleet's services: Mosquitto, and moto's latency proxy in a process that counts the calls."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.fleetbench.constants import SCRIPT


def start_broker(workdir: Path, stack: contextlib.ExitStack) -> Any:
    """Mosquitto on a free loopback port, publishing `$SYS` every second."""
    from edge.fixtures.services import Mosquitto, free_port, wait_for_port  # noqa: PLC0415

    workdir.mkdir(parents=True)
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nsys_interval 1\n"
        f"persistence true\npersistence_location {workdir}/\n"
        # A control plane follows every core's statuses on one connection (a replica's), so a
        # rollout's reports arrive there in bursts; past Mosquitto's default queue of 1,000
        # messages per client they would be dropped (docs/cloud.md, Running at fleet scale).
        "max_queued_messages 100000\n"
        f"log_dest file {workdir}/mosquitto.log\n"
    )
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    broker = Mosquitto(port=port, workdir=workdir, proc=proc)
    stack.callback(broker.stop)
    wait_for_port(port)
    return broker


class CountingProxy:
    """bench/latency_proxy.py in a process of its own, asked for its counters over a pipe."""

    def __init__(self, upstream: str, delay_ms: float, log: Path) -> None:
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, SCRIPT, "--serve-proxy", upstream, "--delay-ms", str(delay_ms)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert self.proc.stdout is not None  # noqa: S101 - PIPE was asked for
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.close()
            raise RuntimeError(f"latency proxy failed to start; see {log}")

    def _ask(self, command: str) -> dict[str, int]:
        assert self.proc.stdin is not None  # noqa: S101
        assert self.proc.stdout is not None  # noqa: S101
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        counts: dict[str, int] = json.loads(self.proc.stdout.readline())
        return counts

    def reset(self) -> None:
        """Zero the counters."""
        self._ask("reset")

    def counts(self) -> dict[str, int]:
        """Requests so far, by operation (X-Amz-Target's suffix, or the path for S3)."""
        return self._ask("counts")

    def close(self) -> None:
        """Stop the proxy (it exits when its stdin closes)."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def serve_proxy(upstream: str, delay_ms: float) -> None:
    """The proxy process: print the URL, then answer `counts`/`reset` lines on stdin with JSON."""
    import asyncio  # noqa: PLC0415 - only the proxy process runs an event loop

    from bench.latency_proxy import LatencyProxy  # noqa: PLC0415

    async def run() -> None:
        async with LatencyProxy(upstream=upstream, delay=delay_ms / 1000) as proxy:
            print(proxy.url, flush=True)
            loop = asyncio.get_running_loop()
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                if line.strip() == "reset":
                    proxy.reset_counts()
                print(json.dumps(dict(proxy.requests)), flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
