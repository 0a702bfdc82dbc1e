# SPDX-License-Identifier: Apache-2.0
"""A round: every group deployed once (CreateDeployment or StartBulkDeployment), all final."""

from __future__ import annotations

import collections
import json
import secrets
import time
from typing import Any

from botocore.exceptions import BotoCoreError

from bench.fleetbench.constants import ACCOUNT
from bench.fleetbench.procfs import cpu_seconds
from bench.fleetbench.replicakill import ReplicaKill
from bench.fleetbench.world import Fleet, in_pool


def deploy(fleet: Fleet, group_ids: list[str]) -> dict[str, Any]:
    """CreateDeployment for every group at once; wait for every core's final status."""
    clients = [r.client(fleet.args.concurrency) for r in fleet.replicas]
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

    cpu_before = fleet.cpu()
    t0 = time.monotonic()
    in_pool(one, len(group_ids), fleet.args.concurrency)
    published = time.monotonic() - t0
    deadline = t0 + fleet.args.timeout
    while len(fleet.counter.finals) < len(group_ids) and time.monotonic() < deadline:
        dead = [c.thing for c in fleet.cores if not c.alive()]
        if dead:
            fleet.notes.append(f"cores exited during the deployment: {dead}")
            break
        time.sleep(0.05)
    last_final = max((t for t, _, _ in fleet.counter.finals.values()), default=time.monotonic())
    recorded = wait_recorded(fleet, len(group_ids), deadline)
    # After the database holds every final status: the service's CPU includes following.
    cpu_after, window = fleet.cpu(), time.monotonic() - t0
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
        "publish_rate": fleet.counter.publish_rate(),
        "ingest_lag": ingest_lags(fleet, deployment_ids),
    }


def deploy_bulk(fleet: Fleet, group_ids: list[str]) -> dict[str, Any]:
    """One StartBulkDeployment naming every group; wait for every core's final status."""
    s3 = fleet.moto.client("s3")
    s3.create_bucket(Bucket="fleet-bulk")
    key = f"groups-{secrets.token_hex(4)}.jsonl"
    lines = [
        json.dumps({"GroupId": g, "GroupVersionId": v, "DeploymentType": "NewDeployment"})
        for g, v in zip(group_ids, fleet.group_versions, strict=True)
    ]
    s3.put_object(Bucket="fleet-bulk", Key=key, Body="\n".join(lines) + "\n")
    gg = fleet.cloud.client(1)
    cpu_before = fleet.cpu()
    replica_cpu = [cpu_seconds(r.proc.pid) if r.proc else 0.0 for r in fleet.replicas]
    t0 = time.monotonic()
    started = gg.start_bulk_deployment(
        ExecutionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/fleet-bulk",
        InputFileUri=f"s3://fleet-bulk/{key}",
    )
    answered = time.monotonic()
    bulk_id = started["BulkDeploymentId"]
    kill = None if fleet.args.kill_replica_after is None else ReplicaKill(fleet, bulk_id, t0)
    deadline = t0 + fleet.args.timeout
    ended = None
    while time.monotonic() < deadline:
        if ended is None:
            gg, state = bulk_state(fleet, gg, bulk_id, kill)
            if state in {"Completed", "Stopped", "Failed"}:
                ended = time.monotonic()
        if ended is not None and len(fleet.counter.finals) >= len(group_ids):
            break
        # Twice a second: `start-bulk-deployment --wait` asks once a second.
        time.sleep(0.5)
    last_final = max((t for t, _, _ in fleet.counter.finals.values()), default=time.monotonic())
    recorded = wait_recorded(fleet, len(group_ids), deadline)
    cpu_after, window = fleet.cpu(), time.monotonic() - t0
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
        "publish_rate": fleet.counter.publish_rate(),
        "ingest_lag": ingest_lags(fleet, ids),
        "all_final": last_final - t0,
        "final_after_answered": last_final - (ended or answered),
        "recorded_lag": recorded - last_final,
        "group_ids": group_ids,
        "cpu": {k: cpu_after[k] - cpu_before[k] for k in cpu_before},
        "window": window,
        "kill": killed,
    }


def bulk_state(fleet: Fleet, gg: Any, bulk_id: str, kill: ReplicaKill | None) -> tuple[Any, str]:
    """The bulk deployment's state, and the client to ask next (the survivor after a kill)."""
    if kill is not None and kill.killed.is_set() and fleet.cloud is not kill.survivor:
        # From now on every call goes to the survivor, as a load balancer's would.
        fleet.cloud = kill.survivor
        gg = fleet.cloud.client(1)
    try:
        return gg, str(
            gg.get_bulk_deployment_status(BulkDeploymentId=bulk_id)["BulkDeploymentStatus"]
        )
    except BotoCoreError:
        # The replica asked was SIGKILLed under the call: the survivor is asked next time.
        if kill is None:
            raise
        return gg, "unknown"


def wait_recorded(fleet: Fleet, count: int, deadline: float) -> float:
    """Wait until the control plane's database holds `count` more final statuses."""
    from edge.cloud.db import Database  # noqa: PLC0415

    where = fleet.database if fleet.args.postgresql else fleet.root / fleet.database
    with Database.open(where) as db:
        while time.monotonic() < deadline:
            with db.read() as conn:
                final = int(
                    conn.execute(
                        "SELECT count(*) FROM deployments WHERE status IN ('Success', 'Failure')"
                    ).scalar()
                )
            if final - fleet.recorded_before >= count:
                fleet.recorded_before = final
                break
            time.sleep(0.05)
    return time.monotonic()


def ingest_lags(fleet: Fleet, deployment_ids: list[str]) -> list[float]:
    """Seconds from each final status's UpdatedAt (the core's clock) to its recording."""
    from datetime import datetime  # noqa: PLC0415

    from edge.cloud.db import Database  # noqa: PLC0415

    where = fleet.database if fleet.args.postgresql else fleet.root / fleet.database
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


def api_statuses(fleet: Fleet, result: dict[str, Any]) -> collections.Counter[str]:
    """GetDeploymentStatus of every deployment through the API, by status."""
    gg = fleet.cloud.client(fleet.args.concurrency)

    def one(index: int) -> str:
        answer = gg.get_deployment_status(
            GroupId=result["group_ids"][index], DeploymentId=result["deployment_ids"][index]
        )
        return str(answer["DeploymentStatus"])

    return collections.Counter(in_pool(one, len(result["group_ids"]), fleet.args.concurrency))
