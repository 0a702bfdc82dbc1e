"""Bulk supervisors of two replicas on one store: each bulk run once, handed over on shutdown."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

from edge.cloud.bulk import operations as ops
from edge.cloud.bulk.memory import MemoryBulkStore
from edge.cloud.bulk.runner import BulkRunner, input_reader
from edge.cloud.bulk.state import BulkState
from edge.cloud.bulk.store import Reserved
from edge.cloud.bulk.supervisor import BulkSupervisor
from edge.cloud.ids import Arns
from edge.config import AwsSettings
from tests.unit.test_cloud_bulk_runner import each

AWS = AwsSettings(region="us-east-1")
ARNS = Arns("us-east-1", "123456789012")


read_local = input_reader(AWS)


async def start(store: MemoryBulkStore, tmp_path: Path, name: str, groups: int) -> str:
    path = tmp_path / f"{name}.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "GroupId": f"{name}-g{i}",
                    "GroupVersionId": "v",
                    "DeploymentType": "NewDeployment",
                }
            )
            + "\n"
            for i in range(groups)
        )
    )
    params = {"ExecutionRoleArn": "arn:aws:iam::123456789012:role/r", "InputFileUri": str(path)}
    answer = await ops.start_bulk_deployment(store, ARNS, AWS, params, local=True)
    return str(answer["BulkDeploymentId"])


def supervisor(
    store: MemoryBulkStore, owner: str, deploy: Callable[[Reserved], Awaitable[None]]
) -> BulkSupervisor:
    def make(bulk_id: str) -> BulkRunner:
        return BulkRunner(
            store=store, bulk_id=bulk_id, owner=owner, deploy=each(deploy), read=read_local
        )

    return BulkSupervisor(store=store, runner=make, interval=0.05)


async def until_ended(store: MemoryBulkStore, ids: list[str], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not all([(await store.get(i)).state.is_final for i in ids]):
            await asyncio.sleep(0.01)


async def test_two_replicas_run_each_bulk_deployment_once(tmp_path: Path) -> None:
    store = MemoryBulkStore()
    calls: dict[str, list[tuple[str, str]]] = defaultdict(list)

    def deployer(owner: str) -> Callable[[Reserved], Awaitable[None]]:
        async def deploy(record: Reserved) -> None:
            calls[record.group_id].append((owner, record.deployment_id))
            store.report(record.deployment_id, "Success")

        return deploy

    ids = [await start(store, tmp_path, f"b{n}", 5) for n in range(4)]
    async with supervisor(store, "a", deployer("a")), supervisor(store, "b", deployer("b")):
        await until_ended(store, ids)
    assert len(calls) == 20
    assert all(len(c) == 1 for c in calls.values()), calls
    assert {(await store.get(i)).state for i in ids} == {BulkState.COMPLETED}


async def test_a_replica_shutting_down_hands_its_bulk_deployment_over(tmp_path: Path) -> None:
    """Replica a stops mid-deployment; it gives the lease up and replica b finishes at once."""
    store = MemoryBulkStore()
    ids: dict[str, set[str]] = defaultdict(set)
    hung = asyncio.Event()

    async def hangs(record: Reserved) -> None:
        ids[record.group_id].add(record.deployment_id)
        hung.set()
        await asyncio.Event().wait()

    async def works(record: Reserved) -> None:
        ids[record.group_id].add(record.deployment_id)
        store.report(record.deployment_id, "Success")

    bulk_id = await start(store, tmp_path, "b", 5)
    async with supervisor(store, "a", hangs) as first:
        await asyncio.wait_for(hung.wait(), timeout=10)
        assert first.running == {bulk_id}
    assert store.lease_owner(bulk_id) is None
    async with supervisor(store, "b", works):
        await until_ended(store, [bulk_id])
    assert (await store.get(bulk_id)).state is BulkState.COMPLETED
    assert len(ids) == 5
    assert all(len(one) == 1 for one in ids.values()), ids
