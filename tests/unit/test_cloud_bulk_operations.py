"""The five bulk operations over the in-memory store: start, status, lists paged, stop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from edge.cloud.bulk import operations as ops
from edge.cloud.bulk.memory import MemoryBulkStore
from edge.cloud.bulk.runner import BulkRunner, input_reader
from edge.cloud.bulk.state import BulkEvent, BulkState
from edge.cloud.bulk.store import Reserved
from edge.cloud.errors import BulkInputError, CloudUsageError, NotFoundError
from edge.cloud.ids import Arns
from edge.cloud.serve.errors import from_edge_error
from edge.config import AwsSettings
from edge.fixtures.services import TEST_REGION, MotoServer
from tests.unit.test_cloud_bulk_runner import each

ARNS = Arns(TEST_REGION, "123456789012")
ROLE = "arn:aws:iam::123456789012:role/bulk"
AWS = AwsSettings(region=TEST_REGION)


def write_input(path: Path, groups: list[str]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"GroupId": g, "GroupVersionId": "v", "DeploymentType": "NewDeployment"})
            + "\n"
            for g in groups
        )
    )
    return path


read_local = input_reader(AWS)


async def run_to_end(store: MemoryBulkStore, bulk_id: str) -> BulkState | None:
    async def deploy(record: Reserved) -> None:
        store.report(record.deployment_id, "Success")

    return await BulkRunner(
        store=store, bulk_id=bulk_id, owner="a", deploy=each(deploy), read=read_local
    ).run()


async def start(store: MemoryBulkStore, path: Path, **params: Any) -> str:
    answer = await ops.start_bulk_deployment(
        store,
        ARNS,
        AWS,
        {"ExecutionRoleArn": ROLE, "InputFileUri": str(path), **params},
        local=True,
    )
    return str(answer["BulkDeploymentId"])


async def test_start_then_run_then_report(tmp_path: Path) -> None:
    """Started from a local file, it is Initializing; run, it is Completed with a report."""
    store = MemoryBulkStore()
    path = write_input(tmp_path / "in.jsonl", ["g1", "g2", "g3"])
    bulk_id = await start(store, path, tags={"team": "ops", "edge:max-per-second": "100"})
    status = await ops.get_bulk_deployment_status(store, {"BulkDeploymentId": bulk_id})
    assert status["BulkDeploymentStatus"] == "Initializing"
    assert status["tags"] == {"team": "ops", "edge:max-per-second": "100"}
    assert await run_to_end(store, bulk_id) is BulkState.COMPLETED
    status = await ops.get_bulk_deployment_status(store, {"BulkDeploymentId": bulk_id})
    assert status["BulkDeploymentStatus"] == "Completed"
    assert status["BulkDeploymentMetrics"]["RecordsProcessed"] == 3
    report = await ops.list_bulk_deployment_detailed_reports(
        store, ARNS, {"BulkDeploymentId": bulk_id}
    )
    assert [d["GroupArn"] for d in report["Deployments"]] == [
        ARNS.group(f"g{i}") for i in (1, 2, 3)
    ]
    assert {d["DeploymentStatus"] for d in report["Deployments"]} == {"Success"}


async def test_a_missing_input_file_starts_nothing(tmp_path: Path) -> None:
    store = MemoryBulkStore()
    with pytest.raises(BulkInputError) as caught:
        await start(store, tmp_path / "nope.jsonl")
    assert from_edge_error(caught.value).code == "BadRequestException"
    assert await ops.list_bulk_deployments(store, {}) == {"BulkDeployments": []}


async def test_the_detailed_report_is_paged_by_line(tmp_path: Path) -> None:
    store = MemoryBulkStore()
    bulk_id = await start(store, write_input(tmp_path / "in.jsonl", [f"g{i}" for i in range(5)]))
    await run_to_end(store, bulk_id)
    seen, token, pages = [], None, 0
    while True:
        params = {"BulkDeploymentId": bulk_id, "MaxResults": "2"}
        if token:
            params["NextToken"] = token
        page = await ops.list_bulk_deployment_detailed_reports(store, ARNS, params)
        pages += 1
        seen += [d["GroupArn"].rsplit("/", 1)[1] for d in page["Deployments"]]
        token = page.get("NextToken")
        if token is None:
            break
    assert (seen, pages) == ([f"g{i}" for i in range(5)], 3)


async def test_bulk_deployments_are_listed_newest_first_in_pages(tmp_path: Path) -> None:
    store = MemoryBulkStore()
    path = write_input(tmp_path / "in.jsonl", ["g"])
    started = [await start(store, path) for _ in range(5)]
    first = await ops.list_bulk_deployments(store, {"MaxResults": "3"})
    second = await ops.list_bulk_deployments(
        store, {"MaxResults": "3", "NextToken": first["NextToken"]}
    )
    assert "NextToken" not in second
    listed = [b["BulkDeploymentId"] for b in first["BulkDeployments"] + second["BulkDeployments"]]
    assert listed == started[::-1]


async def test_stop(tmp_path: Path) -> None:
    """Stop moves it to Stopping; a finished or unknown one is refused, naming why."""
    store = MemoryBulkStore()
    path = write_input(tmp_path / "in.jsonl", ["g"])
    running = await start(store, path)
    assert await ops.stop_bulk_deployment(store, {"BulkDeploymentId": running}) == {}
    assert (await store.get(running)).state is BulkState.STOPPING
    done = await start(store, path)
    await run_to_end(store, done)
    with pytest.raises(CloudUsageError, match="is Completed: there is nothing left to stop"):
        await ops.stop_bulk_deployment(store, {"BulkDeploymentId": done})
    with pytest.raises(NotFoundError) as caught:
        await ops.get_bulk_deployment_status(store, {"BulkDeploymentId": "nope"})
    assert from_edge_error(caught.value).status == 404
    assert await store.transition(running, None, BulkEvent.STOP) is BulkState.STOPPING


@pytest.mark.network
async def test_start_from_s3(moto: MotoServer) -> None:
    """The input file in S3 is checked at start; a missing one is one error, nothing recorded."""
    s3 = boto3.client("s3", region_name=TEST_REGION, endpoint_url=moto.url)
    s3.create_bucket(Bucket="fleet")
    s3.put_object(Bucket="fleet", Key="in.jsonl", Body=b'{"GroupId": "g"}\n')
    aws = AwsSettings(region=TEST_REGION, endpoint_url=moto.url)
    store = MemoryBulkStore()
    answer = await ops.start_bulk_deployment(
        store, ARNS, aws, {"ExecutionRoleArn": ROLE, "InputFileUri": "s3://fleet/in.jsonl"}
    )
    assert answer["BulkDeploymentArn"] == ARNS.bulk_deployment(answer["BulkDeploymentId"])
    with pytest.raises(BulkInputError, match="no such object"):
        await ops.start_bulk_deployment(
            store, ARNS, aws, {"ExecutionRoleArn": ROLE, "InputFileUri": "s3://fleet/other"}
        )
    assert len((await ops.list_bulk_deployments(store, {}))["BulkDeployments"]) == 1
