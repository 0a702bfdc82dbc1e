# SPDX-License-Identifier: Apache-2.0
"""Flood a real core's IPC socket and measure what it costs: memory, descriptors, a worker's reads.

The world is `bench/ipc.py --sdk`'s (Mosquitto, moto's server, `edge run` at the default log
level, the secret and the pinned `sdk-loop-1` function deployed), redeployed with one more,
on-demand function, `ipc-flood` (bench/functions/ipc_flood.py). Then, for each flood, `--repeat`
times, interleaved with the baseline:

  partial   `--threads` threads each connect, announce a 1 MiB frame, send all of it but one
            byte and hang up, again and again: what took a core to 4.6-8.2 GB and kept it;
  logged-in the same after a Hello with `edge invoke`'s operator token (it binds no pid, so it
            stands in for a worker's): a frame the core accepts to buffer, a megabyte each;
  refused   `--threads` threads each connect, say Hello with a wrong token, read the Goodbye,
            again and again: the log lines that flood used to write;
  function  `ipc-flood`, a function of the group, opens 2,000 connections with its own token
            and keeps opening more: what took a core's every descriptor.

Measured per flood: the core's RSS (VmRSS of `edge run`) just before, at its peak during (sampled
every 10 ms) and 3 s after the flood stopped, with nothing asked of the core meanwhile (no forced
garbage collection); its open descriptors at the peak (`/proc/<pid>/fd`); the warnings its log
got; and the median time of a legitimate `get_secret_value` through `greengrasssdk` in
`sdk-loop-1` during the flood (bench/ipc.py's sdk mode, one client, `--seconds`) against the
**baseline**: the same measurement with no flood, in the same run.

Run: `.venv/bin/python bench/flood_ipc.py [--seconds 3] [--repeat 3] [--threads 8]`
(needs the `test` extra and Mosquitto, like `bench/ipc.py --sdk`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# bench/ipc.py's sdk mode, after the path is set.
from bench.ipcbench.constants import REPO, SDK_ACCOUNT, SECRET_NAME
from bench.ipcbench.sdk import (
    SDK_RESOURCE_ID,
    SDK_START_SLACK_PER_CLIENT,
    SDK_START_SLACK_SECONDS,
    SdkCore,
    build_sdk_package,
    finish_invoke,
    measure_sdk,
    sdk_core,
    sdk_function,
)
from edge.fixtures.procfs import open_fds, vm_rss_kib
from edge.ipc.protocol import MAX_FRAME_SIZE, Hello, encode

BENCH_DIR = Path(__file__).resolve().parent
FLOOD_FILE = BENCH_DIR / "functions" / "ipc_flood.py"
FLOOD_ARN = f"arn:aws:lambda:us-east-1:{SDK_ACCOUNT}:function:ipc-flood:1"
FLOOD_CONNECTIONS = 2000
#: How long after a flood stops its "after" RSS is read.
SETTLE_SECONDS = 3.0
FLOODS = ("partial", "logged-in", "refused", "function")


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per flood; medians kept")
    parser.add_argument(
        "--threads", type=int, default=8, help="flooding threads (partial, refused)"
    )
    return parser.parse_args()


def ipc_warnings(log_path: Path) -> int:
    """Warnings the core logged about IPC connections so far."""
    count = 0
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("level") == "warning" and str(event.get("event", "")).startswith("ipc."):
            count += 1
    return count


@dataclass
class Peaks:
    """The largest RSS and descriptor count seen while sampling."""

    pid: int
    rss_kb: int = 0
    fds: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Sample every 10 ms until stopped (or the core is gone)."""
        while not self.stop.is_set():
            try:
                self.rss_kb = max(self.rss_kb, vm_rss_kib(self.pid))
                self.fds = max(self.fds, open_fds(self.pid))
            except (OSError, RuntimeError):
                return
            self.stop.wait(0.01)


@contextmanager
def sampling(pid: int) -> Iterator[Peaks]:
    """Sample the core's RSS and descriptors in a thread for the body's duration."""
    peaks = Peaks(pid)
    thread = threading.Thread(target=peaks.run, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        peaks.stop.set()
        thread.join(5)


def partial_frames(path: str, stop: threading.Event, made: list[int]) -> None:
    """Announce a 1 MiB frame, send all but one byte, hang up; until stopped."""
    data = struct.pack(">I", MAX_FRAME_SIZE) + b"x" * (MAX_FRAME_SIZE - 1)
    connect_and_send(path, data, stop, made, read=False)


def logged_in_partial_frames(path: str, stop: threading.Event, made: list[int]) -> None:
    """Say Hello with the operator's token, then send a partial 1 MiB frame; until stopped."""
    token = (Path(path).parent / "operator.token").read_text()
    hello = encode(Hello(token, os.getpid()))
    data = hello + struct.pack(">I", MAX_FRAME_SIZE) + b"x" * (MAX_FRAME_SIZE - 1)
    connect_and_send(path, data, stop, made, read=False)


def wrong_tokens(path: str, stop: threading.Event, made: list[int]) -> None:
    """Say Hello with a token nobody registered, read the Goodbye; until stopped."""
    hello = encode(Hello("not-a-worker-token-0123456789abcdef", os.getpid()))
    connect_and_send(path, hello, stop, made, read=True)


def connect_and_send(
    path: str, data: bytes, stop: threading.Event, made: list[int], *, read: bool
) -> None:
    """Connect, send `data`, read until the core hangs up if `read`, close; until stopped."""
    while not stop.is_set():
        made[0] += 1
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            try:
                sock.connect(path)
                sock.sendall(data)
                while read and sock.recv(65536):
                    pass
            except OSError:
                pass  # the core hung up: on a frame's header, that is the point


@contextmanager
def threads_flooding(
    target: Callable[[str, threading.Event, list[int]], None], path: str, n: int
) -> Iterator[list[list[int]]]:
    """Run `n` threads of `target` for the body's duration; yields their connection counts."""
    stop = threading.Event()
    made = [[0] for _ in range(n)]
    threads = [
        threading.Thread(target=target, args=(path, stop, count), daemon=True) for count in made
    ]
    for thread in threads:
        thread.start()
    try:
        yield made
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


@contextmanager
def function_flooding(world: SdkCore, hold_seconds: float) -> Iterator[dict[str, Any]]:
    """Invoke `ipc-flood`; enter once it opened its 2,000 connections; wait for it on exit."""
    printed_before = flood_lines(world.log_path)
    event = {"connections": FLOOD_CONNECTIONS, "hold_seconds": hold_seconds}
    command = [sys.executable, "-m", "edge", "invoke", "--config", str(world.config)]
    proc = subprocess.Popen(
        [*command, "--function-arn", FLOOD_ARN, "--payload", json.dumps(event)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    deadline = time.monotonic() + 120
    while len(flood_lines(world.log_path)) == len(printed_before):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"ipc-flood never reported: {proc.communicate()[1]}")
        time.sleep(0.1)
    answers: dict[str, Any] = json.loads(flood_lines(world.log_path)[-1].removeprefix("flood "))
    try:
        yield answers
    finally:
        finish_invoke(proc, hold_seconds + 120, world.log_path)


def flood_lines(log_path: Path) -> list[str]:
    """The `flood {...}` lines `ipc-flood` printed (the core logs its workers' output)."""
    lines = []
    for line in log_path.read_text(errors="replace").splitlines():
        if '"worker.output"' in line:
            text = json.loads(line).get("line", "")
            if text.startswith("flood "):
                lines.append(text)
    return lines


@dataclass
class FloodRun:
    """One run of one flood."""

    rss_before_kb: int
    rss_peak_kb: int
    rss_after_kb: int
    fds_before: int
    fds_peak: int
    warnings: int
    baseline_p50_us: float
    during_p50_us: float
    connections_per_second: float
    note: str = ""


def redeploy_with_flooder(world: SdkCore, seconds: float) -> None:
    """Deploy the secret, `sdk-loop-1` and the on-demand `ipc-flood` to the world's core."""
    import boto3  # noqa: PLC0415 - test extra, as in bench/ipc.py --sdk

    from edge.fixtures.core import Operator, secret_resource  # noqa: PLC0415
    from edge.fixtures.reference import write_v1_package  # noqa: PLC0415
    from edge.fixtures.services import AWS_TEST_ENV, TEST_REGION  # noqa: PLC0415

    config = tomllib.loads(world.config.read_text())
    sm = boto3.client(
        "secretsmanager",
        endpoint_url=config["aws"]["endpoint_url"],
        region_name=TEST_REGION,
        aws_access_key_id=AWS_TEST_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=AWS_TEST_ENV["AWS_SESSION_TOKEN"],
    )
    arn = sm.describe_secret(SecretId=SECRET_NAME)["ARN"]
    # The core takes `file://` code only from its `local_code_dirs`: beside its config.
    code_dir = world.config.parent
    sdk_zip, sdk_digest = build_sdk_package(code_dir / "sdk_loop_2.zip")
    timeout = int(seconds + SDK_START_SLACK_SECONDS) + 120
    sdk = sdk_function(1, {"Uri": sdk_zip.as_uri(), "Sha256": sdk_digest}, timeout)
    flood_zip = code_dir / "ipc_flood.zip"
    import hashlib  # noqa: PLC0415

    digest = hashlib.sha256(write_v1_package(flood_zip, {FLOOD_FILE.name: FLOOD_FILE.read_bytes()}))
    flooder = {
        "Id": "ipc-flood",
        "FunctionArn": FLOOD_ARN,
        "FunctionConfiguration": {
            "Pinned": False,
            "MemorySize": 65536,
            "Timeout": 600,
            "Handler": "ipc_flood.flood",
            "Code": {"Uri": flood_zip.as_uri(), "Sha256": digest.hexdigest()},
            "Environment": {"Variables": {}, "ResourceAccessPolicies": []},
        },
    }
    port = int(config["mqtt"]["url"].rsplit(":", 1)[1])
    operator = Operator(port=port, prefix="edge", thing=config["core"]["thing_name"])
    operator.connect()
    try:
        deployment = operator.deploy(
            [secret_resource(SDK_RESOURCE_ID, arn)], functions=[sdk, flooder]
        )
        status = operator.final_status(deployment, timeout=60)
        if status["DeploymentStatus"] != "Success":
            raise RuntimeError(f"deployment failed: {status.get('ErrorMessage')}")
    finally:
        operator.close()


def p50_us(world: SdkCore, seconds: float) -> float:
    """Median get_secret_value through greengrasssdk in `sdk-loop-1`, over `seconds`."""
    return measure_sdk(world, 1, seconds, pin=False).p50_us


def run_flood(world: SdkCore, kind: str, args: argparse.Namespace) -> FloodRun:
    """Measure the baseline, then the same with flood `kind` going on."""
    pid, socket_path = world.pid, str(world.config.parent / "state" / "ipc" / "core.sock")
    baseline = p50_us(world, args.seconds)
    before_rss, before_fds, before_warnings = (
        vm_rss_kib(pid),
        open_fds(pid),
        ipc_warnings(world.log_path),
    )
    note = ""
    rate = 0.0
    with sampling(pid) as peaks:
        if kind == "function":
            hold = SDK_START_SLACK_SECONDS + SDK_START_SLACK_PER_CLIENT
            with function_flooding(world, hold + args.seconds + 5) as answers:
                during = p50_us(world, args.seconds)
            note = ", ".join(f"{n} {key}" for key, n in sorted(answers.items()))
        else:
            target = {
                "partial": partial_frames,
                "logged-in": logged_in_partial_frames,
                "refused": wrong_tokens,
            }[kind]
            with threads_flooding(target, socket_path, args.threads) as made:
                time.sleep(0.5)  # the flood is in full swing before the measurement starts
                started, first = time.monotonic(), sum(m[0] for m in made)
                during = p50_us(world, args.seconds)
                rate = (sum(m[0] for m in made) - first) / (time.monotonic() - started)
    time.sleep(SETTLE_SECONDS)
    return FloodRun(
        rss_before_kb=before_rss,
        rss_peak_kb=peaks.rss_kb,
        rss_after_kb=vm_rss_kib(pid),
        fds_before=before_fds,
        fds_peak=peaks.fds,
        warnings=ipc_warnings(world.log_path) - before_warnings,
        baseline_p50_us=baseline,
        during_p50_us=during,
        connections_per_second=rate,
        note=note,
    )


def report(args: argparse.Namespace, runs: dict[str, list[FloodRun]]) -> None:
    """Print one markdown row per flood: medians over the runs."""
    print(
        f"\nIPC floods against `edge run`: {args.repeat} run(s) each, medians; "
        f"{args.threads} flooding threads; get_secret_value through greengrasssdk, "
        f"{args.seconds:g} s per measurement\n"
    )
    print(
        "| flood | connections/s | RSS before; peak during, 3 s after (MB) "
        "| descriptors before / peak | IPC warnings logged "
        "| get_secret_value p50, **baseline** (no flood) | during | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind, kind_runs in runs.items():

        def med(attribute: str, kind_runs: list[FloodRun] = kind_runs) -> float:
            return statistics.median(getattr(run, attribute) for run in kind_runs)

        def growth(attribute: str, kind_runs: list[FloodRun] = kind_runs) -> str:
            grown = [getattr(run, attribute) - run.rss_before_kb for run in kind_runs]
            return f"{statistics.median(grown) / 1024:+.1f}"

        ratio = statistics.median(r.during_p50_us / r.baseline_p50_us for r in kind_runs)
        rate = med("connections_per_second")
        print(
            f"| {kind} | {f'{rate:.0f}' if rate else '2,000 at once'} "
            f"| {med('rss_before_kb') / 1024:.1f}; {growth('rss_peak_kb')}, "
            f"{growth('rss_after_kb')} | {med('fds_before'):.0f} / {med('fds_peak'):.0f} "
            f"| {med('warnings'):.0f} | {med('baseline_p50_us'):.0f} µs "
            f"| {med('during_p50_us'):.0f} µs | {ratio:.2f}x |"
        )
    for kind, kind_runs in runs.items():
        for run in kind_runs:
            if run.note:
                print(f"\n{kind}: the core answered the function's connections: {run.note}")
                break


def main() -> None:
    """Start the world, run every flood `--repeat` times, print the table."""
    args = parse_args()
    runs: dict[str, list[FloodRun]] = {kind: [] for kind in FLOODS}
    with tempfile.TemporaryDirectory(prefix="edge-flood-") as tmp:
        workdir = Path(tmp)
        with sdk_core(workdir, 1, args.seconds, None) as world:
            redeploy_with_flooder(world, args.seconds)
            for index in range(args.repeat):
                for kind in FLOODS:
                    run = run_flood(world, kind, args)
                    runs[kind].append(run)
                    print(f"run {index + 1} {kind}: {run}", file=sys.stderr, flush=True)
    report(args, runs)


if __name__ == "__main__":
    main()
