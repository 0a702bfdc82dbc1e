"""`edge cloud simulate-cores` against a real control plane (`edge cloud` commands), Mosquitto."""

from __future__ import annotations

import concurrent.futures
import json
import queue
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.cloud.config import load_cloud_config
from edge.cloud.db import open_database
from edge.cloud.deployment_reads import recorded_status
from edge.cloud.ids import Arns
from edge.fixtures.core import Operator, edge_cli
from edge.fixtures.fleetdb import core_group
from edge.fixtures.services import TEST_REGION, Mosquitto, MotoServer, free_port
from edge.fixtures.simulate import SimulatedFleet
from edge.signing import seal
from tests.integration.test_cloud import write_cloud_config
from tests.integration.test_cloud_serve import (
    KEY_ID,
    NO_RETRIES,
    start_service,
    write_serve_config,
)
from tests.support.controlplane import open_configured
from tests.support.tls import LoggingMosquitto, run_logging_mosquitto

pytestmark = pytest.mark.network


@dataclass
class ControlPlane:
    """A control plane initialised on the test's broker, and the simulations it started."""

    config: Path
    broker: Mosquitto
    fleets: list[SimulatedFleet] = field(default_factory=list)

    def json(self, *args: str, expect: int = 0) -> dict[str, Any]:
        result = edge_cli("cloud", "--config", str(self.config), *args)
        assert result.returncode == expect, result.stderr
        assert "Traceback" not in result.stderr
        out: dict[str, Any] = json.loads(result.stdout)
        return out

    def simulate(self, *options: str) -> SimulatedFleet:
        fleet = SimulatedFleet(self.config, options)
        self.fleets.append(fleet)
        fleet.start()
        return fleet

    def group_for(self, thing: str) -> str:
        """A group whose one version names `thing` as its core; return the group id.

        Written through the control plane's own code: the commands that make groups are
        test_cloud's to prove, and a process each would double these tests' time.
        """
        config = load_cloud_config(self.config)
        with open_database(config) as db:
            group = core_group(db, Arns(config.aws.region, config.cloud.account_id), thing)
        return str(group["Id"])

    def deploy(self, group_id: str, *, expect: int = 0) -> dict[str, Any]:
        """create-deployment --wait; return the status it recorded, as get-deployment-status."""
        created = self.json(
            *("create-deployment", "--group-id", group_id, "--deployment-type", "NewDeployment"),
            *("--wait", "--timeout", "60"),
            expect=expect,
        )
        with open_configured(self.config) as db:
            status = recorded_status(db, group_id, created["DeploymentId"])
        return {"DeploymentId": created["DeploymentId"], **status}


@pytest.fixture
def control_plane(tmp_path: Path, broker: Mosquitto, moto: MotoServer) -> Iterator[ControlPlane]:
    config = write_cloud_config(tmp_path / "cloud.toml", broker=broker, moto=moto)
    init = edge_cli("cloud", "--config", str(config), "init")
    assert init.returncode == 0, init.stderr
    plane = ControlPlane(config, broker)
    yield plane
    for fleet in plane.fleets:
        fleet.kill()


def test_every_simulated_core_reaches_success_across_processes(
    control_plane: ControlPlane,
) -> None:
    fleet = control_plane.simulate("--count", "2", "--processes", "2")
    groups = [control_plane.group_for(f"sim-{i}") for i in range(2)]
    statuses = [control_plane.deploy(group)["DeploymentStatus"] for group in groups]
    assert statuses == ["Success"] * 2
    summary = fleet.stop()
    assert summary == {
        "Cores": 2,
        "Deployments": 2,
        "Success": 2,
        "Failure": 0,
        "Duplicates": 0,
        "Refused": 0,
        "Rejected": 0,
    }


def test_cores_per_connection_spreads_a_process_over_connections(
    tmp_path: Path, moto: MotoServer
) -> None:
    """Five cores, two a connection: three connections in one process, each serving its own."""
    with run_logging_mosquitto(tmp_path / "mosquitto") as broker:
        config = write_cloud_config(tmp_path / "cloud.toml", broker=broker, moto=moto)
        assert edge_cli("cloud", "--config", str(config), "init").returncode == 0
        plane = ControlPlane(config, broker)
        fleet = plane.simulate("--count", "5", "--processes", "1", "--cores-per-connection", "2")
        try:
            assert any("5 cores ready on 3 connection(s) in 1 process(es)" in x for x in fleet.log)
            # A core of the first, the second and the last connection.
            for thing in ("sim-0", "sim-3", "sim-4"):
                assert plane.deploy(plane.group_for(thing))["DeploymentStatus"] == "Success"
            summary = fleet.stop()
        finally:
            fleet.kill()
        log = broker.log_text()
    assert (summary["Deployments"], summary["Success"]) == (3, 3), summary
    clients = set(re.findall(r"New client connected from \S+ as (sim-\S+) ", log))
    assert clients == {"sim-sim-0-0", "sim-sim-2-0", "sim-sim-4-0"}, clients


def test_failure_rate_one_fails_every_deployment(control_plane: ControlPlane) -> None:
    fleet = control_plane.simulate(
        "--count", "2", "--processes", "1", "--connection-per-core", "--failure-rate", "1"
    )
    for thing in ("sim-0", "sim-1"):
        status = control_plane.deploy(control_plane.group_for(thing), expect=1)
        assert status["DeploymentStatus"] == "Failure"
        assert status["ErrorDetails"][0]["DetailedErrorCode"] == "SimulatedFailure"
    summary = fleet.stop()
    assert (summary["Failure"], summary["Success"]) == (2, 0)


def test_redelivered_deployment_is_answered_as_a_duplicate(control_plane: ControlPlane) -> None:
    fleet = control_plane.simulate("--count", "1", "--processes", "1")
    operator = Operator(control_plane.broker.port, "edge", "sim-0")
    operator.connect()
    try:
        sent = operator.subscribe(operator.deployments_topic)
        deployed = control_plane.deploy(control_plane.group_for("sim-0"))
        assert deployed["DeploymentStatus"] == "Success"
        _, envelope = sent.get(timeout=10)
        final = _next_final(operator.statuses)  # the retained one, or the live one
        assert final["DeploymentId"] == deployed["DeploymentId"]

        operator.publish_raw(json.dumps(envelope))  # what the broker does when a PUBACK was lost

        again = _next_final(operator.statuses)
        assert again == final  # the same document, UpdatedAt included: nothing new happened
        summary = fleet.stop()
    finally:
        operator.close()
    assert (summary["Deployments"], summary["Success"], summary["Duplicates"]) == (2, 1, 1)


def test_forged_envelope_is_refused_without_a_status(control_plane: ControlPlane) -> None:
    fleet = control_plane.simulate("--count", "1", "--processes", "1")
    operator = Operator(control_plane.broker.port, "edge", "sim-0")
    operator.connect()
    try:
        document = {
            "DeploymentId": "forged-0001",
            "DeploymentType": "NewDeployment",
            "GroupId": "g",
            "GroupVersionId": "v",
            "CreatedAt": "2026-11-28T12:00:00Z",
            "Group": {"Resources": [], "Functions": [], "Connectors": [], "Subscriptions": []},
        }
        forged = seal(
            json.dumps(document).encode(),
            signing_key=Ed25519PrivateKey.generate(),
            thing_name="sim-0",
        )
        operator.publish_raw(forged)
        # Published after the forged one on the same topic, so answered after it.
        genuine = control_plane.deploy(control_plane.group_for("sim-0"))
        assert genuine["DeploymentStatus"] == "Success"
        seen = set()
        while (status := operator.statuses.get(timeout=15))["DeploymentStatus"] != "Success":
            seen.add(status["DeploymentId"])
        seen.add(status["DeploymentId"])
        summary = fleet.stop()
    finally:
        operator.close()
    assert seen == {genuine["DeploymentId"]}
    assert (summary["Refused"], summary["Success"]) == (1, 1)


def _next_final(statuses: queue.Queue[dict[str, Any]]) -> dict[str, Any]:
    while True:
        status = statuses.get(timeout=15)
        if status["DeploymentStatus"] in {"Success", "Failure"}:
            return status


def test_serve_deploys_through_one_connection_and_across_a_broker_restart(
    tmp_path: Path, moto: MotoServer
) -> None:
    with run_logging_mosquitto(tmp_path / "mosquitto") as broker:
        _deploy_through_serve_across_a_restart(tmp_path, broker, moto)


def _deploy_through_serve_across_a_restart(
    tmp_path: Path, broker: LoggingMosquitto, moto: MotoServer
) -> None:
    port = free_port()
    config = write_serve_config(tmp_path, broker=broker, moto=moto, port=port)
    secret = secrets.token_urlsafe(30)
    (tmp_path / "operator.secret").write_text(secret + "\n")
    (tmp_path / "operator.secret").chmod(0o600)
    assert edge_cli("cloud", "--config", str(config), "init").returncode == 0
    plane = ControlPlane(config, broker)
    fleet = plane.simulate("--count", "3", "--processes", "1")
    service = start_service(tmp_path, config, port)
    try:
        client = boto3.client(
            "greengrass",
            region_name=TEST_REGION,
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=secret,
            config=NO_RETRIES,
        )
        groups = [plane.group_for(f"sim-{i}") for i in range(3)]
        first = [
            client.create_deployment(GroupId=g, DeploymentType="NewDeployment")["DeploymentId"]
            for g in groups[:2]
        ]
        broker.stop()
        # Accepted while the broker is away: queued, and published once it is back.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                client.create_deployment, GroupId=groups[2], DeploymentType="NewDeployment"
            )
            service.wait_for_event("cloud.publisher.unavailable")
            broker.start()
            last = pending.result(timeout=30)["DeploymentId"]
        deployments = [*zip(groups, [*first, last], strict=True)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            statuses = [
                client.get_deployment_status(GroupId=g, DeploymentId=d)["DeploymentStatus"]
                for g, d in deployments
            ]
            if statuses == ["Success"] * 3:
                break
            time.sleep(0.2)
        assert statuses == ["Success"] * 3
        summary = fleet.stop()
    finally:
        fleet.kill()
        assert service.stop() == 0
    # Answered once queued, a deployment may be in flight when the broker stops: sent again
    # (at least once), it is answered as a duplicate and applied once.
    assert (summary["Deployments"] - summary["Duplicates"], summary["Success"]) == (3, 3), summary
    # One connection for publishing and following, made again after the restart under the
    # same client id; no connection of a deployment's own.
    log = broker.log_text()
    clients = set(re.findall(r"New client connected from \S+ as (edge-cloud-\S+) ", log))
    assert len(clients) == 1, clients
    assert next(iter(clients)).startswith("edge-cloud-publisher-")
