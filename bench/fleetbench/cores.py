# SPDX-License-Identifier: Apache-2.0
"""The fleet's real cores: `edge run` processes, started in batches and sized to the memory."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.fleetbench.constants import PREFIX, REGION, REPO
from bench.fleetbench.procfs import cpu_seconds, die_with_parent, meminfo_kb

#: Seconds a batch of cores may take to connect; a core starts in ~1.5 s of CPU, ten of them
#: share two CPUs with whatever else runs.
CONNECT_TIMEOUT_SECONDS = 120.0
#: An idle core (keepalives only) uses well under 1% of a CPU; the fleet counts as idle once
#: all cores together use less than this share of a CPU per core, per second.
IDLE_CPU_PER_CORE = 0.005
#: What a core grows by from idle to after the deployment (botocore clients for Secrets
#: Manager and S3, the store, the unpacked function), as a factor of its idle RSS, used to
#: decide how many cores fit before any has been deployed. The run prints the real growth.
DEPLOYED_RSS_FACTOR = 1.3


@dataclass
class Core:
    """One `edge run` process of the fleet."""

    index: int
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    connected: bool = False
    _offset: int = 0

    @property
    def thing(self) -> str:
        """The core's thing name."""
        return f"fleet-core-{self.index:04d}"

    @property
    def config(self) -> Path:
        """The core's config file."""
        return self.root / "core.toml"

    @property
    def log(self) -> Path:
        """The core's JSON log."""
        return self.root / "core.log"

    @property
    def pid(self) -> int:
        """The process id of the running core."""
        assert self.proc is not None  # noqa: S101 - only asked of started cores
        return self.proc.pid

    def prepare(self, *, mqtt_url: str, endpoint_url: str, trusted_key: Path) -> None:
        """Write the core's config and run `edge init`'s code: state directory and core key."""
        from edge.cli import main as edge_main  # noqa: PLC0415

        self.root.mkdir(parents=True)
        self.config.write_text(
            f'[core]\nthing_name = "{self.thing}"\nstate_dir = "state"\n\n'
            f'[mqtt]\nurl = "{mqtt_url}"\ntopic_prefix = "{PREFIX}"\n\n'
            f'[aws]\nregion = "{REGION}"\nendpoint_url = "{endpoint_url}"\n\n'
            '[log]\nlevel = "info"\nformat = "json"\n\n'
            f'[deployments]\ntrusted_keys = ["{trusted_key}"]\n'
        )
        with contextlib.redirect_stdout(io.StringIO()):
            if edge_main(["init", "--config", str(self.config)]) != 0:
                raise RuntimeError(f"edge init failed for {self.thing}")

    def start(self) -> None:
        """Start `python -m edge run` with its log in its directory."""
        from edge.fixtures.services import AWS_TEST_ENV  # noqa: PLC0415

        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **AWS_TEST_ENV},
                cwd=REPO,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - started from the main thread
            )

    def poll_connected(self) -> bool:
        """Read the log's new lines; True once the core logged `mqtt.connected`."""
        if not self.connected and self.log.exists():
            with self.log.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
            end = data.rfind(b"\n") + 1
            self._offset += end
            self.connected = b'"mqtt.connected"' in data[:end]
        return self.connected

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None


def stop_cores(cores: list[Core]) -> None:
    """SIGTERM every running core, wait for all, SIGKILL the ones still there after 30 s."""
    running = [c for c in cores if c.alive()]
    for core in running:
        assert core.proc is not None  # noqa: S101
        core.proc.terminate()
    deadline = time.monotonic() + 30
    for core in running:
        assert core.proc is not None  # noqa: S101
        try:
            core.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            core.proc.kill()
            core.proc.wait(5)


def start_batch(batch: list[Core]) -> float:
    """Start cores and wait until each has connected and subscribed; return the seconds taken."""
    began = time.monotonic()
    for core in batch:
        core.start()
    while not all(c.poll_connected() for c in batch):
        dead = [c for c in batch if not c.alive()]
        if dead:
            tail = dead[0].log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"core {dead[0].thing} exited at start:\n{tail}")
        if time.monotonic() - began > CONNECT_TIMEOUT_SECONDS:
            late = [c.thing for c in batch if not c.connected]
            raise RuntimeError(f"not connected within {CONNECT_TIMEOUT_SECONDS:g} s: {late}")
        time.sleep(0.1)
    return time.monotonic() - began


def wait_idle(cores: list[Core], limit: float = 60.0) -> tuple[float, float]:
    """Wait until the cores together use little CPU; return (seconds waited, CPU s/s per core)."""
    began = time.monotonic()
    per_core = 0.0
    while time.monotonic() - began < limit:
        before = sum(cpu_seconds(c.pid) for c in cores)
        time.sleep(2.0)
        per_core = (sum(cpu_seconds(c.pid) for c in cores) - before) / 2.0 / len(cores)
        if per_core < IDLE_CPU_PER_CORE:
            break
    return time.monotonic() - began, per_core


def fit(wanted: int, rss_kb: int, reserve_mb: int) -> tuple[int, str]:
    """How many cores fit in MemAvailable minus the reserve, and what to say about it."""
    available_kb = meminfo_kb("MemAvailable")
    per_core_kb = rss_kb * DEPLOYED_RSS_FACTOR
    # + 1: the measured core already runs, inside what MemAvailable no longer counts.
    room = max(0, int((available_kb - reserve_mb * 1024) // per_core_kb) + 1)
    text = (
        f"one idle core: {rss_kb / 1024:.0f} MB RSS (budget {per_core_kb / 1024:.0f} MB after a "
        f"deployment); MemAvailable {available_kb / 1024:.0f} MB, {reserve_mb} MB kept free: "
        f"room for {room} cores"
    )
    return min(wanted, room), text
