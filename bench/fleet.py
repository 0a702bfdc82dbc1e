# SPDX-License-Identifier: Apache-2.0
"""Fleet scale: N real cores, one Mosquitto, one moto; one group deployed to all of them.

    .venv/bin/python bench/fleet.py [--cores 200] [--batch 10] [--secrets 2] [--labels 1]
                                    [--delay-ms 30] [--concurrency 16] [--reserve-mb 4096]
                                    [--simulated 0] [--sim-processes 2] [--rounds 1]
                                    [--cores-per-connection 1000] [--publish-rate R]
                                    [--serve-from CHECKOUT] [--bulk] [--postgresql]
                                    [--replicas 1] [--kill-replica-after SECONDS]
                                    [--profile DIR [--cprofile]]
                                    [--timeout 600] [--keep]

Every core is a real `python -m edge run` with its own thing name, state directory and core key
(made by `edge init`'s own code), trusting the control plane's signing key. They all talk to one
Mosquitto (started here, `$SYS` every second) and to one moto server through
bench/latency_proxy.py, which adds `--delay-ms` to every call (a device's round trip to its
region) and counts the calls by operation.

How one group reaches N cores: a Greengrass V1 group has exactly one core, so a fleet is one
group per core. The operator creates the shared definitions once (a resource definition with
the secrets, a function definition with one on-demand function granted all of them, its code
published once with `edge cloud publish-function`), then per core a core definition naming its
thing and a group whose initial version names that core definition and the *shared* resource
and function definition versions. By default the deployment is N `CreateDeployment` calls, made as
a real operator's script makes them: boto3 against `edge cloud serve` (the Greengrass V1 REST
API), `--concurrency` requests at a time. With `--bulk` it is one `StartBulkDeployment` whose
input file (in moto's S3) names every group, run by the service itself. The service also
follows every core's status topic, so `GetDeploymentStatus` answers from its database.
`--postgresql` puts the control plane on a PostgreSQL database of the run's own (created and
dropped; `EDGE_TEST_POSTGRES_URL`, else 127.0.0.1:5432) instead of a SQLite file.

`--simulated N` adds N simulated cores (`edge cloud simulate-cores`, `--sim-processes`
processes, one MQTT connection each) beside the real ones, with a group each, deployed the same
way; `--cores 0` runs simulated cores only. `--rounds K` deploys every group K times and prints
the medians. `--serve-from CHECKOUT` runs `edge cloud serve` from another checkout of edge (a
baseline's code) with everything else from this one; `--publish-rate` sets its
`[mqtt] publish_rate`. `--replicas N` runs N `serve` on the one (PostgreSQL) database,
following statuses through a shared subscription; a bulk deployment runs on the first, and
CreateDeployment calls go round-robin. `--kill-replica-after SECONDS` (with `--bulk --replicas 2`)
SIGKILLs the replica running the bulk deployment that long after StartBulkDeployment; the other
one takes the bulk deployment over once its lease runs out, and the run reports the takeover and
counts from the database what a kill may break (groups deployed twice, deployments without a
final status, deployments delivered twice). `--profile DIR` splits `serve`'s CPU in the rounds
by part of the control plane (creation, drain + publish, status ingest; bench/profile_serve.py).

Measured, once all cores are connected and idle:

* time to all-Success: from the first CreateDeployment sent to the last core's Success seen on
  the broker, and per core (its CreateDeployment sent to its Success): p50, p90, max;
* the outbox publish rate (deployments through the broker, first to last) and the status-ingest
  lag (each final status's UpdatedAt to its recording in the database);
* CPU of every part: the control plane, the PostgreSQL backends of its database, the cores;
* broker messages: a counter client subscribed to `#` at QoS 0 counts every PUBLISH by topic
  kind (deployments, statuses, other), and `$SYS/broker/publish/messages/*` gives Mosquitto's
  own totals (these include deliveries to the counter and to the control plane's follower);
* Secrets Manager calls: the proxy's per-operation counters (S3 reads of function code apart);
* per-core memory: VmRSS (and PSS) of each `edge run` from /proc, idle and after Success.

Before starting the fleet it starts one core, measures its RSS and caps `--cores` to what
MemAvailable holds with `--reserve-mb` left for everybody else, saying so. Everything started
here is stopped on exit, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import ctypes
import io
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if TYPE_CHECKING:
    from edge.fixtures.simulate import SimulatedFleet

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
ACCOUNT = "123456789012"
REGION = "us-east-1"
PREFIX = "edge"
KEY_ID = "EDGEFLEETOPERATOR001"
#: Thing names of simulated cores: sim-0, sim-1, …
SIM_PREFIX = "sim-"
READER_FILE = BENCH_DIR / "functions" / "read_secrets.py"
READER_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:read-secrets:1"
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
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cores", type=int, default=200, help="cores to run (default 200)")
    parser.add_argument("--batch", type=int, default=10, help="cores started at a time")
    parser.add_argument("--secrets", type=int, default=2, help="secrets in the group")
    parser.add_argument("--labels", type=int, default=1, help="additional labels per secret")
    parser.add_argument(
        "--delay-ms", type=float, default=30.0, help="latency added to every call to moto"
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="CreateDeployment requests at a time"
    )
    parser.add_argument(
        "--reserve-mb", type=int, default=4096, help="memory to leave free for everything else"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for all-Success"
    )
    parser.add_argument(
        "--simulated",
        type=int,
        default=0,
        help="simulated cores (`edge cloud simulate-cores`) beside the real ones (default 0)",
    )
    parser.add_argument(
        "--sim-processes", type=int, default=2, help="processes the simulated cores use"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="deploy every group this many times; medians"
    )
    parser.add_argument(
        "--serve-from",
        type=Path,
        metavar="CHECKOUT",
        help="run `edge cloud serve` from another checkout of edge (a baseline's)",
    )
    parser.add_argument(
        "--publish-rate",
        type=float,
        help="[mqtt] publish_rate of `edge cloud serve` (default: the config's default)",
    )
    parser.add_argument(
        "--bulk", action="store_true", help="deploy with one StartBulkDeployment of every group"
    )
    parser.add_argument(
        "--postgresql", action="store_true", help="the control plane on PostgreSQL, not SQLite"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="`edge cloud serve` replicas on the one database (2+: --postgresql, statuses"
        " through a shared subscription); a bulk deployment runs on the first (default 1)",
    )
    parser.add_argument(
        "--cores-per-connection",
        type=int,
        default=1000,
        help="simulated cores per MQTT connection (default 1000)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile `edge cloud serve` (bench/profile_serve.py) into DIR; print the CPU split",
    )
    parser.add_argument(
        "--cprofile",
        action="store_true",
        help="with --profile: also a per-thread cProfile of `serve` (slow; its top functions)",
    )
    parser.add_argument(
        "--kill-replica-after",
        type=float,
        metavar="SECONDS",
        help="with --bulk --replicas 2: SIGKILL the replica running the bulk deployment this"
        " long after StartBulkDeployment; the other must finish it",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    parser.add_argument("--serve-proxy", metavar="UPSTREAM", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cores < 0 or args.simulated < 0 or args.cores + args.simulated < 1:
        parser.error("--cores and --simulated must add up to at least 1")
    if args.batch < 1 or args.concurrency < 1 or args.sim_processes < 1 or args.rounds < 1:
        parser.error("--batch, --concurrency, --sim-processes and --rounds must be at least 1")
    if args.replicas < 1 or args.cores_per_connection < 1:
        parser.error("--replicas and --cores-per-connection must be at least 1")
    if args.replicas > 1 and not args.postgresql:
        parser.error("--replicas 2 or more needs --postgresql: replicas share one database")
    if args.kill_replica_after is not None and (
        args.kill_replica_after < 0 or not args.bulk or args.replicas != 2 or args.rounds != 1
    ):
        parser.error("--kill-replica-after needs --bulk --replicas 2 --rounds 1 and SECONDS >= 0")
    return args


# --- /proc ------------------------------------------------------------------------------------


def meminfo_kb(key: str) -> int:
    """A field of /proc/meminfo, in kB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            return int(rest.split()[0])
    raise KeyError(key)


def status_kb(pid: int, key: str = "VmRSS") -> int:
    """A memory field of /proc/PID/status, in kB (0 if the process is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size of a process (shared pages divided among their users), in kB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_seconds() -> float:
    """CPU time every process on the machine used so far (all CPUs, idle and iowait excluded)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait.
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def children_of(pids: set[int]) -> int:
    """How many processes have one of `pids` as their parent."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rpartition(")")[2].split()[1]) in pids:
                    count += 1
    return count


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the benchmark dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# --- services ---------------------------------------------------------------------------------


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
                [sys.executable, __file__, "--serve-proxy", upstream, "--delay-ms", str(delay_ms)],
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


# --- the control plane ------------------------------------------------------------------------


@dataclass
class ControlPlane:
    """`edge cloud serve` and a boto3 Greengrass client signed with its operator key."""

    root: Path
    config: Path
    url: str
    secret: str
    proc: subprocess.Popen[bytes] | None = None
    #: Another checkout whose `edge cloud serve` runs instead of this one's (a baseline).
    serve_from: Path | None = None
    #: Where `serve` writes its CPU split (bench/profile_serve.py), if measured.
    profile: Path | None = None
    #: With `profile`: a cProfile of every thread too.
    cprofile: bool = False

    def cli(self, *args: str) -> str:
        """Run an `edge cloud` command; return its stdout, or fail with its stderr."""
        from edge.fixtures.core import edge_cli  # noqa: PLC0415

        result = edge_cli("cloud", "--config", str(self.config), *args)
        if result.returncode != 0:
            raise RuntimeError(f"edge cloud {args[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def start(self) -> None:
        """Start `edge cloud serve` and wait until /health says it is connected."""
        from edge.fixtures.services import AWS_TEST_ENV  # noqa: PLC0415

        with (self.root / "serve.log").open("ab") as log:
            launcher = (
                (sys.executable, "-m", "edge")
                if self.profile is None
                else (
                    *(sys.executable, str(BENCH_DIR / "profile_serve.py"), str(self.profile)),
                    *(["--cprofile"] if self.cprofile else []),
                    "--",
                )
            )
            self.proc = subprocess.Popen(
                [
                    *launcher,
                    *("--log-format", "json", "cloud"),
                    *("--config", str(self.config), "serve"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **AWS_TEST_ENV, **self._source_env()},
                cwd=self.serve_from or REPO,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads run yet
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + "/health", timeout=2) as answer,  # noqa: S310
            ):
                if json.loads(answer.read()).get("Mqtt") == "connected":
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"edge cloud serve did not start; see {self.root / 'serve.log'}")

    def profile_signal(self, sig: int) -> None:
        """Start (SIGUSR1) or write out (SIGUSR2) the profile of `serve`, if it is profiled."""
        if self.profile is not None and self.proc is not None:
            self.proc.send_signal(sig)

    def _source_env(self) -> dict[str, str]:
        if self.serve_from is None:
            return {}
        return {"PYTHONPATH": str(self.serve_from.resolve())}

    def stop(self) -> None:
        """SIGTERM the service and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def client(self, pool: int) -> Any:
        """A boto3 Greengrass client for the service, with `pool` connections."""
        import boto3  # noqa: PLC0415
        from botocore.config import Config  # noqa: PLC0415

        return boto3.client(
            "greengrass",
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=self.secret,
            config=Config(max_pool_connections=pool, retries={"mode": "standard"}),
        )


def write_cloud_config(
    root: Path,
    *,
    mqtt_url: str,
    moto_url: str,
    port: int,
    publish_rate: float | None = None,
    database: str = "cloud/edge-cloud.db",
    shared_group: str | None = None,
    name: str = "cloud.toml",
) -> Path:
    """The control plane's config: its database, key, S3 bucket, API port and operator key."""
    secret_file = root / "operator.secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(30) + "\n")
        secret_file.chmod(0o600)
    path = root / name
    path.write_text(
        f'[cloud]\ndatabase = "{database}"\nsigning_key = "cloud/signing.pem"\n'
        f'artifact_bucket = "edge-artifacts"\naccount_id = "{ACCOUNT}"\n'
        f'listen = "127.0.0.1:{port}"\n\n[cloud.auth]\n'
        f'keys = [{{access_key_id = "{KEY_ID}", secret_access_key_file = "operator.secret"}}]\n\n'
        f'[mqtt]\nurl = "{mqtt_url}"\ntopic_prefix = "{PREFIX}"\nreconnect_max_seconds = 1.0\n'
        + ("" if publish_rate is None else f"publish_rate = {publish_rate}\n")
        + ("" if shared_group is None else f'shared_subscription_group = "{shared_group}"\n')
        + "\n"
        f'[aws]\nregion = "{REGION}"\nendpoint_url = "{moto_url}"\n'
    )
    return path


def build_reader_package(path: Path) -> Path:
    """Zip bench/functions/read_secrets.py with the unmodified greengrasssdk."""
    from edge.fixtures.reference import write_v1_package  # noqa: PLC0415

    write_v1_package(path, {READER_FILE.name: READER_FILE.read_bytes()})
    return path


# --- cores ------------------------------------------------------------------------------------


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
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - started from the main thread
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


# --- watching the broker ----------------------------------------------------------------------


@dataclass
class Counter:
    """A client on `#` (QoS 0) that counts messages by kind and notes each core's final status."""

    port: int
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    sizes: collections.Counter[str] = field(default_factory=collections.Counter)
    other_topics: collections.Counter[str] = field(default_factory=collections.Counter)
    #: thing -> (monotonic time, DeploymentStatus, ErrorMessage) of its first final status.
    finals: dict[str, tuple[float, str, str]] = field(default_factory=dict)
    #: thing -> how many Success/Failure documents it published.
    final_count: collections.Counter[str] = field(default_factory=collections.Counter)
    sys: dict[str, int] = field(default_factory=dict)
    #: When each deployment message reached the counter (monotonic): the outbox's pace.
    deployments_at: list[float] = field(default_factory=list)
    #: thing -> the DeploymentId of every deployment message sent to it, in order.
    delivered: dict[str, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    client: Any = None

    def connect(self) -> None:
        """Connect and subscribe to `#` and to Mosquitto's `$SYS` message counters."""
        import paho.mqtt.client as paho  # noqa: PLC0415
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        ready = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"fleet-counter-{os.getpid()}")
        client.on_connect = lambda c, *_: c.subscribe(
            [("#", 0), ("$SYS/broker/messages/#", 0), ("$SYS/broker/publish/messages/#", 0)]
        )
        client.on_subscribe = lambda *_: ready.set()
        client.on_message = self._on_message
        client.connect("127.0.0.1", self.port, keepalive=60)
        client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("the counter client could not subscribe")
        self.client = client

    def close(self) -> None:
        """Disconnect."""
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
            self.client = None

    def reset(self) -> None:
        """Forget what was counted so far (statuses included)."""
        with self.lock:
            self.kinds.clear()
            self.sizes.clear()
            self.other_topics.clear()
            self.finals.clear()
            self.final_count.clear()
            self.deployments_at.clear()
            self.delivered.clear()

    def publish_rate(self) -> float:
        """Deployments the broker delivered per second, first to last."""
        with self.lock:
            stamps = list(self.deployments_at)
        if len(stamps) < 2:
            return 0.0
        return (len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-6)

    def sys_snapshot(self) -> dict[str, int]:
        """Mosquitto's `$SYS` counters, at least one `sys_interval` fresh."""
        time.sleep(2.2)
        with self.lock:
            return dict(self.sys)

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        now = time.monotonic()
        topic: str = msg.topic
        if topic.startswith("$SYS/"):
            with contextlib.suppress(ValueError), self.lock:
                self.sys[topic.removeprefix("$SYS/broker/")] = int(msg.payload)
            return
        parts = topic.split("/")
        things = len(parts) >= 4 and parts[0] == PREFIX and parts[1] == "things"
        kind = "other"
        if things and parts[3:] == ["deployments"]:
            kind = "deployments"
        elif things and parts[3:] == ["deployments", "status"]:
            kind = "statuses"
        with self.lock:
            self.kinds[kind] += 1
            self.sizes[kind] += len(msg.payload)
            if kind == "deployments":
                self.deployments_at.append(now)
                self.delivered.setdefault(parts[2], []).append(deployment_id(msg.payload))
            if kind == "other":
                shape = [*parts[:2], "{thing}", *parts[3:]] if things else parts
                self.other_topics["/".join(shape)] += 1
            if kind != "statuses":
                return
            with contextlib.suppress(ValueError):
                doc = json.loads(msg.payload)
                status = doc.get("DeploymentStatus")
                if status in {"Success", "Failure"}:
                    self.final_count[parts[2]] += 1
                    self.finals.setdefault(
                        parts[2], (now, status, str(doc.get("ErrorMessage", "")))
                    )


def deployment_id(envelope: bytes) -> str:
    """The DeploymentId inside a signed deployment envelope (unverified), or "?"."""
    import base64  # noqa: PLC0415

    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        return str(json.loads(base64.b64decode(json.loads(envelope)["Document"]))["DeploymentId"])
    return "?"


# --- a replica SIGKILLed mid-bulk -------------------------------------------------------------


def psycopg_url(database: str) -> str:
    """The run's database URL as psycopg takes it."""
    return database.replace("postgresql+psycopg://", "postgresql://")


class ReplicaKill:
    """SIGKILL the replica holding a bulk deployment's lease; watch the other take it over.

    A thread of its own, so the kill lands on time whatever the main loop is waiting for. It
    reads the lease and the counts straight from the control plane's PostgreSQL database.
    """

    def __init__(self, fleet: Fleet, bulk_id: str, t0: float) -> None:
        self.fleet = fleet
        self.bulk_id = bulk_id
        self.t0 = t0
        self.killed = threading.Event()
        #: What was seen: times are seconds after StartBulkDeployment was sent.
        self.facts: dict[str, Any] = {}
        self.survivor: ControlPlane = fleet.replicas[-1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replica-kill", daemon=True)
        self._thread.start()

    def close(self, timeout: float) -> None:
        """Stop watching (after the takeover or at the deadline) and wait for the thread."""
        self._stop.set()
        self._thread.join(timeout)

    def _bulk(self, conn: Any) -> tuple[str | None, float | None, str, int, int]:
        """Lease owner, its seconds left, state, deployments created and outbox rows unsent."""
        row = conn.execute(
            "SELECT lease_owner, lease_expires - extract(epoch FROM clock_timestamp()), state,"
            " (SELECT count(*) FROM bulk_records WHERE bulk_id = %(id)s"
            "  AND deployment_id IS NOT NULL),"
            " (SELECT count(*) FROM outbox)"
            " FROM bulk_deployments WHERE id = %(id)s",
            {"id": self.bulk_id},
        ).fetchone()
        left = None if row[1] is None else float(row[1])
        return row[0], left, str(row[2]), int(row[3]), int(row[4])

    def _run(self) -> None:
        import psycopg  # noqa: PLC0415

        fleet = self.fleet
        with psycopg.connect(psycopg_url(fleet.database), autocommit=True) as conn:
            self._stop.wait(max(0.0, self.t0 + fleet.args.kill_replica_after - time.monotonic()))
            owner, left, state, created, unsent = self._bulk(conn)
            # The lease owner is host:pid:random; the replica with that pid runs the bulk.
            pid = int(owner.split(":")[1]) if owner else -1
            victim = next(
                (r for r in fleet.replicas if r.proc is not None and r.proc.pid == pid),
                fleet.replicas[0],
            )
            assert victim.proc is not None  # noqa: S101 - every replica runs by now
            self.survivor = next(r for r in fleet.replicas if r is not victim)
            victim_cpu = cpu_seconds(victim.proc.pid)
            victim.proc.kill()
            killed_at = time.monotonic()
            victim.proc.wait(10)
            with fleet.counter.lock:
                delivered = sum(len(ids) for ids in fleet.counter.delivered.values())
                finals = len(fleet.counter.finals)
            self.facts.update(
                killed_at=killed_at - self.t0,
                victim=fleet.replicas.index(victim),
                held_lease=owner is not None and pid == victim.proc.pid,
                lease_left=left,
                state_at_kill=state,
                created_at_kill=created,
                unsent_at_kill=unsent,
                delivered_at_kill=delivered,
                finals_at_kill=finals,
                victim_cpu=victim_cpu,
            )
            self.killed.set()
            while not self._stop.wait(0.05):
                now_owner, _, state, created, _ = self._bulk(conn)
                if now_owner is not None and now_owner != owner:
                    self.facts.update(
                        resumed_at=time.monotonic() - self.t0,
                        created_at_resume=created,
                        state_at_resume=state,
                    )
                    return
                if state in {"Completed", "Stopped", "Failed"}:
                    self.facts["ended_without_takeover"] = state
                    return

    def outcome(self, cpu_before: list[float]) -> dict[str, Any]:
        """Stop watching; the facts, the census and each replica's CPU since `cpu_before`."""
        self.close(10)
        fleet, facts = self.fleet, dict(self.facts)
        survivor = fleet.replicas.index(self.survivor)
        pid = self.survivor.proc.pid if self.survivor.proc else 0
        facts["survivor_cpu"] = cpu_seconds(pid) - cpu_before[survivor]
        facts["victim_cpu"] = facts.get("victim_cpu", 0.0) - cpu_before[facts.get("victim", 0)]
        facts["census"] = self.census()
        import psycopg  # noqa: PLC0415

        with psycopg.connect(psycopg_url(fleet.database), autocommit=True) as conn:
            facts["unfinished_things"] = [
                str(row[0])
                for row in conn.execute(
                    "SELECT thing_name FROM deployments WHERE status NOT IN ('Success', 'Failure')"
                )
            ]
        return facts

    def census(self) -> dict[str, int]:
        """What the kill may have broken, from the database: each count must be 0."""
        import psycopg  # noqa: PLC0415

        queries = {
            "groups with more than one deployment": "SELECT count(*) FROM (SELECT group_id"
            " FROM deployments GROUP BY group_id HAVING count(*) > 1) AS twice",
            "groups of the input without a deployment": "SELECT count(*) FROM bulk_records r"
            " WHERE r.bulk_id = %(id)s AND NOT EXISTS"
            " (SELECT 1 FROM deployments d WHERE d.group_id = r.group_id)",
            "deployments without a final status": "SELECT count(*) FROM deployments"
            " WHERE status NOT IN ('Success', 'Failure')",
            "outbox rows never sent": "SELECT count(*) FROM outbox",
        }
        with psycopg.connect(psycopg_url(self.fleet.database), autocommit=True) as conn:
            return {
                name: int(conn.execute(sql, {"id": self.bulk_id}).fetchone()[0])  # type: ignore[index]
                for name, sql in queries.items()
            }


# --- the run ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


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


def in_pool(fn: Callable[[int], Any], items: int, workers: int) -> list[Any]:
    """Run fn(0..items-1) on a thread pool; return the results in order."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, range(items)))


class Fleet:
    """Services, control plane, cores and the measurements of one run."""

    def __init__(self, args: argparse.Namespace, root: Path, stack: contextlib.ExitStack) -> None:
        import boto3  # noqa: PLC0415

        from edge.fixtures.services import AWS_TEST_ENV, free_port, run_moto  # noqa: PLC0415

        self.args = args
        self.root = root
        self.broker = start_broker(root / "mosquitto", stack)
        self.moto = stack.enter_context(run_moto(root / "moto.log"))
        self.proxy = CountingProxy(self.moto.url, args.delay_ms, root / "proxy.log")
        stack.callback(self.proxy.close)
        self.sm = boto3.client(
            "secretsmanager",
            endpoint_url=self.moto.url,
            region_name=REGION,
            aws_access_key_id=AWS_TEST_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=AWS_TEST_ENV["AWS_SESSION_TOKEN"],
        )
        self.database = "cloud/edge-cloud.db"
        if args.postgresql:
            from tests.support.postgres import server_url, session_database  # noqa: PLC0415

            self.database = stack.enter_context(session_database(server_url()))
        #: Every `serve` replica; the first runs the bulk deployment and the set-up calls.
        self.replicas: list[ControlPlane] = []
        for number in range(args.replicas):
            port = free_port()
            config = write_cloud_config(
                root,
                mqtt_url=self.broker.url,
                moto_url=self.moto.url,
                port=port,
                publish_rate=args.publish_rate,
                database=self.database,
                shared_group="fleet" if args.replicas > 1 else None,
                name="cloud.toml" if number == 0 else f"cloud-{number}.toml",
            )
            home = root if number == 0 else root / f"replica-{number}"
            home.mkdir(exist_ok=True)
            profile = args.profile
            if profile is not None and args.replicas > 1:
                profile = profile / f"replica-{number}"
            self.replicas.append(
                ControlPlane(
                    home,
                    config,
                    f"http://127.0.0.1:{port}",
                    (root / "operator.secret").read_text().strip(),
                    serve_from=args.serve_from,
                    profile=profile,
                    cprofile=args.cprofile,
                )
            )
            stack.callback(self.replicas[-1].stop)
        self.cloud = self.replicas[0]
        self.simulated: SimulatedFleet | None = None
        self.sim_things = [f"{SIM_PREFIX}{i}" for i in range(args.simulated)]
        self.cores: list[Core] = []
        stack.callback(lambda: stop_cores(self.cores))
        self.counter = Counter(self.broker.port)
        stack.callback(self.counter.close)
        self.notes: list[str] = []
        #: Final statuses in the database before the current round.
        self.recorded_before = 0
        #: Each group's version, in the order of the group ids (for a bulk input file).
        self.group_versions: list[str] = []

    def define(self) -> tuple[str, str]:
        """Secrets in moto; init, publish the function, serve; the shared definitions' ARNs."""
        self.cloud.cli("init")
        package = build_reader_package(self.root / "read_secrets.zip")
        self.cloud.cli(
            *("publish-function", "--function-arn", READER_ARN),
            *("--zip-file", f"fileb://{package}", "--handler", "read_secrets.function_handler"),
        )
        for replica in self.replicas:
            replica.start()
        labels = [f"Label{i}" for i in range(1, self.args.labels + 1)]
        resources = []
        for i in range(self.args.secrets):
            arn = self.sm.create_secret(
                Name=f"fleet/secret-{i}", SecretString=f"v0-{secrets.token_hex(8)}"
            )["ARN"]
            for label in labels:
                self.sm.put_secret_value(
                    SecretId=arn,
                    SecretString=f"{label}-{secrets.token_hex(8)}",
                    VersionStages=[label],
                )
            data: dict[str, Any] = {"ARN": arn}
            if labels:
                data["AdditionalStagingLabelsToDownload"] = labels
            resources.append(
                {
                    "Id": f"secret-{i}",
                    "Name": f"fleet-secret-{i}",
                    "ResourceDataContainer": {"SecretsManagerSecretResourceData": data},
                }
            )
        function = {
            "Id": "read-secrets",
            "FunctionArn": READER_ARN,
            "FunctionConfiguration": {
                "Pinned": False,
                "MemorySize": 16384,
                "Timeout": 10,
                "Environment": {
                    "ResourceAccessPolicies": [
                        {"ResourceId": r["Id"], "Permission": "ro"} for r in resources
                    ]
                },
            },
        }
        gg = self.cloud.client(4)
        created = gg.create_resource_definition(
            Name="fleet-resources", InitialVersion={"Resources": resources}
        )
        functions = gg.create_function_definition(
            Name="fleet-functions", InitialVersion={"Functions": [function]}
        )
        return str(created["LatestVersionArn"]), str(functions["LatestVersionArn"])

    @property
    def things(self) -> list[str]:
        """Every core's thing name, the real ones first."""
        return [c.thing for c in self.cores] + self.sim_things

    def create_groups(self, resources: str, functions: str) -> tuple[list[str], float]:
        """Per core a core definition and a group naming it and the shared versions."""
        gg = self.cloud.client(self.args.concurrency)
        things = self.things

        def one(index: int) -> tuple[str, str]:
            thing = things[index]
            core = gg.create_core_definition(
                Name=f"{thing}-core",
                InitialVersion={
                    "Cores": [
                        {
                            "Id": thing,
                            "ThingArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/{thing}",
                            "CertificateArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:cert/{thing}",
                            "SyncShadow": False,
                        }
                    ]
                },
            )
            group = gg.create_group(
                Name=f"{thing}-group",
                InitialVersion={
                    "CoreDefinitionVersionArn": core["LatestVersionArn"],
                    "ResourceDefinitionVersionArn": resources,
                    "FunctionDefinitionVersionArn": functions,
                },
            )
            return str(group["Id"]), str(group["LatestVersion"])

        began = time.monotonic()
        made = in_pool(one, len(things), self.args.concurrency)
        self.group_versions = [version for _, version in made]
        return [group for group, _ in made], time.monotonic() - began

    def start_simulated(self) -> None:
        """Start `edge cloud simulate-cores` for the simulated things; wait until it follows."""
        if not self.sim_things:
            return
        from edge.fixtures.simulate import SimulatedFleet  # noqa: PLC0415

        self.simulated = SimulatedFleet(
            self.cloud.config,
            (
                *("--count", str(len(self.sim_things)), "--prefix", SIM_PREFIX),
                *("--processes", str(self.args.sim_processes)),
                *("--cores-per-connection", str(self.args.cores_per_connection)),
            ),
        )
        began = time.monotonic()
        self.simulated.start(timeout=120)
        took = time.monotonic() - began
        print(f"{len(self.sim_things)} simulated cores following in {took:.1f} s", flush=True)

    def start_cores(self, count: int) -> int:
        """Start one core, size the fleet by its memory, then the rest in batches."""
        if count == 0:
            self.startup_seconds = 0.0
            return 0
        trusted = self.root / "cloud" / "signing.pem.pub"
        for_core = {"mqtt_url": self.broker.url, "endpoint_url": self.proxy.url}
        first = Core(0, self.root / "cores" / "0000")
        first.prepare(**for_core, trusted_key=trusted)
        self.cores.append(first)
        start_batch([first])
        time.sleep(2.0)
        count, text = fit(count, status_kb(first.pid), self.args.reserve_mb)
        print(f"memory: {text}")
        if count < 1:
            raise SystemExit("fleet: not even one core fits; free memory or lower --reserve-mb")
        if count < self.args.cores:
            note = f"--cores {self.args.cores} doesn't fit in memory: running {count} cores"
            print(f"fleet: {note}", file=sys.stderr)
            self.notes.append(note)
        began = time.monotonic()
        for start in range(1, count, self.args.batch):
            batch = [
                Core(i, self.root / "cores" / f"{i:04d}")
                for i in range(start, min(count, start + self.args.batch))
            ]
            for core in batch:
                core.prepare(**for_core, trusted_key=trusted)
            self.cores.extend(batch)
            took = start_batch(batch)
            print(f"  cores {start:4d}-{batch[-1].index:4d} connected in {took:.1f} s", flush=True)
        self.startup_seconds = time.monotonic() - began
        return count

    def deploy(self, group_ids: list[str]) -> dict[str, Any]:
        """CreateDeployment for every group at once; wait for every core's final status."""
        clients = [r.client(self.args.concurrency) for r in self.replicas]
        sent: list[float] = [0.0] * len(group_ids)
        answered: list[float] = [0.0] * len(group_ids)
        deployment_ids: list[str] = [""] * len(group_ids)

        def one(index: int) -> None:
            sent[index] = time.monotonic()
            # Spread over the replicas as a load balancer does.
            gg = clients[index % len(clients)]
            created = gg.create_deployment(GroupId=group_ids[index], DeploymentType="NewDeployment")
            answered[index] = time.monotonic()
            deployment_ids[index] = str(created["DeploymentId"])

        cpu_before = self.cpu()
        t0 = time.monotonic()
        in_pool(one, len(group_ids), self.args.concurrency)
        published = time.monotonic() - t0
        deadline = t0 + self.args.timeout
        while len(self.counter.finals) < len(group_ids) and time.monotonic() < deadline:
            dead = [c.thing for c in self.cores if not c.alive()]
            if dead:
                self.notes.append(f"cores exited during the deployment: {dead}")
                break
            time.sleep(0.05)
        last_final = max((t for t, _, _ in self.counter.finals.values()), default=time.monotonic())
        recorded = self.wait_recorded(len(group_ids), deadline)
        # After the database holds every final status: the service's CPU includes following.
        cpu_after, window = self.cpu(), time.monotonic() - t0
        return {
            "t0": t0,
            "published": published,
            "sent": sent,
            "answered": answered,
            "deployment_ids": deployment_ids,
            "all_final": last_final - t0,
            "final_after_answered": last_final - max(answered),
            "recorded_lag": recorded - last_final,
            "group_ids": group_ids,
            "cpu": {k: cpu_after[k] - cpu_before[k] for k in cpu_before},
            "window": window,
            "publish_rate": self.counter.publish_rate(),
            "ingest_lag": self.ingest_lags(deployment_ids),
        }

    def deploy_bulk(self, group_ids: list[str]) -> dict[str, Any]:
        """One StartBulkDeployment naming every group; wait for every core's final status."""
        import boto3  # noqa: PLC0415

        from edge.fixtures.services import AWS_TEST_ENV  # noqa: PLC0415

        s3 = boto3.client(
            "s3",
            endpoint_url=self.moto.url,
            region_name=REGION,
            aws_access_key_id=AWS_TEST_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=AWS_TEST_ENV["AWS_SESSION_TOKEN"],
        )
        s3.create_bucket(Bucket="fleet-bulk")
        key = f"groups-{secrets.token_hex(4)}.jsonl"
        lines = [
            json.dumps({"GroupId": g, "GroupVersionId": v, "DeploymentType": "NewDeployment"})
            for g, v in zip(group_ids, self.group_versions, strict=True)
        ]
        s3.put_object(Bucket="fleet-bulk", Key=key, Body="\n".join(lines) + "\n")
        gg = self.cloud.client(1)
        cpu_before = self.cpu()
        replica_cpu = [cpu_seconds(r.proc.pid) if r.proc else 0.0 for r in self.replicas]
        t0 = time.monotonic()
        started = gg.start_bulk_deployment(
            ExecutionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/fleet-bulk",
            InputFileUri=f"s3://fleet-bulk/{key}",
        )
        answered = time.monotonic()
        bulk_id = started["BulkDeploymentId"]
        kill = None if self.args.kill_replica_after is None else ReplicaKill(self, bulk_id, t0)
        deadline = t0 + self.args.timeout
        ended = None
        while time.monotonic() < deadline:
            if ended is None:
                gg, state = self.bulk_state(gg, bulk_id, kill)
                if state in {"Completed", "Stopped", "Failed"}:
                    ended = time.monotonic()
            if ended is not None and len(self.counter.finals) >= len(group_ids):
                break
            # Twice a second: `start-bulk-deployment --wait` asks once a second.
            time.sleep(0.5)
        last_final = max((t for t, _, _ in self.counter.finals.values()), default=time.monotonic())
        recorded = self.wait_recorded(len(group_ids), deadline)
        cpu_after, window = self.cpu(), time.monotonic() - t0
        killed = {} if kill is None else kill.outcome(replica_cpu)
        if killed:
            # The killed replica's CPU left /proc with it: the total is the two parts.
            cpu_after["control plane"] = (
                cpu_before["control plane"] + killed["survivor_cpu"] + killed["victim_cpu"]
            )
            # So did its PostgreSQL backends' (they end with its connections): not measured.
            cpu_after["postgresql"] = float("nan")
        deployment_ids = {}
        pages = gg.get_paginator("list_bulk_deployment_detailed_reports")
        for page in pages.paginate(BulkDeploymentId=bulk_id):
            for item in page["Deployments"]:
                if "DeploymentId" in item:
                    group = item["GroupArn"].rsplit("/", 1)[-1]
                    deployment_ids[group] = item["DeploymentId"]
        ids = [deployment_ids.get(g, "") for g in group_ids]
        return {
            "t0": t0,
            "published": (ended or time.monotonic()) - t0,
            "sent": [t0] * len(group_ids),
            "answered": [answered] * len(group_ids),
            "deployment_ids": ids,
            "publish_rate": self.counter.publish_rate(),
            "ingest_lag": self.ingest_lags(ids),
            "all_final": last_final - t0,
            "final_after_answered": last_final - (ended or answered),
            "recorded_lag": recorded - last_final,
            "group_ids": group_ids,
            "cpu": {k: cpu_after[k] - cpu_before[k] for k in cpu_before},
            "window": window,
            "kill": killed,
        }

    def bulk_state(self, gg: Any, bulk_id: str, kill: ReplicaKill | None) -> tuple[Any, str]:
        """The bulk deployment's state, and the client to ask next (the survivor after a kill)."""
        if kill is not None and kill.killed.is_set() and self.cloud is not kill.survivor:
            # From now on every call goes to the survivor, as a load balancer's would.
            self.cloud = kill.survivor
            gg = self.cloud.client(1)
        try:
            return gg, str(
                gg.get_bulk_deployment_status(BulkDeploymentId=bulk_id)["BulkDeploymentStatus"]
            )
        except BotoCoreError:
            # The replica asked was SIGKILLed under the call: the survivor is asked next time.
            if kill is None:
                raise
            return gg, "unknown"

    def wait_recorded(self, count: int, deadline: float) -> float:
        """Wait until the control plane's database holds `count` more final statuses."""
        from edge.cloud.db import Database  # noqa: PLC0415

        where = self.database if self.args.postgresql else self.root / self.database
        with Database.open(where) as db:
            while time.monotonic() < deadline:
                with db.read() as conn:
                    final = int(
                        conn.execute(
                            "SELECT count(*) FROM deployments"
                            " WHERE status IN ('Success', 'Failure')"
                        ).scalar()
                    )
                if final - self.recorded_before >= count:
                    self.recorded_before = final
                    break
                time.sleep(0.05)
        return time.monotonic()

    def ingest_lags(self, deployment_ids: list[str]) -> list[float]:
        """Seconds from each final status's UpdatedAt (the core's clock) to its recording."""
        from datetime import datetime  # noqa: PLC0415

        from edge.cloud.db import Database  # noqa: PLC0415

        where = self.database if self.args.postgresql else self.root / self.database
        ids = [d for d in deployment_ids if d]
        lags: list[float] = []
        with Database.open(where) as db, db.read() as conn:
            for start in range(0, len(ids), 1000):
                rows = conn.execute(
                    "SELECT updated_at, recorded_at FROM deployment_events"
                    " WHERE status IN ('Success', 'Failure') AND deployment_id IN :ids",
                    {"ids": ids[start : start + 1000]},
                ).fetchall()
                lags += [
                    (
                        datetime.fromisoformat(r["recorded_at"])
                        - datetime.fromisoformat(r["updated_at"])
                    ).total_seconds()
                    for r in rows
                ]
        return sorted(lags)

    def api_statuses(self, result: dict[str, Any]) -> collections.Counter[str]:
        """GetDeploymentStatus of every deployment through the API, by status."""
        gg = self.cloud.client(self.args.concurrency)

        def one(index: int) -> str:
            answer = gg.get_deployment_status(
                GroupId=result["group_ids"][index], DeploymentId=result["deployment_ids"][index]
            )
            return str(answer["DeploymentStatus"])

        return collections.Counter(in_pool(one, len(result["group_ids"]), self.args.concurrency))

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each part of the run, and by the whole machine."""
        parts = {
            "cores": sum(cpu_seconds(c.pid) for c in self.cores if c.proc is not None),
            "moto": cpu_seconds(self.moto.proc.pid),
            "latency proxy": cpu_seconds(self.proxy.proc.pid),
            "mosquitto": cpu_seconds(self.broker.proc.pid),
            "control plane": sum(cpu_seconds(r.proc.pid) for r in self.replicas if r.proc),
            "simulated cores": self.simulated_cpu(),
            "postgresql": self.postgresql_cpu(),
            "benchmark (boto3, counter)": cpu_seconds(os.getpid()),
        }
        parts["machine"] = machine_cpu_seconds()
        return parts

    def postgresql_cpu(self) -> float:
        """CPU seconds of the PostgreSQL backends serving the run's database, now connected.

        The replicas keep their pooled connections, so the backends live through a round;
        one that ends between two readings takes its CPU with it (counted short).
        """
        if not self.args.postgresql:
            return 0.0
        import psycopg  # noqa: PLC0415

        url = self.database.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url) as conn:
            pids = [
                int(row[0])
                for row in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid()"
                )
            ]
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += cpu_seconds(pid)
        return total

    def simulated_cpu(self) -> float:
        """CPU seconds of `simulate-cores` and its processes."""
        if self.simulated is None or self.simulated.proc is None:
            return 0.0
        pid = self.simulated.proc.pid
        children = (Path("/proc") / str(pid) / "task" / str(pid) / "children").read_text().split()
        return sum(cpu_seconds(p) for p in [pid, *map(int, children)])

    def memory(self) -> tuple[list[int], list[int]]:
        """VmRSS and PSS of every running core, in kB."""
        pids = [c.pid for c in self.cores if c.alive()]
        return [status_kb(p) for p in pids], [pss_kb(p) for p in pids]


def mb(kb: float) -> str:
    """Return kB as MB text."""
    return f"{kb / 1024:.1f}"


def spread(values: list[float], unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
    """Return 'p50 / p90 / max' of values, as text."""
    p50, p90, top = (
        v * scale for v in (percentile(values, 0.5), percentile(values, 0.9), max(values))
    )
    return f"{p50:.{digits}f} / {p90:.{digits}f} / {top:.{digits}f} {unit}"


def per(count: float, n: int) -> str:
    """Return a count and its share per core, as text."""
    return f"{count:g} ({count / n:.2f} per core)"


Rows = list[tuple[str, str]]


def timing_rows(fleet: Fleet, result: dict[str, Any], extra: dict[str, Any]) -> Rows:
    """Set-up, publishing and time-to-Success rows."""
    n = len(fleet.things)
    finals = dict(fleet.counter.finals)
    by_thing = {thing: i for i, thing in enumerate(fleet.things)}
    per_core = [when - result["sent"][by_thing[t]] for t, (when, _, _) in finals.items()]
    api = [a - s for a, s in zip(result["answered"], result["sent"], strict=True)]
    outcome = collections.Counter(status for _, status, _ in finals.values())
    repeated = sum(1 for count in fleet.counter.final_count.values() if count > 1)
    rows: Rows = [
        ("control plane: a core definition + a group per core", f"{extra['setup']:.1f} s"),
        (
            f"cores started, {fleet.args.batch} at a time, all connected",
            f"{extra['startup']:.1f} s",
        ),
        ("idle CPU per core before deploying", f"{extra['idle_cpu'] * 1000:.1f} ms/s"),
        (
            "bulk deployment Completed (all published)"
            if fleet.args.bulk
            else "all CreateDeployment answered (all published)",
            f"{result['published']:.2f} s",
        ),
        (
            "StartBulkDeployment latency"
            if fleet.args.bulk
            else "CreateDeployment latency p50 / p90 / max",
            spread(api, "ms", 1000, digits=0),
        ),
        (
            "**time to all-Success** (first CreateDeployment -> last Success)",
            f"**{result['all_final']:.2f} s**",
        ),
        (
            "last Success after the last CreateDeployment answer",
            f"{result['final_after_answered']:.2f} s",
        ),
        (
            "outbox publish rate (deployments through the broker, first to last)",
            f"{result['publish_rate']:.0f} /s",
        ),
        (
            "status-ingest lag (core's UpdatedAt -> recorded), p50 / p90 / max",
            spread(result["ingest_lag"], "s") if result["ingest_lag"] else "none recorded",
        ),
    ]
    if per_core:
        rows.append(
            ("per core: its CreateDeployment -> its Success, p50 / p90 / max", spread(per_core))
        )
    summary = ", ".join(f"{k} {v}" for k, v in sorted(outcome.items()))
    rows += [
        ("final statuses seen on the broker", f"{summary or 'none'} (of {n})"),
        ("cores that reported a final status more than once", str(repeated)),
        (
            "control plane DB holds every final status, after the last one arrived",
            f"{result['recorded_lag']:.2f} s",
        ),
        (
            "GetDeploymentStatus of every deployment (API)",
            ", ".join(f"{k} {v}" for k, v in sorted(extra["api"].items())),
        ),
    ]
    return rows


def kill_rows(fleet: Fleet, result: dict[str, Any]) -> Rows:
    """The replica SIGKILLed mid-bulk: when, how far it had got, the takeover, the damage.

    Called with the counter's lock held, as every row function is.
    """
    kill, n = result["kill"], len(fleet.things)
    if "killed_at" not in kill:
        return [("replica SIGKILL", "**not done** (the run ended first)")]
    left = kill["lease_left"]
    rows: Rows = [
        (
            (
                f"SIGKILL of replica {kill['victim']} (the one holding the bulk's lease:"
                f" {'yes' if kill['held_lease'] else 'NO'}), after StartBulkDeployment"
            ),
            f"{kill['killed_at']:.2f} s; bulk {kill['state_at_kill']}, lease"
            + (" not taken" if left is None else f" {left:.1f} s from expiry"),
        ),
        (
            "then: deployments created / delivered by the broker / final statuses seen",
            (
                f"{kill['created_at_kill']} / {kill['delivered_at_kill']}"
                f" / {kill['finals_at_kill']}"
                f" of {n}; {kill['unsent_at_kill']} outbox rows unsent"
            ),
        ),
    ]
    if "resumed_at" in kill:
        rows.append(
            (
                "**survivor took the lease over** (after StartBulkDeployment; after the kill)",
                (
                    f"**{kill['resumed_at']:.2f} s;"
                    f" {kill['resumed_at'] - kill['killed_at']:.2f} s**;"
                    f" {kill['created_at_resume']} deployments created by then"
                ),
            )
        )
    else:
        ended = kill.get("ended_without_takeover", "not seen before the deadline")
        rows.append(("survivor took the lease over", f"no: bulk {ended}"))
    rows += [(f"**{name}** (database)", f"**{count}**") for name, count in kill["census"].items()]
    # The caller holds the counter's lock.
    delivered = fleet.counter.delivered
    final_count = fleet.counter.final_count
    missing = n - len(fleet.counter.finals)
    lost = [t for t in kill["unfinished_things"] if t in fleet.counter.finals]
    rows.append(
        (
            "of those, the core's final status is on the broker (lost by the control plane)",
            f"{len(lost)}: {', '.join(sorted(lost)[:6])}{' ...' if len(lost) > 6 else ''}",
        )
    )
    again = [t for t, ids in delivered.items() if len(ids) > len(set(ids))]
    other = [t for t, ids in delivered.items() if len(set(ids)) > 1]
    answered = sum(1 for t in again if final_count.get(t, 0) > 1)
    duplicates = sum(
        c.log.read_bytes().count(b'"deploy.duplicate"') for c in fleet.cores if c.log.exists()
    )
    rows += [
        ("**cores that never got a final status** (broker)", f"**{missing}**"),
        ("**cores sent two different deployments** (broker)", f"**{len(other)}**"),
        (
            "cores sent the same deployment again (redelivered; broker)",
            (
                f"{len(again)}, of which {answered} published their final status again"
                f" (real cores' `deploy.duplicate` log lines: {duplicates})"
            ),
        ),
        (
            "**CPU: surviving replica, per deployment**",
            (
                f"**{kill['survivor_cpu'] * 1000 / n:.2f} ms** ({kill['survivor_cpu']:.1f} s); the"
                f" killed one {kill['victim_cpu']:.1f} s until the kill"
            ),
        ),
    ]
    return rows


def message_rows(fleet: Fleet, extra: dict[str, Any]) -> Rows:
    """Broker message rows: the counter's, then Mosquitto's $SYS deltas."""
    n, counter = len(fleet.things), fleet.counter
    rows: Rows = [
        (
            f"MQTT PUBLISH: {kind} (counter on `#`)",
            f"{per(counter.kinds[kind], n)}, {counter.sizes[kind] / 1024:.0f} KiB",
        )
        for kind in ("deployments", "statuses", "other")
    ]
    before, after = extra["sys_before"], extra["sys_after"]
    for key, note in SYS_COUNTERS.items():
        if key in after:
            rows.append((f"$SYS/broker/{key}{note}", per(after[key] - before.get(key, 0), n)))
    return rows


#: Mosquitto's $SYS counters shown, with what they leave out or add.
SYS_COUNTERS = {
    "publish/messages/received": " (2.0.11: not retained ones)",
    "publish/messages/sent": " (incl. to counter, follower, $SYS)",
    "messages/received": " (every packet type)",
    "messages/sent": " (every packet type)",
}


def call_rows(fleet: Fleet, extra: dict[str, Any]) -> Rows:
    """Secrets Manager (and S3) calls, from the proxy's counters."""
    n, counts = len(fleet.things), extra["proxy"]
    sm = {op: calls for op, calls in counts.items() if not op.startswith("/")}
    s3 = sum(calls for op, calls in counts.items() if op.startswith("/"))
    rows: Rows = [(f"Secrets Manager {op}", per(calls, n)) for op, calls in sorted(sm.items())]
    rows.append(("Secrets Manager calls, all operations", per(sum(sm.values()), n)))
    rows.append(("S3 GetObject (function code, not Secrets Manager)", per(s3, n)))
    return rows


def cpu_rows(fleet: Fleet, result: dict[str, Any]) -> Rows:
    """Who used the CPUs from the first CreateDeployment to the last final status."""
    n, cpu, window = len(fleet.things), result["cpu"], result["window"]
    real = max(1, len(fleet.cores))
    # NaN: not measured (PostgreSQL's backends after a replica SIGKILL).
    ours = sum(v for k, v in cpu.items() if k != "machine" and v == v)  # noqa: PLR0124
    capacity = window * (os.cpu_count() or 1)
    rows: Rows = [
        (
            f"CPU used in those {window:.1f} s (of {capacity:.0f} CPU-s)",
            f"{cpu['machine']:.1f} CPU-s, of which not this run's {cpu['machine'] - ours:.1f}",
        ),
        ("CPU: real cores, per core", f"{cpu['cores']:.1f} s, {cpu['cores'] / real * 1000:.0f} ms"),
        (
            "**CPU: control plane (`serve`), per deployment**, status following included",
            f"**{cpu['control plane'] * 1000 / n:.2f} ms**",
        ),
    ]
    parts = (
        "simulated cores",
        "postgresql",
        "moto",
        "latency proxy",
        "mosquitto",
        "benchmark (boto3, counter)",
    )
    rows += [(f"CPU: {k}", f"{cpu[k]:.1f} s") for k in parts]
    rows.append(
        (
            "CPU: PostgreSQL backends of the run's database, per deployment",
            f"{cpu['postgresql'] * 1000 / n:.2f} ms",
        )
    )
    return rows


def memory_rows(extra: dict[str, Any]) -> Rows:
    """Per-core memory rows, idle and after Success."""
    rows: Rows = []
    for label, (rss, pss) in (("idle", extra["mem_idle"]), ("after Success", extra["mem_after"])):
        if rss:
            rows.append(
                (
                    f"core VmRSS {label}: median / max",
                    f"{mb(statistics.median(rss))} / {mb(max(rss))} MB",
                )
            )
            rows.append((f"core PSS {label}: median", f"{mb(statistics.median(pss))} MB"))
    rows.append(("processes the cores started (workers)", str(extra["children"])))
    return rows


def report(fleet: Fleet, result: dict[str, Any], extra: dict[str, Any]) -> None:
    """Print the summary table and whatever went wrong."""
    args, n = fleet.args, len(fleet.things)
    print()
    print(
        f"fleet: {len(fleet.cores)} cores (`edge run`) and {len(fleet.sim_things)} simulated "
        f"({args.sim_processes} processes), one Mosquitto, one moto behind latency_proxy "
        f"({args.delay_ms:g} ms per call); {os.cpu_count()} CPUs"
    )
    print(
        f"group: {args.secrets} secrets x (AWSCURRENT + {args.labels} more label(s)), one "
        f"on-demand function granted all; one group per core (the same resource and function "
        f"definition versions, a core definition each); "
        + (
            "one StartBulkDeployment of every group"
            if args.bulk
            else f"{n} CreateDeployment calls (boto3, {args.concurrency} at a time)"
        )
        + f" through `edge cloud serve` on {'PostgreSQL' if args.postgresql else 'SQLite'}"
    )
    for note in fleet.notes:
        print(f"note: {note}")
    with fleet.counter.lock:
        rows = [
            *timing_rows(fleet, result, extra),
            *(kill_rows(fleet, result) if result.get("kill") else []),
            *message_rows(fleet, extra),
            *call_rows(fleet, extra),
            *cpu_rows(fleet, result),
            *memory_rows(extra),
        ]
        others = dict(fleet.counter.other_topics)
        finals = dict(fleet.counter.finals)
    width = max(len(k) for k, _ in rows)
    print()
    print(f"| {'what'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|---|")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")
    if others:
        print(f"other topics: {others}")
    for thing, (_, status, error) in sorted(finals.items()):
        if status != "Success":
            print(f"failure: {thing}: {error}")
    missing = sorted(set(fleet.things) - set(finals))
    if missing:
        print(f"no final status from {len(missing)} cores: {missing[:10]}")


def run(args: argparse.Namespace, root: Path) -> int:
    """The whole benchmark; returns the exit status."""
    with contextlib.ExitStack() as stack:
        fleet = Fleet(args, root, stack)
        print(f"work directory: {root}", flush=True)
        resources, functions = fleet.define()
        count = fleet.start_cores(args.cores)
        fleet.start_simulated()
        if fleet.simulated is not None:
            stack.callback(fleet.simulated.kill)
        group_ids, setup = fleet.create_groups(resources, functions)
        total = len(group_ids)
        print(f"control plane: {total} core definitions + groups in {setup:.1f} s", flush=True)
        idle_wait, idle_cpu = wait_idle(fleet.cores) if fleet.cores else (0.0, 0.0)
        print(f"all {count} real cores connected; idle after {idle_wait:.0f} s", flush=True)
        mem_idle = fleet.memory()
        fleet.counter.connect()
        rounds: list[dict[str, Any]] = []
        for replica in fleet.replicas:
            replica.profile_signal(signal.SIGUSR1)
        for number in range(1, args.rounds + 1):
            sys_before = fleet.counter.sys_snapshot()
            fleet.counter.reset()
            fleet.proxy.reset()
            print(f"round {number}: deploying to {total} cores ...", flush=True)
            result = (fleet.deploy_bulk if args.bulk else fleet.deploy)(group_ids)
            rounds.append(result)
            print(f"round {number}: {round_line(result, total)}", flush=True)
        for replica in fleet.replicas:
            replica.profile_signal(signal.SIGUSR2)
        extra = {
            "setup": setup,
            "startup": fleet.startup_seconds,
            "idle_cpu": idle_cpu,
            "proxy": fleet.proxy.counts(),
            "sys_after": fleet.counter.sys_snapshot(),
            "sys_before": sys_before,
            "mem_idle": mem_idle,
            "mem_after": fleet.memory(),
            "children": children_of({c.pid for c in fleet.cores if c.alive()}),
            "api": fleet.api_statuses(result),
        }
        report(fleet, result, extra)
        if len(rounds) > 1:
            medians = {
                key: statistics.median(r[key] for r in rounds)
                for key in ("published", "all_final", "final_after_answered")
            }
            cpu = statistics.median(r["cpu"]["control plane"] for r in rounds)
            rate = statistics.median(r["publish_rate"] for r in rounds)
            lag50 = statistics.median(percentile(r["ingest_lag"] or [0.0], 0.5) for r in rounds)
            lag90 = statistics.median(percentile(r["ingest_lag"] or [0.0], 0.9) for r in rounds)
            print(
                f"\nmedians of {len(rounds)} rounds: all CreateDeployment answered "
                f"{medians['published']:.2f} s; all-Success {medians['all_final']:.2f} s after "
                f"the first ({medians['final_after_answered']:.2f} s after the last answer); "
                f"control plane {cpu * 1000 / total:.2f} ms CPU per deployment; outbox publish"
                f" rate {rate:.0f}/s; status-ingest lag p50 {lag50:.2f} s, p90 {lag90:.2f} s"
            )
        if args.profile is not None:
            cpu = sum(r["cpu"]["control plane"] for r in rounds)
            dirs = [r.profile for r in fleet.replicas if r.profile is not None]
            print_profile(dirs, cpu, total * len(rounds))
        if fleet.simulated is not None:
            print(f"simulate-cores: {json.dumps(fleet.simulated.stop())}")
        ok = sum(1 for _, s, _ in fleet.counter.finals.values() if s == "Success") == total
        return 0 if ok else 1


def print_profile(directories: list[Path], cpu: float, deployments: int) -> None:
    """The replicas' CPU over every round, split by part (bench/profile_serve.py)."""
    from bench.profile_serve import split, top  # noqa: PLC0415

    parts: dict[str, dict[str, float]] = {}
    for directory in directories:
        deadline = time.monotonic() + 10
        while not (directory / "split.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        for part, threads in split(directory).items():
            for thread, seconds in threads.items():
                parts.setdefault(part, {}).setdefault(thread, 0.0)
                parts[part][thread] += seconds
    measured = sum(sum(threads.values()) for threads in parts.values())
    print(
        f"\nCPU of `serve` by part ({', '.join(map(str, directories))}): {measured:.2f} s in"
        f" callbacks and database calls, of {cpu:.2f} s from /proc; per deployment"
        f" ({deployments}):"
    )
    for part, threads in sorted(parts.items(), key=lambda item: -sum(item[1].values())):
        seconds = sum(threads.values())
        where = ", ".join(f"{t} {s * 1000 / deployments:.2f}" for t, s in sorted(threads.items()))
        print(
            f"  {part}: {seconds * 1000 / deployments:.2f} ms ({seconds / max(cpu, 1e-9):.0%};"
            f" {where})"
        )
    for directory in directories:
        print(top(directory, 30))


def round_line(result: dict[str, Any], total: int) -> str:
    """One round's key figures, as text."""
    cpu = result["cpu"]["control plane"]
    lag = result["ingest_lag"] or [0.0]
    return (
        f"answered {result['published']:.2f} s, all-Success {result['all_final']:.2f} s, "
        f"control plane {cpu * 1000 / total:.2f} ms CPU per deployment"
        f" (PostgreSQL {result['cpu']['postgresql'] * 1000 / total:.2f} ms), "
        f"publish {result['publish_rate']:.0f}/s, ingest lag p50 {percentile(lag, 0.5):.2f} s"
        f" p90 {percentile(lag, 0.9):.2f} s"
    )


def main() -> int:
    """Run the benchmark (or, with --serve-proxy, the proxy process it starts)."""
    args = parse_args()
    if args.serve_proxy:
        serve_proxy(args.serve_proxy, args.delay_ms)
        return 0

    def terminate(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    root = Path(tempfile.mkdtemp(prefix="edge-fleet-"))
    try:
        return run(args, root)
    except KeyboardInterrupt:
        print("fleet: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
