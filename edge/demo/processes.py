# SPDX-License-Identifier: Apache-2.0
"""The demo's processes: services in sessions of their own, `edge` commands, and cleanup.

Every process runs in the workspace with fake AWS credentials, in a session of its own: a
Ctrl-C at the terminal reaches the demo only, which then stops everything in order (the core
before the broker it reports to), SIGKILLs what remains of each process group, and as a last
resort any process still working inside the workspace (a stray function worker).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from edge.demo.console import Printer
from edge.errors import EdgeError
from edge.fixtures.reference import REGION

#: A service not up within this many seconds is a failure (moto's server takes ~1 s here).
STARTUP_SECONDS: Final = 30.0
#: Longest one `edge` command may take (a deployment waits less: `--timeout`).
COMMAND_SECONDS: Final = 120.0
#: How long a service gets to stop after SIGTERM before its process group is killed; the core
#: stops its workers first.
STOP_SECONDS: Final = {"core": 15.0}
DEFAULT_STOP_SECONDS: Final = 5.0

#: moto accepts any credentials; a developer's real ones must never be sent anywhere, so every
#: AWS_* variable is replaced by these in the demo's processes (and in the demo itself).
DEMO_AWS_ENV: Final = {
    "AWS_ACCESS_KEY_ID": "demo",
    "AWS_SECRET_ACCESS_KEY": "demo",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


class DemoError(EdgeError):
    """A demo step failed; the message says which and why."""


@dataclass
class Service:
    """A long-running process of the demo (broker, emulator, core)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def check(self) -> None:
        """Raise DemoError if the process has exited."""
        if self.proc.poll() is not None:
            raise DemoError(
                f"the {self.name} exited with status {self.proc.returncode}; "
                f"see {self.log_path.name}"
            )

    def stop(self) -> int | None:
        """SIGTERM, wait, then SIGKILL its whole process group; return its exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_SECONDS.get(self.name, DEFAULT_STOP_SECONDS))
        # A session of its own, so its group holds whatever it started and left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(DEFAULT_STOP_SECONDS)
        return self.proc.returncode


@dataclass
class Processes:
    """Starts, runs and stops the demo's processes in its workspace, showing each command."""

    workspace: Path
    printer: Printer
    services: list[Service] = field(default_factory=list)
    #: Everything the `edge` commands printed, for the final search for secret values.
    outputs: list[str] = field(default_factory=list)
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        """Build the children's environment: this one's, with fake AWS credentials only."""
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.env.update(DEMO_AWS_ENV)

    def spawn(self, name: str, argv: list[str]) -> Service:
        """Start a service in the background, its output in `{name}.log`."""
        log_path = self.workspace / f"{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workspace,
                env=self.env,
                start_new_session=True,
            )
        service = Service(name, proc, log_path)
        self.services.append(service)
        return service

    def edge(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run one `edge` command in the workspace, showing it; DemoError if it fails."""
        self.printer.command(["edge", *args])
        result = subprocess.run(  # noqa: PLW1510 - checked below, with its stderr
            [sys.executable, "-m", "edge", *args],
            capture_output=True,
            text=True,
            cwd=self.workspace,
            env=self.env,
            timeout=COMMAND_SECONDS,
            start_new_session=True,
        )
        self.outputs.extend((result.stdout, result.stderr))
        if result.returncode != 0:
            raise DemoError(
                f"`edge {args[0]} …` exited with status {result.returncode}: "
                f"{result.stderr.strip()[-2000:]}"
            )
        return result

    def cloud(self, command: str, *args: str) -> dict[str, Any]:
        """Run `edge cloud --config cloud.toml COMMAND ARGS`; return its JSON answer."""
        result = self.edge("cloud", "--config", "cloud.toml", command, *args)
        answer: dict[str, Any] = json.loads(result.stdout)
        return answer

    def follow(self, *args: str) -> str:
        """Run an `edge` command whose stderr shows progress, printing each line as it comes.

        Returns:
            Its stdout.
        """
        self.printer.command(["edge", *args])
        started = time.monotonic()
        with subprocess.Popen(
            [sys.executable, "-m", "edge", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.workspace,
            env=self.env,
            start_new_session=True,
        ) as proc:
            assert proc.stderr is not None  # noqa: S101 - PIPE was asked for
            assert proc.stdout is not None  # noqa: S101
            # Its answer on stdout is one small JSON object, which fits the pipe's buffer, so
            # reading stderr to the end first can't deadlock.
            for line in proc.stderr:
                self.outputs.append(line)
                self.printer.say(f"      {time.monotonic() - started:5.2f} s  {line.rstrip()}")
            answer = proc.stdout.read()
            code = proc.wait()
        self.outputs.append(answer)
        if code != 0:
            raise DemoError(f"`edge {args[0]} …` exited with status {code}")
        return answer

    def wait_for_port(self, port: int, service: Service) -> None:
        """Wait until the service accepts TCP connections on 127.0.0.1:port."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
            service.check()
            time.sleep(0.05)
        raise DemoError(f"the {service.name} isn't listening on port {port} after 30 s")

    def stop_all(self) -> list[str]:
        """Stop every service, the last started first; return "name (status)" for each."""
        stopped = [f"{s.name} ({s.stop()})" for s in reversed(self.services)]
        kill_processes_inside(self.workspace)
        return stopped


def use_demo_credentials() -> None:
    """Replace this process's AWS_* variables by the demo's (its own botocore client)."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[key]
    os.environ.update(DEMO_AWS_ENV)


def kill_processes_inside(workspace: Path) -> None:
    """Last resort: SIGKILL any process still working in the workspace (Linux /proc only)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cwd = (entry / "cwd").readlink()
            if cwd == workspace or workspace in cwd.parents:
                os.kill(int(entry.name), signal.SIGKILL)
