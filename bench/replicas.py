# SPDX-License-Identifier: Apache-2.0
"""Replicas: one and two `edge cloud serve` on one PostgreSQL database, N simulated cores.

    .venv/bin/python bench/replicas.py [--simulated 1000] [--replicas 1 2] [--sim-processes 2]
                                       [--concurrency 16] [--rounds 3] [--keep]

For each replica count: a fresh PostgreSQL database (the machine's server, as the tests use
it), Mosquitto 2 with the replicas following statuses through a shared subscription, and N
simulated cores (`edge cloud simulate-cores`), one group each, created through the API. A round
sends one `CreateDeployment` per group through boto3, `--concurrency` at a time, spread over the
replicas round-robin as a load balancer would, and measures:

* answered: from the first request to the last answer (the requests' own throughput);
* outbox publish rate: deployments acknowledged by the broker per second, from the replicas'
  `cloud.deployment.published` events (first to last);
* all Success: from the first request until every deployment of the round is `Success` in the
  database;
* status-ingest lag: for each deployment, its Success event's `recorded_at` minus the core's
  `UpdatedAt` (p50, p90);
* control-plane CPU per deployment: the replicas' CPU time over the round (status ingestion
  and the outbox included) divided by N.

Medians over `--rounds`; one JSON line per replica count on stdout.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import itertools
import json
import secrets
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fleetbench.constants import KEY_ID
from bench.fleetbench.controlplane import ControlPlane
from bench.fleetbench.procfs import cpu_seconds
from edge.cloud.config import load_cloud_config
from edge.cloud.db import open_database
from edge.fixtures.core import edge_cli
from edge.fixtures.services import free_port, run_mosquitto
from edge.fixtures.simulate import SimulatedFleet
from tests.support.postgres import server_url, session_database

REGION = "us-east-1"
ACCOUNT = "123456789012"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulated", type=int, default=1000, help="simulated cores")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="counts to run")
    parser.add_argument("--sim-processes", type=int, default=2, help="simulate-cores processes")
    parser.add_argument("--concurrency", type=int, default=16, help="requests at a time")
    parser.add_argument("--rounds", type=int, default=3, help="deployments per group")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args()


def write_config(root: Path, database: str, broker_url: str, port: int) -> Path:
    path = root / f"cloud-{port}.toml"
    path.write_text(
        f'[cloud]\ndatabase = "{database}"\nsigning_key = "cloud/signing.pem"\n'
        f'account_id = "{ACCOUNT}"\nlisten = "127.0.0.1:{port}"\n\n[cloud.auth]\n'
        f'keys = [{{access_key_id = "{KEY_ID}", secret_access_key_file = "operator.secret"}}]\n\n'
        f'[mqtt]\nurl = "{broker_url}"\nshared_subscription_group = "bench"\n'
        "reconnect_max_seconds = 1.0\n\n"
        f'[aws]\nregion = "{REGION}"\n'
    )
    return path


class Replica:
    """One `edge cloud serve` (bench/fleetbench/controlplane.py), its log in a directory apart."""

    def __init__(self, config: Path, port: int, secret: str, pool: int) -> None:
        root = config.parent / f"serve-{port}"
        root.mkdir()
        self.log = root / "serve.log"
        self.plane = ControlPlane(root, config, f"http://127.0.0.1:{port}", secret)
        self.plane.start()
        self.client = self.plane.client(pool)

    def cpu_seconds(self) -> float:
        """User and system CPU the process used so far."""
        assert self.plane.proc is not None  # noqa: S101 - started
        return cpu_seconds(self.plane.proc.pid)

    def published_at(self) -> list[float]:
        """When this replica's published events happened (Unix seconds)."""
        return [
            _unix(json.loads(line)["timestamp"])
            for line in self.log.read_text(errors="replace").splitlines()
            if '"cloud.deployment.published"' in line
        ]

    def stop(self) -> None:
        """SIGTERM it and wait."""
        self.plane.stop()


def _unix(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def create_groups(replicas: list[Replica], count: int, pool: int) -> list[str]:
    """One core definition and group per simulated core, through the API."""

    def one(index: int) -> str:
        client = replicas[index % len(replicas)].client
        thing = f"sim-{index}"
        core = {
            "Cores": [
                {
                    "Id": thing,
                    "ThingArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/{thing}",
                    "CertificateArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:cert/{thing}",
                }
            ]
        }
        created = client.create_core_definition(Name=thing, InitialVersion=core)
        version = {"CoreDefinitionVersionArn": created["LatestVersionArn"]}
        return str(client.create_group(Name=thing, InitialVersion=version)["Id"])

    with concurrent.futures.ThreadPoolExecutor(pool) as threads:
        return list(threads.map(one, range(count)))


def run_round(replicas: list[Replica], groups: list[str], pool: int, db: Any) -> dict[str, float]:
    before = [r.cpu_seconds() for r in replicas]
    published_before = sum(len(r.published_at()) for r in replicas)
    clients = itertools.cycle([r.client for r in replicas])
    pairs = [(next(clients), g) for g in groups]
    began = time.time()

    def deploy(pair: tuple[Any, str]) -> str:
        client, group = pair
        return str(
            client.create_deployment(GroupId=group, DeploymentType="NewDeployment")["DeploymentId"]
        )

    with concurrent.futures.ThreadPoolExecutor(pool) as threads:
        ids = list(threads.map(deploy, pairs))
    answered = time.time() - began
    deadline = time.monotonic() + 300
    while True:
        with db.read() as conn:
            done = conn.execute(
                "SELECT count(*) FROM deployments WHERE status = 'Success' AND id IN :ids",
                {"ids": ids},
            ).scalar()
        if done == len(ids):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{done} of {len(ids)} Success after 300 s")
        time.sleep(0.05)
    all_success = time.time() - began
    cpu = sum(r.cpu_seconds() for r in replicas) - sum(before)
    stamps = sorted(t for r in replicas for t in r.published_at())[published_before:]
    with db.read() as conn:
        rows = conn.execute(
            "SELECT updated_at, recorded_at FROM deployment_events"
            " WHERE status = 'Success' AND deployment_id IN :ids",
            {"ids": ids},
        ).fetchall()
    lags = sorted(_unix(r["recorded_at"]) - _unix(r["updated_at"]) for r in rows)
    return {
        "answered_s": answered,
        "publish_per_s": len(ids) / max(stamps[-1] - stamps[0], 1e-3) if stamps else 0.0,
        "all_success_s": all_success,
        "ingest_lag_p50_ms": 1000 * lags[len(lags) // 2],
        "ingest_lag_p90_ms": 1000 * lags[int(len(lags) * 0.9)],
        "cpu_ms_per_deployment": 1000 * cpu / len(ids),
    }


def measure(args: argparse.Namespace, count: int, work: Path) -> dict[str, Any]:
    root = work / f"replicas-{count}"
    root.mkdir()
    secret = secrets.token_urlsafe(30)
    (root / "operator.secret").write_text(secret + "\n")
    (root / "operator.secret").chmod(0o600)
    with (
        session_database(server_url()) as database,
        run_mosquitto(root / "mosquitto") as broker,
        contextlib.ExitStack() as stack,
    ):
        ports = [free_port() for _ in range(count)]
        configs = [write_config(root, database, broker.url, port) for port in ports]
        init = edge_cli("cloud", "--config", str(configs[0]), "init")
        if init.returncode != 0:
            raise RuntimeError(init.stderr)
        fleet = SimulatedFleet(
            configs[0], ("--count", str(args.simulated), "--processes", str(args.sim_processes))
        )
        fleet.start(timeout=300)
        stack.callback(fleet.kill)
        replicas = []
        for config, port in zip(configs, ports, strict=True):
            replica = Replica(config, port, secret, args.concurrency)
            stack.callback(replica.stop)
            replicas.append(replica)
        groups = create_groups(replicas, args.simulated, args.concurrency)
        db = open_database(load_cloud_config(configs[0]))
        stack.callback(db.close)
        rounds = [run_round(replicas, groups, args.concurrency, db) for _ in range(args.rounds)]
    medians = {k: round(statistics.median(r[k] for r in rounds), 2) for k in rounds[0]}
    return {"replicas": count, "simulated": args.simulated, "rounds": args.rounds, **medians}


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="edge-bench-replicas-"))
    try:
        for count in args.replicas:
            print(json.dumps(measure(args, count, work)), flush=True)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            import shutil  # noqa: PLC0415

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
