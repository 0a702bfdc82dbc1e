# SPDX-License-Identifier: Apache-2.0
"""The run's world: services, control plane replicas, real and simulated cores, and their CPU."""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.fleetbench.constants import ACCOUNT, READER_ARN, READER_FILE, REGION, SIM_PREFIX
from bench.fleetbench.controlplane import ControlPlane, write_cloud_config
from bench.fleetbench.cores import Core, fit, start_batch, stop_cores
from bench.fleetbench.counter import Counter
from bench.fleetbench.procfs import cpu_seconds, machine_cpu_seconds, pss_kb, status_kb
from bench.fleetbench.services import CountingProxy, start_broker

if TYPE_CHECKING:
    from edge.fixtures.simulate import SimulatedFleet


def build_reader_package(path: Path) -> Path:
    """Zip bench/functions/read_secrets.py with the unmodified greengrasssdk."""
    from edge.fixtures.reference import write_v1_package  # noqa: PLC0415

    write_v1_package(path, {READER_FILE.name: READER_FILE.read_bytes()})
    return path


def in_pool(fn: Callable[[int], Any], items: int, workers: int) -> list[Any]:
    """Run fn(0..items-1) on a thread pool; return the results in order."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, range(items)))


class Fleet:
    """Services, control plane, cores and the measurements of one run."""

    def __init__(self, args: argparse.Namespace, root: Path, stack: contextlib.ExitStack) -> None:
        from edge.fixtures.services import free_port, run_moto  # noqa: PLC0415

        self.args = args
        self.root = root
        self.broker = start_broker(root / "mosquitto", stack)
        self.moto = stack.enter_context(run_moto(root / "moto.log"))
        self.proxy = CountingProxy(self.moto.url, args.delay_ms, root / "proxy.log")
        stack.callback(self.proxy.close)
        self.sm = self.moto.client("secretsmanager")
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
