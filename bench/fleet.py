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
import contextlib
import json
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The parts, after the path is set (bench/fleetbench/__init__.py lists them).
from bench.fleetbench.cores import wait_idle
from bench.fleetbench.procfs import children_of
from bench.fleetbench.report import percentile, print_profile, report, round_line
from bench.fleetbench.rounds import api_statuses, deploy, deploy_bulk
from bench.fleetbench.services import serve_proxy
from bench.fleetbench.world import Fleet


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
            result = (deploy_bulk if args.bulk else deploy)(fleet, group_ids)
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
            "api": api_statuses(fleet, result),
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
