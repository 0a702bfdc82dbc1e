# SPDX-License-Identifier: Apache-2.0
"""Load: many worker processes call get_secret_value flat out while deployments rotate the store.

    .venv/bin/python bench/load.py [--seconds 60] [--workers 16] [--rss-tolerance-mb 2]

Mosquitto and moto's server (edge/fixtures/services.py) and a real core: `edge run`'s own
entry point (edge.cli.main, uvloop when installed, JSON logs at info level) in a process of its
own. `--workers` processes run the unmodified `greengrasssdk` through the core's compat layer,
exactly as a function's code does (`greengrasssdk.client("secretsmanager").get_secret_value`),
each calling as fast as it can for `--seconds` from a common start. At 1/3 and 2/3 of the run
the conductor puts a new value in Secrets Manager and deploys it (a new DeploymentId, same
group); the store rotates underneath the callers.

Why the callers are not deployed pinned functions: every deployment replaces every function's
worker (WorkerManager.apply stops them all and revokes their tokens), so no function process
can call through a rotation, and a restarted worker could never read a stale value anyway. The
callers therefore hold tokens the core registers at start, the way Workload registers a worker
(IpcServer.register with a WorkerIdentity: the ARN of a deployed on-demand function granted the
secret, this user's uid, and the conductor's pid, whose descendants they are). The core process
is `edge run` plus that one registration; its IPC server, access checks (the function's
ResourceAccessPolicies) and store are the production ones.

Each call is recorded (start wall time, latency, which (VersionId, value) came back) in the
worker and written to a file at the end; values are compared as SHA-256 digests, never printed.
Reported: total calls and throughput, errors (must be 0), wrong values (must be 0), stale reads
(a call that *started* after the operator received a deployment's `Success` and still got an
older version; must be 0), p50/p99 latency over the run, in steady state and around each
rotation (publish - 1 s .. Success + 1 s), and the core's RSS sampled every second from /proc:
at 1/6 of the run (10 s of 60) and at the end, and the growth, which must stay within
`--rss-tolerance-mb` (why 2 MB: see bench/README.md). Exit status 1 on any error, wrong value,
stale read or growth beyond the tolerance.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
COMPAT_DIR = REPO / "edge" / "child" / "compat"
THING = "load-core"
SECRET_NAME = "load/db-password"
RESOURCE_ID = "load-secret"
LOAD_ARN = "arn:aws:lambda:us-east-1:123456789012:function:load-reader:1"
#: Calls each worker makes before the common start (imports, first connection, warm caches).
WARMUP_CALLS = 200
#: Seconds between starting the workers and their common start: each needs ~0.5 s of CPU to
#: import the SDK, and 16 of them share two CPUs with the core.
START_SLACK_SECONDS = 2.0
START_SLACK_PER_WORKER = 0.3
#: Latency window around a rotation: from this long before its publication to this long after
#: its Success was received.
ROTATION_MARGIN_SECONDS = 1.0
#: Version index a worker records for a call that failed.
ERROR_INDEX = 255


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load")
    parser.add_argument("--workers", type=int, default=16, help="caller processes")
    parser.add_argument(
        "--rss-tolerance-mb",
        type=float,
        default=2.0,
        help="allowed growth of the core's RSS from 1/6 of the run to its end",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    return parser.parse_args()


# --- the core: `edge run`, plus the callers' tokens ---------------------------------------------


def run_core(config: str, tokens_file: str, parent_pid: str) -> None:
    """Run `edge run --config CONFIG`; register the callers' tokens as its IPC server starts."""
    from edge.cli import main as edge_main  # noqa: PLC0415 - only this role needs the core
    from edge.ipc.server import WorkerIdentity  # noqa: PLC0415
    from edge.workers import workload  # noqa: PLC0415

    tokens = Path(tokens_file).read_text(encoding="utf-8").split()
    identity = WorkerIdentity(function_arn=LOAD_ARN, uid=os.getuid(), pid=int(parent_pid))
    enter = workload.Workload.__aenter__

    async def enter_and_register(self: workload.Workload) -> workload.Workload:
        entered = await enter(self)
        for token in tokens:
            self.ipc.register(token, identity)
        return entered

    workload.Workload.__aenter__ = enter_and_register  # type: ignore[method-assign,assignment]
    sys.exit(edge_main(["run", "--config", config]))


# --- a caller -----------------------------------------------------------------------------------


def run_worker(secret_id: str, start_at: float, seconds: float, out: str) -> None:
    """Call get_secret_value through greengrasssdk from start_at for seconds; record each call."""
    import greengrasssdk  # noqa: PLC0415 - found through the worker's PYTHONPATH, as in a function

    get_secret_value = greengrasssdk.client("secretsmanager").get_secret_value
    for _ in range(WARMUP_CALLS):
        get_secret_value(SecretId=secret_id)
    time.sleep(max(0.0, start_at - time.time()))
    starts = array.array("d")
    latencies = array.array("f")  # microseconds
    versions = array.array("B")
    seen: dict[tuple[str, str], int] = {}
    errors: dict[str, int] = {}
    clock, wall = time.perf_counter_ns, time.time
    end = start_at + seconds
    while True:
        started = wall()
        if started >= end:
            break
        before = clock()
        try:
            answer = get_secret_value(SecretId=secret_id)
            key = (answer["VersionId"], answer["SecretString"])
            index = seen.get(key)
            if index is None:
                index = seen[key] = len(seen)
        except Exception as exc:  # noqa: BLE001 - every failure is counted, by type only
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            index = ERROR_INDEX
        latencies.append((clock() - before) / 1000)
        starts.append(started)
        versions.append(index)
    with Path(out).open("wb") as file:
        starts.tofile(file)
        latencies.tofile(file)
        versions.tofile(file)
    summary = {
        "count": len(starts),
        "errors": errors,
        # Digests only: a value never leaves the worker in clear.
        "versions": {
            str(i): [vid, hashlib.sha256(value.encode()).hexdigest()]
            for (vid, value), i in seen.items()
        },
    }
    print(json.dumps(summary), flush=True)


def worker_env(socket_path: Path, token: str) -> dict[str, str]:
    """What a function's worker gets from the core (edge.workers.process.worker_environment)."""
    from edge.workers.process import (  # noqa: PLC0415
        GGC_MAX_INTERFACE_VERSION,
        ROUTER_FUNCTION_ARN,
        SECRETS_MANAGER_FUNCTION_ARN,
        SHADOW_FUNCTION_ARN,
    )

    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join([str(COMPAT_DIR), str(REPO)]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "MY_FUNCTION_ARN": LOAD_ARN,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": token,
        "SECRETS_MANAGER_FUNCTION_ARN": SECRETS_MANAGER_FUNCTION_ARN,
        "ROUTER_FUNCTION_ARN": ROUTER_FUNCTION_ARN,
        "SHADOW_FUNCTION_ARN": SHADOW_FUNCTION_ARN,
        "GGC_MAX_INTERFACE_VERSION": GGC_MAX_INTERFACE_VERSION,
        "AWS_LAMBDA_FUNCTION_NAME": "load-reader",
        "EDGE_IPC_SOCKET": str(socket_path),
    }


# --- the conductor ------------------------------------------------------------------------------


def idle_package(path: Path) -> dict[str, str]:
    """A function package whose handler does nothing: the deployed function is never invoked."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("app.py", "def function_handler(event, context):\n    return {}\n")
    return {"Uri": path.as_uri(), "Sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def rss_kb(pid: int) -> int | None:
    """VmRSS of a process in KB, from /proc (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class RssSampler:
    """Samples a process's RSS once a second in a thread: (seconds since `origin`, KB)."""

    pid: int
    origin: float
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Sample until stopped."""
        while not self._stop.is_set():
            kb = rss_kb(self.pid)
            if kb is not None:
                self.samples.append((time.time() - self.origin, kb))
            self._stop.wait(1.0)

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()

    def at(self, second: float) -> int:
        """The first sample taken at or after `second` (the last one if none)."""
        return next((kb for t, kb in self.samples if t >= second), self.samples[-1][1])


@dataclass
class Rotation:
    """A deployment made during the load."""

    index: int
    deployment_id: str
    digest: tuple[str, str]
    published: float
    success: float | None = None
    status: str = ""


@dataclass
class Calls:
    """Every call of every worker: start wall time, latency in µs, version index (global)."""

    starts: array.array[float] = field(default_factory=lambda: array.array("d"))
    latencies: array.array[float] = field(default_factory=lambda: array.array("f"))
    versions: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    unknown: int = 0


def percentile(ordered: list[float], fraction: float) -> float:
    """The value at `fraction` of a sorted list (nan if empty)."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


class Conductor:
    """Services, the core, the operator, the rotations and the callers."""

    def __init__(self, args: argparse.Namespace, root: Path, stack: contextlib.ExitStack) -> None:
        from edge.fixtures.core import CoreProcess, Operator, edge_cli  # noqa: PLC0415
        from edge.fixtures.services import (  # noqa: PLC0415
            AWS_TEST_ENV,
            TEST_REGION,
            run_mosquitto,
            run_moto,
        )

        self.args = args
        self.root = root
        broker = stack.enter_context(run_mosquitto(root / "mosquitto"))
        moto = stack.enter_context(run_moto(root / "moto.log"))
        self.sm = moto.client()
        self.aws_env = AWS_TEST_ENV
        value = f"v0-{secrets.token_hex(16)}"
        created = self.sm.create_secret(Name=SECRET_NAME, SecretString=value)
        self.arn = created["ARN"]
        self.digests = [(created["VersionId"], hashlib.sha256(value.encode()).hexdigest())]
        self.config = root / "core.toml"
        self.config.write_text(
            f'[core]\nthing_name = "{THING}"\nstate_dir = "state"\n\n'
            f'[mqtt]\nurl = "{broker.url}"\n\n'
            f'[aws]\nregion = "{TEST_REGION}"\nendpoint_url = "{moto.url}"\n\n'
            '[log]\nlevel = "info"\nformat = "json"\n\n'
            "[deployments]\nallow_unsigned = true\n\n"
            # Its function packages are written next to it.
            '[workers]\nlocal_code_dirs = ["."]\n'
        )
        init = edge_cli("init", "--config", str(self.config))
        if init.returncode != 0:
            raise RuntimeError(f"edge init failed: {init.stderr}")
        self.socket_path = root / "state" / "ipc" / "core.sock"
        self.code = idle_package(root / "load_reader.zip")
        self.tokens = [secrets.token_urlsafe(32) for _ in range(args.workers)]
        tokens_file = root / "tokens"
        tokens_file.touch(mode=0o600)
        tokens_file.write_text("\n".join(self.tokens), encoding="utf-8")
        self.core = CoreProcess(config=self.config, log_path=root / "core.log")
        self._start_core(tokens_file)
        stack.callback(self._stop_core)
        self.operator = Operator(port=broker.port, prefix="edge", thing=THING)
        self.received: list[tuple[float, dict[str, Any]]] = []
        stack.callback(self.operator.close)

    def _start_core(self, tokens_file: Path) -> None:
        """`edge run` with the callers' tokens (see run_core), its output in core.log."""
        with self.core.log_path.open("ab") as log:
            self.core.proc = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "_core",
                    str(self.config),
                    str(tokens_file),
                    str(os.getpid()),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.aws_env},
                cwd=REPO,
            )

    def _stop_core(self) -> None:
        if self.core.proc is not None:
            self.core.stop()

    @property
    def core_pid(self) -> int:
        """The core's pid."""
        assert self.core.proc is not None  # noqa: S101 - started in __init__
        return self.core.proc.pid

    def connect(self) -> None:
        """Wait for the core's broker connection; connect the operator, timing each status."""
        self.core.wait_for_event("mqtt.connected", timeout=60)
        self.operator.connect()
        client = self.operator.client
        assert client is not None  # noqa: S101 - connected above

        def on_message(_c: object, _u: object, msg: Any) -> None:
            doc = json.loads(msg.payload)
            self.received.append((time.time(), doc))
            self.operator.statuses.put(doc)

        client.on_message = on_message

    def deploy(self) -> tuple[str, float]:
        """Deploy the secret and the on-demand function granted it; return (id, publish time)."""
        from edge.fixtures.core import secret_resource  # noqa: PLC0415

        function = {
            "Id": "load-reader",
            "FunctionArn": LOAD_ARN,
            "FunctionConfiguration": {
                "Pinned": False,
                "MemorySize": 65536,
                "Timeout": 30,
                "Handler": "app.function_handler",
                # Never started: the callers only borrow its identity and its grant.
                "Code": self.code,
                "Environment": {
                    "Variables": {},
                    "ResourceAccessPolicies": [{"ResourceId": RESOURCE_ID, "Permission": "ro"}],
                },
            },
        }
        deployment_id = str(uuid.uuid4())
        published = time.time()
        self.operator.deploy(
            [secret_resource(RESOURCE_ID, self.arn)],
            functions=[function],
            deployment_id=deployment_id,
        )
        return deployment_id, published

    def success_time(self, deployment_id: str) -> tuple[str, float | None]:
        """Wait for the final status; return it and when the operator received Success."""
        final = self.operator.final_status(deployment_id, timeout=120)
        when = next(
            (
                t
                for t, doc in self.received
                if doc.get("DeploymentId") == deployment_id
                and doc.get("DeploymentStatus") == "Success"
            ),
            None,
        )
        return final["DeploymentStatus"], when

    def rotate(self, index: int) -> Rotation:
        """Put a new value in Secrets Manager, deploy it, wait for the final status."""
        value = f"v{index}-{secrets.token_hex(16)}"
        resp = self.sm.put_secret_value(SecretId=SECRET_NAME, SecretString=value)
        digest = (resp["VersionId"], hashlib.sha256(value.encode()).hexdigest())
        self.digests.append(digest)
        deployment_id, published = self.deploy()
        rotation = Rotation(index, deployment_id, digest, published)
        rotation.status, rotation.success = self.success_time(deployment_id)
        return rotation

    def start_workers(self, start_at: float) -> list[tuple[subprocess.Popen[str], Path]]:
        """Start the callers; they warm up, then wait for `start_at`."""
        procs = []
        for i, token in enumerate(self.tokens):
            out = self.root / f"worker-{i}.bin"
            proc = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "_worker",
                    SECRET_NAME,
                    repr(start_at),
                    repr(self.args.seconds),
                    str(out),
                ],
                stdout=subprocess.PIPE,
                text=True,
                env=worker_env(self.socket_path, token),
                cwd=self.root,
            )
            procs.append((proc, out))
        return procs

    def gather(self, procs: list[tuple[subprocess.Popen[str], Path]]) -> Calls:
        """Collect every worker's calls, with version indexes mapped to the rotation index."""
        calls = Calls()
        for proc, out in procs:
            stdout, _ = proc.communicate(timeout=self.args.seconds + 300)
            if proc.returncode != 0:
                raise RuntimeError(f"a worker failed ({proc.returncode}); see {self.root}")
            summary = json.loads(stdout)
            count = summary["count"]
            for name, n in summary["errors"].items():
                calls.errors[name] = calls.errors.get(name, 0) + n
            mapping = {ERROR_INDEX: -1}
            for local, (vid, digest) in summary["versions"].items():
                pair = (vid, digest)
                mapping[int(local)] = self.digests.index(pair) if pair in self.digests else -2
            with out.open("rb") as file:
                starts = array.array("d")
                starts.fromfile(file, count)
                latencies = array.array("f")
                latencies.fromfile(file, count)
                versions = array.array("B")
                versions.fromfile(file, count)
            calls.starts.extend(starts)
            calls.latencies.extend(latencies)
            mapped = [mapping[v] for v in versions]
            calls.unknown += sum(1 for v in mapped if v == -2)
            calls.versions.extend(mapped)
        return calls


def latency_line(label: str, latencies: list[float]) -> str:
    """`label: N calls, p50 X µs, p99 Y µs`."""
    ordered = sorted(latencies)
    return (
        f"{label}: {len(ordered):,} calls, p50 {percentile(ordered, 0.5):.0f} µs, "
        f"p99 {percentile(ordered, 0.99):.0f} µs"
    )


def analyse(
    args: argparse.Namespace,
    calls: Calls,
    rotations: list[Rotation],
    rss: RssSampler,
    start_at: float,
) -> list[str]:
    """Print the report; return the violations."""
    violations: list[str] = []
    total = len(calls.starts)
    errors = sum(calls.errors.values())
    print(
        f"\n{args.workers} workers x {args.seconds:g} s (greengrasssdk through the compat layer, "
        f"real `edge run` core, pid {rss.pid}): {total:,} calls, {total / args.seconds:,.0f}/s"
    )
    print(f"errors: {errors}" + (f" {calls.errors}" if errors else ""))
    if errors:
        violations.append(f"{errors} calls failed: {calls.errors}")
    print(f"wrong values (a VersionId/value pair Secrets Manager never had): {calls.unknown}")
    if calls.unknown:
        violations.append(f"{calls.unknown} calls answered a value never deployed")
    for rot in rotations:
        took = (rot.success - rot.published) if rot.success else float("nan")
        print(
            f"rotation {rot.index}: published at +{rot.published - start_at:.2f} s, "
            f"{rot.status} received at +{(rot.success or 0) - start_at:.2f} s "
            f"({took * 1000:.0f} ms later)"
        )
        if rot.success is None:
            violations.append(f"rotation {rot.index} ended in {rot.status}, not Success")
            continue
        stale = sum(
            1
            for s, v in zip(calls.starts, calls.versions, strict=True)
            if s > rot.success and 0 <= v < rot.index
        )
        first_new = min(
            (s for s, v in zip(calls.starts, calls.versions, strict=True) if v == rot.index),
            default=None,
        )
        seen = f"+{first_new - start_at:.2f} s" if first_new is not None else "never"
        print(
            f"  stale reads (started after Success, got an older version): {stale}; "
            f"new version first read by a call started at {seen}"
        )
        if stale:
            violations.append(f"{stale} stale reads after rotation {rot.index}'s Success")
    print(latency_line("latency, whole run", list(calls.latencies)))
    windows = [
        (rot.published - ROTATION_MARGIN_SECONDS, (rot.success or rot.published) + 1.0)
        for rot in rotations
    ]
    for rot, (low, high) in zip(rotations, windows, strict=True):
        around = [
            lat for s, lat in zip(calls.starts, calls.latencies, strict=True) if low <= s <= high
        ]
        print(latency_line(f"latency around rotation {rot.index}", around))
    steady = [
        lat
        for s, lat in zip(calls.starts, calls.latencies, strict=True)
        if not any(low <= s <= high for low, high in windows)
    ]
    print(latency_line("latency, steady state (outside those windows)", steady))
    violations += rss_report(args, rss)
    return violations


def rss_report(args: argparse.Namespace, rss: RssSampler) -> list[str]:
    """Print the core's RSS figures; return a violation if it grew beyond the tolerance."""
    if not rss.samples:
        return ["no RSS sample of the core"]
    first_at = args.seconds / 6
    first = rss.at(first_at)
    last_t, last = rss.samples[-1]
    growth_mb = (last - first) / 1024
    kbs = [kb for _, kb in rss.samples]
    print(
        f"core RSS: {first / 1024:.1f} MB at {first_at:.0f} s, {last / 1024:.1f} MB at "
        f"{last_t:.0f} s: growth {growth_mb:+.2f} MB (tolerance {args.rss_tolerance_mb:g} MB); "
        f"min {min(kbs) / 1024:.1f} MB, max {max(kbs) / 1024:.1f} MB over "
        f"{len(kbs)} samples (median {statistics.median(kbs) / 1024:.1f} MB)"
    )
    if growth_mb > args.rss_tolerance_mb:
        return [f"core RSS grew {growth_mb:.2f} MB (> {args.rss_tolerance_mb:g} MB)"]
    return []


def conduct(args: argparse.Namespace, root: Path) -> list[str]:
    """Run the load; return the violations."""
    with contextlib.ExitStack() as stack:
        conductor = Conductor(args, root, stack)
        conductor.connect()
        first, _ = conductor.deploy()
        status, _ = conductor.success_time(first)
        if status != "Success":
            raise RuntimeError(f"the first deployment ended in {status}; see {root}/core.log")
        start_at = time.time() + START_SLACK_SECONDS + START_SLACK_PER_WORKER * args.workers
        procs = conductor.start_workers(start_at)
        rss = RssSampler(pid=conductor.core_pid, origin=start_at)
        sampler = threading.Thread(target=rss.run, name="rss", daemon=True)
        time.sleep(max(0.0, start_at - time.time()))
        sampler.start()
        rotations = []
        for index in (1, 2):
            time.sleep(max(0.0, start_at + args.seconds * index / 3 - time.time()))
            rotations.append(conductor.rotate(index))
        calls = conductor.gather(procs)
        rss.stop()
        sampler.join()
        return analyse(args, calls, rotations, rss, start_at)


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:  # noqa: FBT001 - a command-line switch
    """A private work directory, removed afterwards unless kept."""
    root = Path(tempfile.mkdtemp(prefix="edge-load-"))
    root.chmod(0o700)
    try:
        yield root
    finally:
        if keep:
            print(f"work directory (core.log, worker-*.bin): {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    """Conduct the load test, or play one of its processes."""
    if len(sys.argv) > 1 and sys.argv[1] == "_core":
        run_core(*sys.argv[2:5])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        name, start_at, seconds, out = sys.argv[2:6]
        run_worker(name, float(start_at), float(seconds), out)
        return 0
    args = parse_args()
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        raise SystemExit("needs Mosquitto (apt-get install mosquitto)")
    with workdir(args.keep) as root:
        violations = conduct(args, root)
    print(f"violations: {len(violations)}")
    for line in violations:
        print(f"  - {line}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
