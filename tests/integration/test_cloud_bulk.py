"""Bulk deployments end to end, on PostgreSQL.

The official AWS CLI and `edge cloud` against `edge cloud serve`, input files in moto's S3,
simulated cores answering on Mosquitto.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from edge.fixtures.services import TEST_REGION, MotoServer
from edge.fixtures.simulate import SimulatedFleet
from tests.integration import test_cloud_serve as base
from tests.integration.test_cloud_serve import ACCOUNT, Served, ServeProcess

pytestmark = pytest.mark.network

served = base.served

ROLE = f"arn:aws:iam::{ACCOUNT}:role/bulk-deployer"
BUCKET = "bulk-input"


@pytest.fixture
def fleets() -> Iterator[list[SimulatedFleet]]:
    """Simulated fleets to stop at the end of the test."""
    started: list[SimulatedFleet] = []
    yield started
    for fleet in started:
        try:
            fleet.stop()  # closes its pipes too
        finally:
            fleet.kill()


def simulate(served: Served, fleets: list[SimulatedFleet], count: int, *extra: str) -> None:
    fleet = SimulatedFleet(served.config, ("--count", str(count), "--processes", "1", *extra))
    fleets.append(fleet)
    fleet.start()


def core_version(thing: str) -> dict[str, Any]:
    """A core definition version whose one core is `thing`."""
    return {
        "Cores": [
            {
                "Id": thing,
                "ThingArn": f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:thing/{thing}",
                "CertificateArn": f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:cert/{thing}",
            }
        ]
    }


def make_group(client: Any, thing: str) -> tuple[str, str]:
    """A group whose one version names `thing` as its core, through the API: (id, version id)."""
    core = client.create_core_definition(Name=thing, InitialVersion=core_version(thing))
    group = client.create_group(
        Name=thing, InitialVersion={"CoreDefinitionVersionArn": core["LatestVersionArn"]}
    )
    return group["Id"], group["LatestVersion"]


def make_groups(client: Any, count: int) -> list[tuple[str, str]]:
    """A group per simulated core sim-0, sim-1, …: (group id, version id)."""
    return [make_group(client, f"sim-{i}") for i in range(count)]


def input_lines(groups: list[tuple[str, str]]) -> list[str]:
    return [
        json.dumps({"GroupId": g, "GroupVersionId": v, "DeploymentType": "NewDeployment"})
        for g, v in groups
    ]


def upload(moto: MotoServer, lines: list[str], key: str = "groups.jsonl") -> str:
    s3 = boto3.client("s3", region_name=TEST_REGION, endpoint_url=moto.url)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=key, Body="\n".join(lines) + "\n")
    return f"s3://{BUCKET}/{key}"


def launch(service: ServeProcess) -> Callable[[], object]:
    """Start a service's process (again, on its config and port); what waits until it listens.

    Its log follows any earlier run's. Whatever starts before the wait boots beside it.
    """
    runs = service.count("cloud.serve.listening")
    service.start()
    return lambda: service.wait_for_event("cloud.serve.listening", after=runs)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll `check` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"no {what} after {timeout:g} s"
        time.sleep(0.2)


def state_is(client: Any, bulk_id: str, *states: str) -> Callable[[], Any]:
    def check() -> Any:
        status = client.get_bulk_deployment_status(BulkDeploymentId=bulk_id)
        return status if status["BulkDeploymentStatus"] in states else None

    return check


def report(client: Any, bulk_id: str) -> list[dict[str, Any]]:
    pages = client.get_paginator("list_bulk_deployment_detailed_reports")
    return [d for page in pages.paginate(BulkDeploymentId=bulk_id) for d in page["Deployments"]]


def deployments_by_group(client: Any, groups: list[tuple[str, str]]) -> dict[str, int]:
    return {g: len(client.list_deployments(GroupId=g)["Deployments"]) for g, _ in groups}


def test_a_bulk_deployment_through_the_aws_cli_completes_on_simulated_cores(
    served: Served, moto: MotoServer, fleets: list[SimulatedFleet]
) -> None:
    """Every group's deployment reaches Success; invalid lines are counted, never fatal.

    The same client token starts nothing twice; the other operations answer the AWS CLI.
    """
    simulate(served, fleets, 4)
    client = served.client()
    groups = make_groups(client, 4)
    invalid = ["{not json", '{"GroupId": "g"}']
    uri = upload(moto, [*input_lines(groups[:2]), *invalid, *input_lines(groups[2:])])
    start = (
        *("greengrass", "start-bulk-deployment", "--execution-role-arn", ROLE),
        *("--input-file-uri", uri, "--amzn-client-token", "fleet-rollout-1"),
    )
    first = served.aws_json(*start)
    assert served.aws_json(*start) == first
    bulk_id = first["BulkDeploymentId"]
    wait_for(state_is(client, bulk_id, "Completed"), "Completed")
    status = served.aws_json(
        "greengrass", "get-bulk-deployment-status", "--bulk-deployment-id", bulk_id
    )
    assert status["BulkDeploymentStatus"] == "Completed"
    assert status["BulkDeploymentMetrics"] == {
        "InvalidInputRecords": 2,
        "RecordsProcessed": 6,
        "RetryAttempts": 0,
    }
    wait_for(
        lambda: [d["DeploymentStatus"] for d in report(client, bulk_id)].count("Success") == 4,
        "Success from every core",
    )
    lines = served.aws_json(
        "greengrass", "list-bulk-deployment-detailed-reports", "--bulk-deployment-id", bulk_id
    )["Deployments"]
    assert [d["DeploymentStatus"] for d in lines] == ["Success"] * 2 + ["Failure"] * 2 + [
        "Success"
    ] * 2
    assert lines[2]["ErrorMessage"].startswith("line 3: ")
    assert lines[2]["ErrorDetails"][0]["DetailedErrorCode"] == "InvalidInputRecord"
    # Paged by the operation itself: MaxResults items, then on from the NextToken.
    first_page = client.list_bulk_deployment_detailed_reports(
        BulkDeploymentId=bulk_id, MaxResults="4"
    )
    rest = client.list_bulk_deployment_detailed_reports(
        BulkDeploymentId=bulk_id, NextToken=first_page["NextToken"]
    )
    assert [*first_page["Deployments"], *rest["Deployments"]] == lines
    assert (len(first_page["Deployments"]), "NextToken" in rest) == (4, False)
    listed = served.aws_json("greengrass", "list-bulk-deployments")["BulkDeployments"]
    assert [b["BulkDeploymentId"] for b in listed] == [bulk_id]
    assert deployments_by_group(client, groups) == {g: 1 for g, _ in groups}
    # Ended: stopping it is refused, naming why.
    stop = served.aws("greengrass", "stop-bulk-deployment", "--bulk-deployment-id", bulk_id)
    assert stop.returncode != 0
    assert "BadRequestException" in stop.stderr


def test_stop_bulk_deployment_through_the_aws_cli_starts_no_further_group(
    served: Served, moto: MotoServer
) -> None:
    client = served.client()
    groups = make_groups(client, 5)
    started = client.start_bulk_deployment(
        ExecutionRoleArn=ROLE,
        InputFileUri=upload(moto, input_lines(groups)),
        tags={"edge:max-per-second": "0.2"},
    )
    bulk_id = started["BulkDeploymentId"]
    wait_for(state_is(client, bulk_id, "Running"), "Running")
    stop = served.aws("greengrass", "stop-bulk-deployment", "--bulk-deployment-id", bulk_id)
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.strip() == ""
    wait_for(state_is(client, bulk_id, "Stopped"), "Stopped")
    created = sum(deployments_by_group(client, groups).values())
    assert 1 <= created < len(groups)
    assert sum(deployments_by_group(client, groups).values()) == created
    assert sum("DeploymentId" in d for d in report(client, bulk_id)) == created


def test_the_abort_rule_stops_a_rollout_whose_cores_fail(
    served: Served, moto: MotoServer, fleets: list[SimulatedFleet]
) -> None:
    simulate(served, fleets, 10, "--failure-rate", "1")
    client = served.client()
    groups = make_groups(client, 10)
    started = client.start_bulk_deployment(
        ExecutionRoleArn=ROLE,
        InputFileUri=upload(moto, input_lines(groups)),
        tags={
            "edge:max-per-second": "2",
            "edge:abort-failure-percent": "50",
            "edge:abort-min-finished": "2",
        },
    )
    status = wait_for(state_is(client, started["BulkDeploymentId"], "Stopped"), "Stopped")
    assert "abort rule" in status["ErrorMessage"]
    assert sum(deployments_by_group(client, groups).values()) < len(groups)


def test_start_bulk_deployment_wait_runs_it_and_prints_plain_progress(
    served: Served, tmp_path: Path, fleets: list[SimulatedFleet]
) -> None:
    """`edge cloud start-bulk-deployment --wait` runs the bulk deployment in the command.

    Its progress goes to stderr in plain lines, which is not a terminal here.
    """
    simulate(served, fleets, 3)
    groups = make_groups(served.client(), 3)
    path = tmp_path / "groups.jsonl"
    path.write_text("\n".join(input_lines(groups)) + "\n")
    result = served.cloud(
        *("start-bulk-deployment", "--execution-role-arn", ROLE),
        *("--input-file-uri", str(path), "--max-per-second", "100", "--wait"),
    )
    assert result.returncode == 0, result.stderr
    assert "BulkDeploymentId" in json.loads(result.stdout)
    progress = [line for line in result.stderr.splitlines() if " done, " in line]
    assert progress, result.stderr
    assert progress[-1].startswith("Completed "), progress
    assert "/3 done" in progress[-1]
    assert "\r" not in result.stderr
    # The other commands read it from the database, without a server as with one.
    bulk_id = json.loads(result.stdout)["BulkDeploymentId"]
    shown = served.cloud("get-bulk-deployment-status", "--bulk-deployment-id", bulk_id)
    assert json.loads(shown.stdout)["BulkDeploymentStatus"] == "Completed", shown.stderr
    lines = served.cloud("list-bulk-deployment-detailed-reports", "--bulk-deployment-id", bulk_id)
    assert len(json.loads(lines.stdout)["Deployments"]) == 3, lines.stderr
    stop = served.cloud("stop-bulk-deployment", "--bulk-deployment-id", bulk_id)
    assert stop.returncode == 2
    assert "Completed" in stop.stderr


def test_a_bulk_deployment_survives_the_death_of_its_replica(
    served: Served, moto: MotoServer, fleets: list[SimulatedFleet]
) -> None:
    """SIGKILL the replica running it: another on the same database finishes it.

    The other takes its lease over once it lapses, and no group is deployed twice.
    """
    # A lease of seconds rather than the default 30: the replica taking over waits that long.
    assert served.service.stop() == 0
    text = served.config.read_text()
    served.config.write_text(text.replace("[cloud]\n", "[cloud]\nbulk_lease_seconds = 3\n", 1))
    listening = launch(served.service)
    simulate(served, fleets, 8)
    listening()
    client = served.client()
    groups = make_groups(client, 8)
    started = client.start_bulk_deployment(
        ExecutionRoleArn=ROLE,
        InputFileUri=upload(moto, input_lines(groups)),
        tags={"edge:max-per-second": "1"},
    )
    bulk_id = started["BulkDeploymentId"]
    wait_for(lambda: sum(deployments_by_group(client, groups).values()) >= 2, "2 deployments")
    assert served.service.stop(signal.SIGKILL) == -signal.SIGKILL
    # Another replica on the same database and port.
    launch(served.service)()
    # The lease (3 s) lapses, the next look for orphans (every 1 s) adopts it.
    wait_for(state_is(client, bulk_id, "Completed"), "Completed", timeout=60)
    assert deployments_by_group(client, groups) == {g: 1 for g, _ in groups}
    wait_for(
        lambda: [d["DeploymentStatus"] for d in report(client, bulk_id)] == ["Success"] * 8,
        "Success from every core",
    )
