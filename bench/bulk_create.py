# SPDX-License-Identifier: Apache-2.0
"""The creating side of a bulk deployment alone: CPU per deployment, wall time, a profile.

    .venv/bin/python bench/bulk_create.py [--groups 1000] [--postgresql] [--rounds 3]
                                          [--baseline CHECKOUT] [--profile FILE]

One process, no broker, no cores: a control plane database (a SQLite file, or with
`--postgresql` a database of the run's own on the server the tests use), N groups made as
bench/fleet.py makes them (`edge.fixtures.fleetdb`: a core definition each, plus one resource
and one function definition version shared by all, the function's code published), an input
file naming every group, and a `BulkRunner` driving it with the deployer `edge cloud serve`
runs, to the end (`Completed`): every deployment recorded with its outbox row. Nothing drains
the outbox.

Per round it prints the wall time and the process's CPU per deployment (`time.process_time`,
so the database server's own CPU is not counted), and the medians at the end. With
`--baseline CHECKOUT` each round runs twice, interleaved: once with the edge of CHECKOUT (a
subprocess with CHECKOUT first on PYTHONPATH), once with this one's, and the ratio is printed.
`--profile FILE` writes a cProfile of this checkout's last round.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"
REGION = "us-east-1"


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--groups", type=int, default=1000, help="groups to deploy")
    parser.add_argument("--postgresql", action="store_true", help="PostgreSQL, not SQLite")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a checkout of edge to compare with")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the last round here")
    parser.add_argument("--one-round", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


@contextmanager
def database(root: Path, *, postgresql: bool) -> Iterator[str]:
    """A fresh control plane database: a PostgreSQL URL or a SQLite path."""
    if not postgresql:
        yield str(root / "cloud.db")
        return
    sys.path.insert(0, str(REPO))
    from tests.support.postgres import server_url, session_database  # noqa: PLC0415

    with session_database(server_url()) as url:
        yield url


def populate(root: Path, where: str, groups: int) -> tuple[Path, list[tuple[str, str]]]:
    """A control plane on `where` with a group per core; its config, each (group, version)."""
    from edge.cloud.db import open_database  # noqa: PLC0415
    from edge.cloud.ids import Arns  # noqa: PLC0415
    from edge.fixtures.fleetdb import fleet_config, make_fleet  # noqa: PLC0415

    arns = Arns(REGION, ACCOUNT)
    config = fleet_config(root, where, arns)
    with open_database(config) as db:
        return config.path, make_fleet(db, arns, groups, secrets=2)


def one_round(
    config_path: Path, made: list[tuple[str, str]], profile: Path | None
) -> dict[str, Any]:
    """Run one bulk deployment of every group to its end; its wall time and CPU."""
    from edge.cloud.bulk import api, replica  # noqa: PLC0415
    from edge.cloud.bulk.input import entries  # noqa: PLC0415
    from edge.cloud.bulk.runner import BulkRunner  # noqa: PLC0415
    from edge.cloud.bulk.sqlstore import SqlBulkStore, inline  # noqa: PLC0415
    from edge.cloud.config import load_cloud_config  # noqa: PLC0415
    from edge.cloud.db import open_database  # noqa: PLC0415
    from edge.cloud.ids import Arns  # noqa: PLC0415
    from edge.signing import load_signing_key  # noqa: PLC0415

    config = load_cloud_config(config_path)
    key = load_signing_key(config.cloud.signing_key)
    lines = [
        json.dumps({"GroupId": g, "GroupVersionId": v, "DeploymentType": "NewDeployment"})
        for g, v in made
    ]
    data = ("\n".join(lines) + "\n").encode()

    def read(_bulk: Any, after: int) -> AsyncIterator[Any]:
        async def chunks() -> AsyncIterator[bytes]:
            yield data

        return entries(chunks(), start_after=after)

    async def main(db: Any) -> dict[str, Any]:
        store = SqlBulkStore(inline(db))
        request = api.start_request(
            {"ExecutionRoleArn": f"arn:aws:iam::{ACCOUNT}:role/b", "InputFileUri": "s3://in/x"}
        )
        bulk = api.new_bulk_deployment(request, Arns(REGION, ACCOUNT))
        await store.create(bulk)
        runner = BulkRunner(
            store=store,
            bulk_id=bulk.id,
            owner="bench",
            deploy=replica.deployer(config, db, key, lambda: None),
            read=read,
        )
        # CPU time, not wall: what the process spends, not what it waits for.
        profiler = cProfile.Profile(time.process_time) if profile is not None else None
        cpu, wall = time.process_time(), time.monotonic()
        if profiler is not None:
            profiler.enable()
        state = await runner.run()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)  # type: ignore[arg-type]
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        with db.read() as conn:
            count = int(conn.execute("SELECT count(*) FROM outbox").scalar())
            conn.execute("SELECT 1")
        return {"state": str(state), "wall": wall, "cpu": cpu, "deployments": count}

    with open_database(config) as db:
        with db.write() as conn:
            # Each round deploys every group again: the previous round's rows go first.
            conn.execute("DELETE FROM outbox")
            conn.execute("DELETE FROM deployments")
        return asyncio.run(main(db))


def run_round(
    config_path: Path, made: list[tuple[str, str]], checkout: Path | None
) -> dict[str, Any]:
    """One round in a subprocess, with `checkout`'s edge (or this one's) first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str((checkout or REPO).resolve())
    done = subprocess.run(
        [sys.executable, __file__, "--one-round"],
        input=json.dumps({"config": str(config_path), "made": made}),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    """Set up, run the rounds, print the medians."""
    args = parse_args()
    if args.one_round:
        given = json.loads(sys.stdin.read())
        made = [tuple(m) for m in given["made"]]
        profile = Path(given["profile"]) if given.get("profile") else None
        print(json.dumps(one_round(Path(given["config"]), made, profile)))  # type: ignore[arg-type]
        return 0
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="edge-bulk-create-") as tmp:
        root = Path(tmp)
        with database(root, postgresql=args.postgresql) as where:
            config_path, made = populate(root, where, args.groups)
            results: dict[str, list[dict[str, Any]]] = {"baseline": [], "this": []}
            for index in range(args.rounds):
                if args.baseline is not None:
                    results["baseline"].append(run_round(config_path, made, args.baseline))
                last = index == args.rounds - 1
                if last and args.profile is not None:
                    result = one_round(config_path, made, args.profile)
                else:
                    result = run_round(config_path, made, None)
                results["this"].append(result)
                print(f"round {index + 1}: " + json.dumps(results, separators=(",", ":")))
    engine = "PostgreSQL" if args.postgresql else "SQLite"
    print(f"{args.groups} groups, one bulk deployment, {engine}, medians of {args.rounds}:")
    medians = {}
    for name, rounds in results.items():
        if not rounds:
            continue
        wall = statistics.median(r["wall"] for r in rounds)
        cpu = statistics.median(r["cpu"] / max(r["deployments"], 1) * 1000 for r in rounds)
        medians[name] = cpu
        states = {r["state"] for r in rounds}
        print(f"  {name}: {wall:.2f} s to Completed, {cpu:.3f} ms CPU per deployment {states}")
    if len(medians) == 2:
        print(f"  CPU per deployment, this / baseline: {medians['this'] / medians['baseline']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
