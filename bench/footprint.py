# SPDX-License-Identifier: Apache-2.0
"""What a core costs its device: memory, start time, CLI wall times, worker memory.

Starts Mosquitto and moto's server (edge/fixtures/services.py), creates `--secrets` secrets,
and then, for this checkout and (with `--baseline-from CHECKOUT`) for another one, measures in
the same run, each side with a core of its own started from its own checkout:

* the core's memory (VmRSS, and PSS from /proc/PID/smaps_rollup) in `edge run`'s own process,
  workers apart: idle with `[metrics] listen` set; idle with the default config; after a
  deployment of the secrets and two pinned functions; after `--deployments` deployments in
  all; after a restart; after `--refreshes` refreshes that each rotate one secret;
* start to first answer: a core restarting on its existing store, from exec to the first IPC
  request it answers (an `edge invoke` of an unknown function, refused), median of
  `--restarts`;
* CLI wall times, median of `--repeat`: `edge secrets list --json`, and `edge invoke` of a
  pinned function that is already running;
* worker memory: the V1 runtime running a handler that imports nothing, and one whose module
  imports greengrasssdk and makes a client.

With `--tls` the cores connect to the broker as a device connects to AWS IoT: `mqtts://` with
a client certificate and a CA file (a P-256 PKI made with the `openssl` command); the benchmark's
own publisher stays on a plain listener of the same broker.

The memory is measured one side after the other; the times last, interleaved (baseline, this,
baseline, ...), each side's core started on the store its memory runs left, refresh off.

The core logs at the default level (info). Timings and memory are read from /proc and the
clock, never from the core's own reports. Run:

    .venv/bin/python bench/footprint.py [--baseline-from CHECKOUT] [--python PY] [--tls] ...

A baseline checkout of the commit before a change: `git worktree add --detach /tmp/base REV`.
Both sides run on one interpreter and its site-packages, this one or `--python`'s (a
device-like install: a venv with `pip install .` only, no test or demo extras); only `edge`
itself comes from each checkout (its directory first on the path).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.fixtures.core import CoreProcess, Operator, secret_resource, source_env  # noqa: E402
from edge.fixtures.procfs import smaps_rollup_kib, vm_rss_kib  # noqa: E402
from edge.fixtures.reference import write_v1_package  # noqa: E402
from edge.fixtures.services import (  # noqa: E402
    TEST_REGION,
    Mosquitto,
    MotoServer,
    free_port,
    run_mosquitto,
    run_moto,
    running_broker,
)

ACCOUNT = "123456789012"
#: Seconds the core is left alone before its memory is read.
SETTLE_SECONDS = 2.0
#: Two handlers: the V1 runtime with nothing imported, and a module that uses greengrasssdk.
HANDLERS = {
    "plain.py": b"import os\n\n\ndef handler(event, context):\n    return {'pid': os.getpid()}\n",
    "sdk.py": (
        b"import os\n\nimport greengrasssdk\n\nsecrets = greengrasssdk.client('secretsmanager')\n"
        b"\n\ndef handler(event, context):\n    return {'pid': os.getpid()}\n"
    ),
}
#: Asks a starting core, over and over, for something it must refuse; prints the monotonic
#: time (one clock for every process) of the first answer.
PROBE = """
import sys, time
from pathlib import Path
from edge.cli_invoke import invoke_function
from edge.errors import CoreNotRunningError, InvokeRefusedError
state, deadline = Path(sys.argv[1]), time.monotonic() + 120
print("ready", flush=True)
while time.monotonic() < deadline:
    try:
        invoke_function(state, "arn:aws:lambda:us-east-1:123456789012:function:none:1", b"")
    except CoreNotRunningError:
        time.sleep(0.002)
        continue
    except InvokeRefusedError:
        pass
    print(time.monotonic(), flush=True)
    break
"""


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--secrets", type=int, default=100, help="secrets in the deployment")
    parser.add_argument("--deployments", type=int, default=50, help="deployments in all")
    parser.add_argument("--refreshes", type=int, default=50, help="refreshes after a restart")
    parser.add_argument("--restarts", type=int, default=5, help="restarts timed; median")
    parser.add_argument("--repeat", type=int, default=10, help="runs of each CLI call; median")
    parser.add_argument(
        "--baseline-from",
        type=Path,
        metavar="CHECKOUT",
        help="measure another checkout of edge the same way (a baseline), in the same run",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        metavar="PY",
        help="the interpreter the cores, their workers and the CLI run on (default: this one)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="cores connect over TLS with a client certificate, as a device to AWS IoT",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args()


@dataclass
class Side:
    """One checkout's figures: memory in KiB (VmRSS, PSS), times in seconds."""

    name: str
    source: Path
    #: The interpreter its cores, workers and CLI calls run on.
    python: str
    memory: dict[str, tuple[int, int]] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    #: Its core, stopped, with the functions deployed: for the timed runs.
    core: CoreProcess | None = None


class TlsMosquitto(Mosquitto):
    """A broker with a TLS listener beside the plain one: certificates required."""

    @cached_property
    def tls_port(self) -> int:
        """The port of the TLS listener."""
        return free_port()

    def config(self) -> str:
        """A plain listener for the publisher, a TLS one for the cores; PKI in `workdir`."""
        pki = self.workdir
        return (
            # Started as root, Mosquitto would drop to a user who can't reach the work
            # directory (0700) to read its certificate.
            "user root\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"listener {self.tls_port} 127.0.0.1\n"
            f"cafile {pki}/ca.pem\ncertfile {pki}/server.pem\nkeyfile {pki}/server.key\n"
            "require_certificate true\n"
        )


def make_pki(directory: Path) -> None:
    """A CA, the broker's certificate (127.0.0.1) and a client's, all P-256, with openssl."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    directory.mkdir(parents=True, exist_ok=True)
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=footprint CA")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, extra in (("server", ("-extfile", "san.ext")), ("client", ())):
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *extra)  # fmt: skip
    # Mosquitto drops to its own user when started as root; the client key stays 0600.
    for name in ("ca.pem", "server.pem", "server.key"):
        (directory / name).chmod(0o644)
    (directory / "client.key").chmod(0o600)


@dataclass
class World:
    """The broker, Secrets Manager and the secrets every side deploys."""

    root: Path
    #: The `[mqtt]` section the cores get.
    mqtt: str
    broker_port: int
    moto: MotoServer
    sm: Any
    arns: list[str]


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, PSS) of a process in KiB."""
    return vm_rss_kib(pid), smaps_rollup_kib(pid)["Pss"]


def settled_memory(core: CoreProcess) -> tuple[int, int]:
    """The core's memory once it has been left alone for a moment."""
    time.sleep(SETTLE_SECONDS)
    assert core.proc is not None  # noqa: S101 - started by the caller
    return memory(core.proc.pid)


def run_cli(side: Side, *args: str) -> tuple[float, str]:
    """Run `python -m edge ARGS` from the side's checkout; return (wall seconds, stdout)."""
    started = time.perf_counter()
    result = subprocess.run(
        [side.python, "-m", "edge", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=source_env(side.source),
        cwd=side.source,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"edge {' '.join(args[:2])} failed: {result.stderr.strip()}")
    return elapsed, result.stdout


def write_core_config(path: Path, world: World, thing: str, extra: str = "") -> None:
    """A core config as a device has it (default log level, metrics and refresh off)."""
    path.write_text(
        f'[core]\nthing_name = "{thing}"\nstate_dir = "state"\n\n'
        f"[mqtt]\n{world.mqtt}reconnect_max_seconds = 1.0\n\n"
        f'[aws]\nregion = "{TEST_REGION}"\nendpoint_url = "{world.moto.url}"\n\n'
        '[log]\nformat = "json"\n\n'
        "[deployments]\nallow_unsigned = true\n\n"
        f'[workers]\nlocal_code_dirs = ["{path.parent}"]\n{extra}'
    )
    path.chmod(0o600)


def function(name: str, code: dict[str, str]) -> dict[str, Any]:
    """A pinned V1 function object running `{name}.handler`."""
    return {
        "Id": name,
        "FunctionArn": function_arn(name),
        "FunctionConfiguration": {
            "Pinned": True,
            "MemorySize": 65536,
            "Timeout": 30,
            "Handler": f"{name}.handler",
            "Code": code,
            "Environment": {"Variables": {}},
        },
    }


def function_arn(name: str) -> str:
    """The qualified ARN of a benchmark function."""
    return f"arn:aws:lambda:{TEST_REGION}:{ACCOUNT}:function:footprint-{name}:1"


@contextmanager
def running(core: CoreProcess) -> Iterator[CoreProcess]:
    """Start the core, wait until it listens for deployments, stop it at the end."""
    # The log file is the same across starts: wait for this start's connection.
    connected = core.count("mqtt.connected")
    core.start()
    try:
        core.wait_for_event("mqtt.connected", timeout=60, after=connected)
        yield core
    finally:
        if core.proc is not None:
            core.stop()


def deploy(operator: Operator, world: World, functions: list[dict[str, Any]]) -> None:
    """Deploy every secret and the functions; wait for Success."""
    resources = [secret_resource(f"s{i}", arn) for i, arn in enumerate(world.arns)]
    deployment = operator.deploy(resources, functions=functions)
    status = operator.final_status(deployment, timeout=300)
    if status["DeploymentStatus"] != "Success":
        raise RuntimeError(f"deployment failed: {status.get('ErrorMessage')}")


def first_answer(core: CoreProcess, side: Side, state_dir: Path) -> float:
    """Start the core; return the seconds from exec to its first answered IPC request."""
    probe = subprocess.Popen(
        [side.python, "-c", PROBE, str(state_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env=source_env(side.source),
        cwd=side.source,
    )
    assert probe.stdout is not None  # noqa: S101 - a pipe was asked for
    if probe.stdout.readline().strip() != "ready":
        raise RuntimeError("the probe did not start")
    started = time.monotonic()
    core.start()
    answered = probe.stdout.readline().strip()
    probe.wait(10)
    if not answered:
        raise RuntimeError(f"no answer from the core; see {core.log_path}")
    return float(answered) - started


def measure_side(side: Side, world: World, args: argparse.Namespace) -> None:
    """Every figure of one checkout, with a core of its own."""
    root = world.root / side.name
    root.mkdir()
    config = root / "core.toml"
    thing = f"footprint-{side.name}"
    write_core_config(config, world, thing, f'\n[metrics]\nlisten = "127.0.0.1:{free_port()}"\n')
    run_cli(side, "init", "--config", str(config))
    core = CoreProcess(
        config=config, log_path=root / "core.log", source_root=side.source, python=side.python
    )
    with running(core):
        side.memory["idle, metrics on"] = settled_memory(core)
    write_core_config(config, world, thing)
    codes = {}
    for name, source in HANDLERS.items():
        package = root / f"{name.removesuffix('.py')}.zip"
        data = write_v1_package(package, {name: source})
        codes[name.removesuffix(".py")] = {
            "Uri": package.as_uri(),
            "Sha256": hashlib.sha256(data).hexdigest(),
        }
    functions = [function(name, code) for name, code in codes.items()]
    operator = Operator(port=world.broker_port, prefix="edge", thing=thing)
    operator.connect()
    try:
        with running(core):
            side.memory["idle"] = settled_memory(core)
            deploy(operator, world, functions)
            side.memory["1 deployment"] = settled_memory(core)
            invoke = ("invoke", "--config", str(config), "--payload", "{}", "--function-arn")
            for name in codes:
                pid = json.loads(run_cli(side, *invoke, function_arn(name))[1])["pid"]
                side.memory[f"worker: {name}"] = memory(pid)
            for _ in range(args.deployments - 1):
                deploy(operator, world, functions)
            side.memory[f"{args.deployments} deployments"] = settled_memory(core)
        write_core_config(
            config,
            world,
            thing,
            "\n[refresh]\ninterval_seconds = 1\nmax_calls_per_second = 50\n",
        )
        workers = core.count("worker.started")
        with running(core):
            core.wait_for_event("worker.started", timeout=60, after=workers + len(codes) - 1)
            side.memory["restarted"] = settled_memory(core)
            for n in range(args.refreshes):
                world.sm.put_secret_value(
                    SecretId=world.arns[n % len(world.arns)], SecretString=f"v{side.name}{n}"
                )
                before = core.count("refresh.rotated")
                core.wait_for_event("refresh.rotated", timeout=120, after=before)
            side.memory[f"{args.refreshes} refreshes"] = settled_memory(core)
    finally:
        operator.close()
    # The timed runs: refresh off again, so that no fetch child competes with them.
    write_core_config(config, world, thing)
    side.core = core


def measure_times(sides: list[Side], args: argparse.Namespace) -> None:
    """Start times and CLI wall times, interleaved (baseline, this, baseline, ...)."""
    cores = {side.name: side.core for side in sides if side.core is not None}
    starts: dict[str, list[float]] = {name: [] for name in cores}
    for _ in range(args.restarts):
        for side in sides:
            core = cores[side.name]
            started = core.count("core.started")
            starts[side.name].append(first_answer(core, side, core.config.parent / "state"))
            core.wait_for_event("core.started", timeout=60, after=started)
            core.stop()
    cli: dict[str, dict[str, list[float]]] = {name: {} for name in cores}
    with contextlib.ExitStack() as stack:
        for side in sides:
            stack.enter_context(running(cores[side.name]))
        for side in sides:
            # Untimed: the worker has answered once, as a function already running has.
            config = str(cores[side.name].config)
            run_cli(side, "invoke", "--config", config, "--function-arn", function_arn("plain"))
        for _ in range(args.repeat):
            for side in sides:
                config = str(cores[side.name].config)
                invoke = ("invoke", "--config", config, "--payload", "{}", "--function-arn")
                calls = {
                    "edge secrets list --json": ("secrets", "list", "--json", "--config", config),
                    "edge invoke (running)": (*invoke, function_arn("plain")),
                }
                for key, call in calls.items():
                    cli[side.name].setdefault(key, []).append(run_cli(side, *call)[0])
    for side in sides:
        for key, runs in cli[side.name].items():
            side.times[key] = statistics.median(runs)
        side.times["start to first answer"] = statistics.median(starts[side.name])


def report_memory(sides: list[Side], args: argparse.Namespace) -> None:
    """Print the memory as markdown, each side a column, the ratio to the baseline last.

    Printed as soon as it is measured: a failure in the timed runs doesn't lose it.
    """
    print(f"\ninterpreter: {args.python}; MQTT {'over TLS' if args.tls else 'plain'}")
    print(f"\n{args.secrets} secrets, 2 pinned functions; memory in MB (VmRSS / PSS):\n")
    rows = {
        key: [f"{s.memory[key][0] / 1024:.1f} / {s.memory[key][1] / 1024:.1f}" for s in sides]
        for key in sides[0].memory
    }
    _table(sides, rows, lambda key, side: side.memory[key][0])


def report_times(sides: list[Side], args: argparse.Namespace) -> None:
    """Print the times as markdown, each side a column, the ratio to the baseline last."""
    print(f"\nTimes in ms (medians of {args.repeat}; restarts: of {args.restarts}):\n")
    rows = {key: [f"{s.times[key] * 1000:.0f}" for s in sides] for key in sides[0].times}
    _table(sides, rows, lambda key, side: side.times[key])


def _table(
    sides: list[Side], rows: dict[str, list[str]], value: Callable[[str, Side], float]
) -> None:
    ratio = len(sides) > 1
    print("| measure | " + " | ".join(s.name for s in sides) + (" | ratio |" if ratio else " |"))
    print("|" + " --- |" * (len(sides) + 1 + ratio))
    for key, cells in rows.items():
        row = f"| {key} | " + " | ".join(cells) + " |"
        if ratio:
            row += f" {value(key, sides[-1]) / value(key, sides[0]):.2f} |"
        print(row, flush=True)


def main() -> None:
    """Start the services, measure each side in turn, print the table."""
    args = parse_args()
    sides = [Side("this", REPO, args.python)]
    if args.baseline_from is not None:
        if not (args.baseline_from / "edge" / "__main__.py").exists():
            raise SystemExit(f"{args.baseline_from} is not a checkout of edge")
        sides.insert(0, Side("baseline", args.baseline_from.resolve(), args.python))
    workdir = Path(tempfile.mkdtemp(prefix="edge-footprint-"))
    broker_context: contextlib.AbstractContextManager[Mosquitto]
    if args.tls:
        make_pki(workdir / "mosquitto")
        broker_context = running_broker(
            TlsMosquitto(port=free_port(), workdir=workdir / "mosquitto")
        )
    else:
        broker_context = run_mosquitto(workdir / "mosquitto")
    with broker_context as broker, run_moto(workdir / "moto.log") as moto:
        if isinstance(broker, TlsMosquitto):
            pki = broker.workdir
            mqtt = (
                f'url = "mqtts://127.0.0.1:{broker.tls_port}"\nca_file = "{pki}/ca.pem"\n'
                f'cert_file = "{pki}/client.pem"\nkey_file = "{pki}/client.key"\n'
            )
        else:
            mqtt = f'url = "{broker.url}"\n'
        sm = moto.client()
        arns = [
            sm.create_secret(Name=f"footprint-{i}", SecretString=f"value-{i}")["ARN"]
            for i in range(args.secrets)
        ]
        world = World(workdir, mqtt, broker.port, moto, sm, arns)
        for side in sides:
            print(f"measuring {side.name} ({side.source}) ...", file=sys.stderr)
            measure_side(side, world, args)
        report_memory(sides, args)
        print("timing, interleaved ...", file=sys.stderr)
        measure_times(sides, args)
    report_times(sides, args)
    if args.keep:
        print(f"\nwork directory: {workdir}", file=sys.stderr)
    else:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


if __name__ == "__main__":
    main()
