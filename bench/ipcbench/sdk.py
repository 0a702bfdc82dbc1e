# SPDX-License-Identifier: Apache-2.0
"""The greengrasssdk mode: a real core, real workers, the unmodified SDK, timed from inside."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.ipcbench.constants import (
    ANSWER,
    BENCH_DIR,
    REPO,
    SDK_ACCOUNT,
    SECRET_NAME,
    WARMUP_CALLS,
)
from bench.ipcbench.measure import Run

#: The --sdk mode's function: V1 code, zipped with the unmodified greengrasssdk.
SDK_FUNCTION_FILE = BENCH_DIR / "functions" / "sdk_loop.py"
SDK_HANDLER = "sdk_loop.function_handler"
SDK_RESOURCE_ID = "bench-secret"
#: Time between starting the `edge invoke`s and the common start of their loops: each CLI
#: process needs ~0.7 s of CPU to start, and the handler warms up first.
SDK_START_SLACK_SECONDS = 2.0
SDK_START_SLACK_PER_CLIENT = 0.5


def function_arn(index: int) -> str:
    """The qualified ARN of the `index`-th benchmark function."""
    return f"arn:aws:lambda:us-east-1:{SDK_ACCOUNT}:function:sdk-loop-{index}:1"


def build_sdk_package(path: Path) -> tuple[Path, str]:
    """Zip the handler with the unmodified greengrasssdk; return (zip, sha256)."""
    import hashlib  # noqa: PLC0415 - only this mode needs it

    from edge.fixtures.reference import write_v1_package  # noqa: PLC0415

    data = write_v1_package(path, {SDK_FUNCTION_FILE.name: SDK_FUNCTION_FILE.read_bytes()})
    return path, hashlib.sha256(data).hexdigest()


def sdk_function(index: int, code: dict[str, str], timeout_seconds: int) -> dict[str, Any]:
    """A pinned V1 function object running the benchmark handler, granted the secret.

    Function 0 runs with its cache of answers off (`EDGE_ANSWER_CACHE=off`): every read is a
    round trip to the core, as a first read of each version is.
    """
    return {
        "Id": f"sdk-loop-{index}",
        "FunctionArn": function_arn(index),
        "FunctionConfiguration": {
            "Pinned": True,
            # Room for the interpreter and SDK (~13 MB) plus the latencies of a long run.
            "MemorySize": 65536,
            "Timeout": timeout_seconds,
            "Handler": SDK_HANDLER,
            "Code": code,
            "Environment": {
                "Variables": {"EDGE_ANSWER_CACHE": "off"} if index == 0 else {},
                "ResourceAccessPolicies": [{"ResourceId": SDK_RESOURCE_ID, "Permission": "ro"}],
            },
        },
    }


@contextlib.contextmanager
def affinity(cpus: set[int] | None) -> Iterator[None]:
    """Run the body with this thread on `cpus` (children started meanwhile inherit them)."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass
class SdkCore:
    """A running core with the benchmark functions deployed."""

    config: Path
    pid: int
    functions: int
    log_path: Path

    def invoke(self, index: int, event: dict[str, Any]) -> subprocess.Popen[str]:
        """Start `edge invoke` of the `index`-th function (the real CLI, over the core's IPC)."""
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge",
                "invoke",
                "--config",
                str(self.config),
                "--function-arn",
                function_arn(index),
                "--payload",
                json.dumps(event),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    def call(self, index: int, event: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Invoke and wait; return the handler's answer."""
        return finish_invoke(self.invoke(index, event), timeout, self.log_path)


def finish_invoke(proc: subprocess.Popen[str], timeout: float, log_path: Path) -> dict[str, Any]:
    """Wait for an `edge invoke` and decode the function's answer, or fail saying why."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"edge invoke did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        raise RuntimeError(
            f"edge invoke failed ({proc.returncode}): {err.strip()}\ncore log: {log_path}"
        )
    return json.loads(out)


@contextlib.contextmanager
def sdk_core(workdir: Path, functions: int, seconds: float, cpu: int | None) -> Iterator[SdkCore]:
    """Mosquitto, moto, an initialised `edge run` core, the secret and functions deployed."""
    # Test-only dependencies (boto3, paho, moto): imported only when --sdk asks for them.
    try:
        import boto3  # noqa: PLC0415

        from edge.fixtures.core import (  # noqa: PLC0415
            CoreProcess,
            Operator,
            edge_cli,
            secret_resource,
        )
        from edge.fixtures.services import (  # noqa: PLC0415
            AWS_TEST_ENV,
            TEST_REGION,
            run_mosquitto,
            run_moto,
        )
    except ImportError as exc:
        raise SystemExit(f"--sdk needs the test extra (pip install -e '.[test]'): {exc}") from None
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        raise SystemExit("--sdk needs Mosquitto (apt-get install mosquitto)")

    root = workdir / "sdk"
    root.mkdir()
    with run_mosquitto(root / "mosquitto") as broker, run_moto(root / "moto.log") as moto:
        sm = boto3.client(
            "secretsmanager",
            endpoint_url=moto.url,
            region_name=TEST_REGION,
            aws_access_key_id=AWS_TEST_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=AWS_TEST_ENV["AWS_SESSION_TOKEN"],
        )
        arn = sm.create_secret(Name=SECRET_NAME, SecretString=ANSWER["SecretString"])["ARN"]
        thing = "bench-core"
        config = root / "core.toml"
        # As edge/fixtures/core.write_config, but logging at the default level: a benchmark
        # measures the core as deployed, not with debug events.
        config.write_text(
            f'[core]\nthing_name = "{thing}"\nstate_dir = "state"\n\n'
            f'[mqtt]\nurl = "{broker.url}"\n\n'
            f'[aws]\nregion = "{TEST_REGION}"\nendpoint_url = "{moto.url}"\n\n'
            '[log]\nlevel = "info"\nformat = "json"\n\n'
            "[deployments]\nallow_unsigned = true\n\n"
            # Its function packages are written next to it.
            '[workers]\nlocal_code_dirs = ["."]\n'
        )
        init = edge_cli("init", "--config", str(config))
        if init.returncode != 0:
            raise RuntimeError(f"edge init failed: {init.stderr}")
        core = CoreProcess(config=config, log_path=root / "core.log")
        # With --pin the core (every thread, and the workers it spawns) starts on `cpu`.
        with affinity(None if cpu is None else {cpu}):
            core.start()
        operator = Operator(port=broker.port, prefix="edge", thing=thing)
        try:
            core.wait_for_event("mqtt.connected", timeout=30)
            operator.connect()
            zip_path, digest = build_sdk_package(root / "sdk_loop.zip")
            code = {"Uri": zip_path.as_uri(), "Sha256": digest}
            timeout = int(seconds + SDK_START_SLACK_SECONDS) + 120
            deployment = operator.deploy(
                [secret_resource(SDK_RESOURCE_ID, arn)],
                functions=[sdk_function(i, code, timeout) for i in range(functions + 1)],
            )
            status = operator.final_status(deployment, timeout=60)
            if status["DeploymentStatus"] != "Success":
                raise RuntimeError(f"deployment failed: {status.get('ErrorMessage')}")
            assert core.proc is not None  # noqa: S101 - started above
            world = SdkCore(
                config=config, pid=core.proc.pid, functions=functions, log_path=core.log_path
            )
            # A first call of each: the workers are up, granted, and answer as expected.
            for index in range(functions + 1):
                answer = world.call(
                    index, {"SecretId": SECRET_NAME, "seconds": 0, "warmup": 10}, timeout=60
                )
                if answer["ppid"] != world.pid:
                    raise RuntimeError("the function's worker is not a child of the core")
            yield world
        finally:
            operator.close()
            if core.proc is not None:
                core.stop()


def measure_sdk(
    world: SdkCore, clients: int, seconds: float, *, pin: bool, first: bool = False
) -> Run:
    """Invoke `clients` functions at once, each timing its own SDK calls from a common start.

    With `first`, the one function whose cache is off (function 0; one client only).
    """
    if pin and clients == 1:
        cpus = sorted(os.sched_getaffinity(world.pid))
    else:
        cpus = sorted(os.sched_getaffinity(0))
    slack = SDK_START_SLACK_SECONDS + SDK_START_SLACK_PER_CLIENT * clients
    event = {
        "SecretId": SECRET_NAME,
        "seconds": seconds,
        "start_at": time.time() + slack,
        "warmup": WARMUP_CALLS,
        "cpus": cpus,
        "core_pid": world.pid,
    }
    indexes = [0] if first else range(1, clients + 1)
    procs = [world.invoke(index, event) for index in indexes]
    results = [finish_invoke(proc, slack + seconds + 120, world.log_path) for proc in procs]
    if any(r["cached"] is not (not first) for r in results):
        raise RuntimeError(f"a function's cache of answers is not {'off' if first else 'on'}")
    for result in results:
        if result["late_ms"] > 0:
            print(
                f"warning: a function started {result['late_ms']:.0f} ms late; its window was "
                "shorter (raise SDK_START_SLACK_SECONDS)",
                file=sys.stderr,
            )
    count = sum(r["count"] for r in results)
    # Merge the copies' histograms at the coarsest width any of them used (100 ns normally):
    # percentiles are then exact to that width, as the other modes' are to the nanosecond.
    width = max(r["hist_ns"] for r in results)
    merged: dict[int, int] = {}
    for result in results:
        for key, n in result["hist"].items():
            bucket = int(key) * result["hist_ns"] // width
            merged[bucket] = merged.get(bucket, 0) + n
    buckets = sorted(merged.items())

    def percentile(rank: int) -> float:
        seen = 0
        for bucket, n in buckets:
            seen += n
            if seen > rank:
                return bucket * width / 1000
        raise ValueError(rank)

    ticks_before = min(r["core_ticks"][0] for r in results)
    ticks_after = max(r["core_ticks"][1] for r in results)
    core_cpu = (ticks_after - ticks_before) / results[0]["clock_ticks_per_second"]
    return Run(
        requests_per_second=sum(r["count"] / (r["window_ns"] / 1e9) for r in results),
        p50_us=percentile(count // 2),
        p99_us=percentile(min(count - 1, int(count * 0.99))),
        server_cpu_us=core_cpu / count * 1e6,
        client_cpu_us=sum(r["cpu_seconds"] for r in results) / count * 1e6,
    )


def core_loop_name() -> str:
    """The loop `edge run` uses with `[core] event_loop = "auto"`, as the core logs it."""
    from edge.eventloop import choose_event_loop  # noqa: PLC0415

    return choose_event_loop("auto").name
