"""Logger and device definitions: stored, named by group versions, deployed to a real core."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.fixtures.services import TEST_REGION
from tests.integration import test_cloud, test_cloud_serve
from tests.integration.test_cloud import ACCOUNT, Cloud
from tests.integration.test_cloud_serve import Served

pytestmark = pytest.mark.network

#: test_cloud's control plane and core, shared as a fixture.
cloud = test_cloud.cloud

LOGGERS = {
    "Loggers": [
        {
            "Id": "system",
            "Component": "GreengrassSystem",
            "Level": "WARN",
            "Type": "FileSystem",
            "Space": 128,
        },
        {"Id": "cloud-logs", "Component": "Lambda", "Level": "INFO", "Type": "AWSCloudWatch"},
    ]
}
DEVICES = {
    "Devices": [
        {
            "Id": "sensor",
            "ThingArn": f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:thing/door-sensor",
            "CertificateArn": f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:cert/sensor",
            "SyncShadow": True,
        }
    ]
}
NOTE = (
    'edge ignored AWSCloudWatch logger "cloud-logs" (Lambda): edge doesn\'t send logs to '
    'CloudWatch; 1 device(s) ("sensor"): edge has no local device connections'
)


def created(cloud: Cloud, noun: str, body: dict[str, Any]) -> dict[str, Any]:
    """create-NOUN-definition with an initial version; its answer."""
    return cloud.json(
        f"create-{noun}-definition", "--name", noun, "--initial-version", json.dumps(body)
    )


def test_loggers_and_devices_are_stored_deployed_and_set_the_core_log_level(
    cloud: Cloud,
) -> None:
    """A group with a logger and a device definition deploys: Success, one note, WARN level.

    The FileSystem GreengrassSystem logger's level becomes the core's (its info lines stop);
    the CloudWatch logger and the device are named once in the core's log and in the note that
    edge's CLI shows beside AWS's unchanged get-deployment-status answer.
    """
    loggers = created(cloud, "logger", LOGGERS)
    devices = created(cloud, "device", DEVICES)
    shown = cloud.json(
        *("get-logger-definition-version", "--logger-definition-id", loggers["Id"]),
        *("--logger-definition-version-id", loggers["LatestVersion"]),
    )
    assert shown["Definition"] == LOGGERS
    listed = cloud.json("list-device-definitions")["Definitions"]
    assert [d["Id"] for d in listed] == [devices["Id"]]
    assert (
        cloud.json("list-device-definition-versions", "--device-definition-id", devices["Id"])[
            "Versions"
        ][0]["Version"]
        == devices["LatestVersion"]
    )
    bad = cloud.run(
        *("create-logger-definition-version", "--logger-definition-id", loggers["Id"]),
        *("--loggers", json.dumps([{**LOGGERS["Loggers"][0], "Level": "LOUD"}])),
        check=False,
    )
    assert bad.returncode == 2
    assert '"LOUD" is not one of DEBUG, INFO, WARN, ERROR, FATAL' in bad.stderr

    core = cloud.core_definition()
    group_id, plain = cloud.group(core=core)
    _, result = cloud.deploy(group_id)
    assert result.returncode == 0, result.stderr
    assert "edge: note:" not in result.stderr
    assert cloud.core.count("deploy.complete") == 1

    version = cloud.group_version(
        group_id, core=core, logger=loggers["LatestVersionArn"], device=devices["LatestVersionArn"]
    )
    assert cloud.json("get-group-version", "--group-id", group_id, "--group-version-id", version)[
        "Definition"
    ] == {
        "CoreDefinitionVersionArn": core,
        "LoggerDefinitionVersionArn": loggers["LatestVersionArn"],
        "DeviceDefinitionVersionArn": devices["LatestVersionArn"],
    }
    deployment_id, result = cloud.deploy(group_id)
    assert result.returncode == 0, result.stderr
    assert f"edge: note: {NOTE}" in result.stderr
    status = cloud.run(
        "get-deployment-status", "--group-id", group_id, "--deployment-id", deployment_id
    )
    assert set(json.loads(status.stdout)) == {"DeploymentStatus", "DeploymentType", "UpdatedAt"}
    assert json.loads(status.stdout)["DeploymentStatus"] == "Success"
    assert status.stderr == f"edge: note: {NOTE}\n"
    (ignored,) = [e for e in cloud.core.events() if e.get("event") == "deploy.ignored"]
    assert ignored["note"] == NOTE
    assert ignored["level"] == "warning"
    # WARN: the core's info lines (deploy.complete among them) are no longer written.
    assert cloud.core.wait_for_event("deploy.log_level")["log_level"] == "warning"
    assert cloud.core.count("deploy.complete") == 1
    # Space: 128 KB bounds a 0600 copy of the log in the state directory, from then on.
    copy = cloud.core.config.parent / "state" / "logs" / "core.log"
    assert "deploy.ignored" in copy.read_text()
    assert copy.stat().st_mode & 0o777 == 0o600
    assert copy.stat().st_size <= 64 * 1024
    # After a restart the stored group's level holds again, without repeating the note.
    cloud.core.stop()
    cloud.core.start()
    assert cloud.core.wait_for_event("deploy.log_level", after=1)["log_level"] == "warning"
    assert cloud.core.count("deploy.ignored") == 1
    # Its reconnection isn't logged (info); its persistent session gets what follows anyway.

    # A deployment without loggers gives the core its configured level back.
    _, result = cloud.deploy(group_id, "--group-version-id", plain)
    assert result.returncode == 0, result.stderr
    cloud.core.wait_for_event("deploy.complete")
    assert cloud.core.count("deploy.complete") == 2
    assert "deploy.complete" not in copy.read_text()  # the copy stopped with the logger
    assert cloud.core.count("mqtt.connected") == 1


#: test_cloud_serve's service with a core, shared as fixtures.
served = test_cloud_serve.served
with_core = test_cloud_serve.with_core


def test_boto3_stores_loggers_and_devices_and_the_deployment_succeeds(with_core: Served) -> None:
    """Through the REST API, a group with loggers and devices deploys; AWS's shapes hold.

    Every logger and device operation answers with the model's output shape; the note goes to
    the service log, and GetDeploymentStatus has exactly AWS's keys.
    """
    client = with_core.client()
    loggers = client.create_logger_definition(Name="logs", InitialVersion=LOGGERS)
    devices = client.create_device_definition(Name="sensors", InitialVersion=DEVICES)
    shown = client.get_device_definition_version(
        DeviceDefinitionId=devices["Id"], DeviceDefinitionVersionId=devices["LatestVersion"]
    )
    assert shown["Definition"] == DEVICES
    listed = client.list_logger_definitions()["Definitions"]
    assert [d["Id"] for d in listed] == [loggers["Id"]]
    again = client.create_logger_definition_version(
        LoggerDefinitionId=loggers["Id"], Loggers=LOGGERS["Loggers"][:1]
    )
    versions = client.list_logger_definition_versions(LoggerDefinitionId=loggers["Id"])
    assert len(versions["Versions"]) == 2
    assert versions["Versions"][0]["Version"] == again["Version"]
    group = client.create_group(Name="logged")
    client.create_group_version(
        GroupId=group["Id"],
        CoreDefinitionVersionArn=with_core.core_definition(client),
        LoggerDefinitionVersionArn=loggers["LatestVersionArn"],
        DeviceDefinitionVersionArn=devices["LatestVersionArn"],
    )
    deployment_id = client.create_deployment(GroupId=group["Id"], DeploymentType="NewDeployment")[
        "DeploymentId"
    ]
    status = with_core.wait_status(client, group["Id"], deployment_id, "Success")
    status.pop("ResponseMetadata")
    assert set(status) == {"DeploymentStatus", "DeploymentType", "UpdatedAt"}
    created = with_core.service.wait_for_event(
        "cloud.deployment.created", deployment_id=deployment_id
    )
    assert created["note"] == NOTE
