"""Every operation of botocore's `greengrass` model answers through `edge cloud serve`.

boto3 drives each operation against a real service; a successful answer is checked with
botocore's output-shape validation, and the operations edge stores without acting on them
(roles, connectivity info, runtime configuration, group CAs, software update jobs) give back
what was put, in AWS's shapes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import xform_name
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from edge.cloud.serve.routes import operation_names, service_model
from edge.fixtures.services import TEST_REGION, MotoServer
from tests.integration import test_cloud_serve as base
from tests.integration.test_cloud_lifecycle import MILLISECONDS, shaped
from tests.integration.test_cloud_serve import ACCOUNT, KEY_ID, Served, code, error_of
from tests.support import REPO

pytestmark = pytest.mark.network

served = base.served

ROLE = f"arn:aws:iam::{ACCOUNT}:role/GreengrassGroupRole"
KINDS = ("Core", "Resource", "Function", "Connector", "Subscription", "Device", "Logger")
#: Operations run after the others, in this order: they take away what the others use.
LAST = ("Untag", "Disassociate", "Stop", "Reset", "Delete")


def _input_file(moto: MotoServer, group_id: str, version_id: str) -> str:
    s3 = boto3.client("s3", region_name=TEST_REGION, endpoint_url=moto.url)
    s3.create_bucket(Bucket="bulk-input")
    line = {"GroupId": group_id, "GroupVersionId": version_id, "DeploymentType": "NewDeployment"}
    s3.put_object(Bucket="bulk-input", Key="groups.jsonl", Body=(json.dumps(line) + "\n") * 2)
    return "s3://bulk-input/groups.jsonl"


def _phase(operation: str) -> tuple[int, str]:
    if operation.startswith(("Get", "List")):
        return 1, operation
    for index, prefix in enumerate(LAST):
        if operation.startswith(prefix):
            # DeleteGroup after ResetDeployments; deletes of definitions before it.
            return 2 + index, "~" if operation == "DeleteGroup" else operation
    return 0, operation


def _world(served: Served, client: Any, moto: MotoServer) -> dict[str, Any]:
    """A group with a core and a deployment, one definition of each kind: the inputs' ids.

    A bulk deployment's input file names the group twice, to be paced so slowly that it is
    still running when StopBulkDeployment comes.
    """
    served.thing = f"core-{secrets.token_hex(4)}"
    thing_arn = f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:thing/{served.thing}"
    core_version = served.core_definition(client)
    group = client.create_group(
        Name="everything", InitialVersion={"CoreDefinitionVersionArn": core_version}
    )
    deployment = client.create_deployment(
        GroupId=group["Id"], GroupVersionId=group["LatestVersion"], DeploymentType="NewDeployment"
    )
    values: dict[str, Any] = {
        "GroupId": group["Id"],
        "GroupVersionId": group["LatestVersion"],
        "DeploymentId": deployment["DeploymentId"],
        "DeploymentType": "NewDeployment",
        "ResourceArn": group["Arn"],
        "Name": "renamed",
        "tags": {"team": "ops"},
        "TagKeys": ["team"],
        "ThingName": served.thing,
        "RoleArn": ROLE,
        "S3UrlSignerRole": ROLE,
        "ExecutionRoleArn": ROLE,
        "InputFileUri": _input_file(moto, group["Id"], group["LatestVersion"]),
        "BulkDeploymentId": "set by StartBulkDeployment",
        "CertificateAuthorityId": "set by CreateGroupCertificateAuthority",
        "SoftwareToUpdate": "core",
        "UpdateTargets": [thing_arn],
        "UpdateTargetsArchitecture": "x86_64",
        "UpdateTargetsOperatingSystem": "ubuntu",
        "Force": True,
        "Cores": [
            {
                "Id": "core-1",
                "ThingArn": thing_arn,
                "CertificateArn": f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:cert/abc",
            }
        ],
        "TelemetryConfiguration": {"Telemetry": "Off"},
        "ConnectivityInfo": [{"Id": "c1", "HostAddress": "192.0.2.1", "PortNumber": 8883}],
        "CertificateExpiryInMilliseconds": str(10 * 86_400_000),
    }
    *_, values["CoreDefinitionId"], _, values["CoreDefinitionVersionId"] = core_version.split("/")
    for kind in KINDS[1:]:
        made = getattr(client, f"create_{kind.lower()}_definition")(Name=kind.lower())
        version = getattr(client, f"create_{kind.lower()}_definition_version")(
            **{f"{kind}DefinitionId": made["Id"], f"{kind}s": []}
        )
        values[f"{kind}DefinitionId"] = made["Id"]
        values[f"{kind}DefinitionVersionId"] = version["Version"]
    return values


def _input(operation: str, values: dict[str, Any]) -> dict[str, Any]:
    shape = service_model().operation_model(operation).input_shape
    if shape is None:
        return {}
    wanted = set(shape.required_members) | {
        "Name",
        "Cores",
        "GroupVersionId",
        "Force",
        "TelemetryConfiguration",
        "ConnectivityInfo",
        "CertificateExpiryInMilliseconds",
    }
    return {name: values[name] for name in shape.members if name in wanted}


def _call(method: Any, params: dict[str, Any]) -> dict[str, Any] | ClientError:
    try:
        answer: dict[str, Any] = method(**params)
    except ClientError as exc:
        return exc
    return answer


def test_every_operation_of_the_model_answers_as_aws_documents_it(
    served: Served, moto: MotoServer
) -> None:
    """Each of the model's operations succeeds with its output shape, as AWS documents it.

    So a V1 script meets no operation edge ignores or refuses.
    """
    client = served.client()
    values = _world(served, client, moto)
    refused: dict[str, str] = {}
    for operation in sorted(operation_names(), key=_phase):
        params = _input(operation, values)
        if operation == "StartBulkDeployment":
            params["tags"] = {"edge:max-per-second": "0.01"}
        answer = _call(getattr(client, xform_name(operation)), params)
        if isinstance(answer, ClientError):
            refused[operation] = f"{code(answer)} {answer}"
            continue
        body = shaped(operation, answer)
        if operation == "CreateGroupCertificateAuthority":
            values["CertificateAuthorityId"] = body["GroupCertificateAuthorityArn"].rsplit("/")[-1]
        if operation == "StartBulkDeployment":
            values["BulkDeploymentId"] = body["BulkDeploymentId"]
    assert refused == {}
    # Everything that answered left its trace: the group is gone, as DeleteGroup said.
    assert code(error_of(lambda: client.get_group(GroupId=values["GroupId"]))) == (
        404,
        "IdNotFoundException",
    )


def test_docs_list_every_operation_with_its_status() -> None:
    """docs/cloud.md's operations table names exactly the model's operations, each once."""
    text = (REPO / "docs" / "cloud.md").read_text()
    table = text.split("### Operations", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named = [name for row in rows for name in re.findall(r"`([A-Z][A-Za-z]+)`", row.split("|")[1])]
    assert sorted(named) == sorted(operation_names())
    statuses = {row.split("|")[2].strip() for row in rows}
    assert statuses <= {"implemented", "stored, not acted on", "refused"}, statuses


# --- a named profile ------------------------------------------------------------------------------


def test_a_named_aws_cli_profile_reaches_the_service_without_endpoint_url(
    served: Served, tmp_path: Path
) -> None:
    """docs/cloud.md's `edge` profile: `aws --profile edge` and boto3 reach the service.

    The profile holds the service's key and its endpoint, for `greengrass` only; the default
    profile in the same files stays the credentials for AWS (here moto's), untouched.
    """
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n\n"
        f"[edge]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {served.secret}\n"
    )
    credentials.chmod(0o600)
    config = tmp_path / "config"
    config.write_text(
        f"[profile edge]\nregion = {TEST_REGION}\nservices = edge-control-plane\n\n"
        f"[services edge-control-plane]\ngreengrass =\n  endpoint_url = {served.url}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1",
    }
    created = subprocess.run(
        [sys.executable, "-m", "awscli", "greengrass", "create-group", "--name", "via-profile"],
        capture_output=True,
        text=True,
        env=env | {"AWS_PROFILE": "edge"},
        check=False,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "awscli", "--profile", "edge", "greengrass", "list-groups"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert [g["Name"] for g in json.loads(listed.stdout)["Groups"]] == ["via-profile"]
    # boto3 reads the same profile; the default profile's keys are not the service's.
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            patch.delenv(key)
        for key, value in env.items():
            if key.startswith("AWS_"):
                patch.setenv(key, value)
        session = boto3.Session(profile_name="edge")
        assert session.client("greengrass").list_groups()["Groups"][0]["Name"] == "via-profile"
        default = boto3.Session().client(
            "greengrass", region_name=TEST_REGION, endpoint_url=served.url
        )
        assert code(error_of(default.list_groups))[0] == 403


# --- what is stored is what is returned --------------------------------------------------------


def test_roles_are_associated_returned_and_disassociated(served: Served) -> None:
    """A group's role and the account's service role come back as put, with AWS's timestamps.

    Before one is associated, and after it is disassociated, reading it is refused saying so.
    """
    client = served.client()
    group = client.create_group(Name="g")
    assert "You need to attach an IAM role" in str(
        error_of(lambda: client.get_associated_role(GroupId=group["Id"]))
    )
    put = shaped(
        "AssociateRoleToGroup", client.associate_role_to_group(GroupId=group["Id"], RoleArn=ROLE)
    )
    assert MILLISECONDS.fullmatch(put["AssociatedAt"])
    got = shaped("GetAssociatedRole", client.get_associated_role(GroupId=group["Id"]))
    assert got == {"RoleArn": ROLE, "AssociatedAt": put["AssociatedAt"]}
    other = f"arn:aws:iam::{ACCOUNT}:role/Other"
    client.associate_role_to_group(GroupId=group["Id"], RoleArn=other)
    assert client.get_associated_role(GroupId=group["Id"])["RoleArn"] == other
    gone = shaped(
        "DisassociateRoleFromGroup", client.disassociate_role_from_group(GroupId=group["Id"])
    )
    assert MILLISECONDS.fullmatch(gone["DisassociatedAt"])
    assert "You need to attach an IAM role" in str(
        error_of(lambda: client.get_associated_role(GroupId=group["Id"]))
    )
    assert "is not an IAM role ARN" in str(
        error_of(lambda: client.associate_role_to_group(GroupId=group["Id"], RoleArn="role"))
    )

    assert "no Greengrass service role" in str(error_of(client.get_service_role_for_account))
    put = client.associate_service_role_to_account(RoleArn=ROLE)
    got = shaped("GetServiceRoleForAccount", client.get_service_role_for_account())
    assert got == {"RoleArn": ROLE, "AssociatedAt": put["AssociatedAt"]}
    # The AWS CLI reads the same.
    assert served.aws_json("greengrass", "get-service-role-for-account")["RoleArn"] == ROLE
    client.disassociate_service_role_from_account()
    assert "no Greengrass service role" in str(error_of(client.get_service_role_for_account))


def test_connectivity_info_and_runtime_configuration_are_kept_per_thing(served: Served) -> None:
    """UpdateConnectivityInfo and UpdateThingRuntimeConfiguration are read back per thing.

    Each update of connectivity info gets a new Version; telemetry reads back OutOfSync, as
    edge's core never takes the setting; bad input is refused and changes nothing.
    """
    client = served.client()
    assert shaped("GetConnectivityInfo", client.get_connectivity_info(ThingName="core-a")) == {}
    info = [
        {"Id": "lan", "HostAddress": "192.0.2.10", "PortNumber": 8883, "Metadata": ""},
        {"Id": "dns", "HostAddress": "core.example.com", "PortNumber": 443, "Metadata": "x"},
    ]
    first = shaped(
        "UpdateConnectivityInfo",
        client.update_connectivity_info(ThingName="core-a", ConnectivityInfo=info),
    )
    second = client.update_connectivity_info(ThingName="core-a", ConnectivityInfo=info[:1])
    assert first["Version"] != second["Version"]
    got = shaped("GetConnectivityInfo", client.get_connectivity_info(ThingName="core-a"))
    assert got == {"ConnectivityInfo": info[:1]}
    assert client.get_connectivity_info(ThingName="core-b").get("ConnectivityInfo") is None
    bad = [{"Id": "x", "HostAddress": "h", "PortNumber": 70000}]
    assert "PortNumber: must be 1-65535" in str(
        error_of(lambda: client.update_connectivity_info(ThingName="core-a", ConnectivityInfo=bad))
    )
    assert client.get_connectivity_info(ThingName="core-a")["ConnectivityInfo"] == info[:1]

    runtime = client.get_thing_runtime_configuration(ThingName="core-a")
    assert shaped("GetThingRuntimeConfiguration", runtime) == {"RuntimeConfiguration": {}}
    client.update_thing_runtime_configuration(
        ThingName="core-a", TelemetryConfiguration={"Telemetry": "Off"}
    )
    runtime = client.get_thing_runtime_configuration(ThingName="core-a")
    assert shaped("GetThingRuntimeConfiguration", runtime)["RuntimeConfiguration"] == {
        "TelemetryConfiguration": {"Telemetry": "Off", "ConfigurationSyncStatus": "OutOfSync"}
    }
    assert "must be one of On, Off" in str(
        error_of(
            lambda: client.update_thing_runtime_configuration(
                ThingName="core-a", TelemetryConfiguration={"Telemetry": "Maybe"}
            )
        )
    )


def test_group_certificate_authorities_and_expiry_are_kept_with_the_group(served: Served) -> None:
    """A group's CA is a real CA certificate whose id is its SHA-256; expiry has AWS's bounds.

    The CAs and the expiry configuration go with the group when it is deleted.
    """
    client = served.client()
    group = client.create_group(Name="g")
    gid = group["Id"]
    assert (
        client.list_group_certificate_authorities(GroupId=gid)["GroupCertificateAuthorities"] == []
    )
    made = shaped(
        "CreateGroupCertificateAuthority", client.create_group_certificate_authority(GroupId=gid)
    )
    arn = made["GroupCertificateAuthorityArn"]
    ca_id = arn.rsplit("/", 1)[1]
    assert arn == f"{group['Arn']}/certificateauthorities/{ca_id}"
    ca = shaped(
        "GetGroupCertificateAuthority",
        client.get_group_certificate_authority(GroupId=gid, CertificateAuthorityId=ca_id),
    )
    cert = x509.load_pem_x509_certificate(ca["PemEncodedCertificate"].encode())
    assert hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest() == ca_id
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca
    listed = client.list_group_certificate_authorities(GroupId=gid)
    assert shaped("ListGroupCertificateAuthorities", listed)["GroupCertificateAuthorities"] == [
        {"GroupCertificateAuthorityArn": arn, "GroupCertificateAuthorityId": ca_id}
    ]

    default = client.get_group_certificate_configuration(GroupId=gid)
    assert shaped("GetGroupCertificateConfiguration", default)[
        "CertificateExpiryInMilliseconds"
    ] == ("604800000")
    updated = client.update_group_certificate_configuration(
        GroupId=gid, CertificateExpiryInMilliseconds="2592000000"
    )
    assert shaped("UpdateGroupCertificateConfiguration", updated)["GroupId"] == gid
    got = client.get_group_certificate_configuration(GroupId=gid)
    assert got["CertificateExpiryInMilliseconds"] == "2592000000"
    assert "from 604800000 (7 days) to 2592000000 (30 days)" in str(
        error_of(
            lambda: client.update_group_certificate_configuration(
                GroupId=gid, CertificateExpiryInMilliseconds="1000"
            )
        )
    )

    client.delete_group(GroupId=gid)
    assert code(error_of(lambda: client.list_group_certificate_authorities(GroupId=gid))) == (
        404,
        "IdNotFoundException",
    )
    again = client.create_group(Name="again")
    assert (
        client.list_group_certificate_authorities(GroupId=again["Id"])[
            "GroupCertificateAuthorities"
        ]
        == []
    )


def test_software_update_jobs_are_recorded_and_answered_as_aws_does(served: Served) -> None:
    """CreateSoftwareUpdateJob answers an IoT job id and ARN; bad targets are refused."""
    client = served.client()
    target = f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:thing/core-a"
    job = {
        "S3UrlSignerRole": ROLE,
        "SoftwareToUpdate": "core",
        "UpdateTargets": [target],
        "UpdateTargetsArchitecture": "armv7l",
        "UpdateTargetsOperatingSystem": "raspbian",
    }
    answer = shaped("CreateSoftwareUpdateJob", client.create_software_update_job(**job))
    assert answer["IotJobArn"] == f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:job/{answer['IotJobId']}"
    # Another job under its own client token; the same token again gets the same job.
    again = client.create_software_update_job(**job, AmznClientToken="second")
    assert again["IotJobId"] != answer["IotJobId"]
    repeated = client.create_software_update_job(**job, AmznClientToken="second")
    assert repeated["IotJobId"] == again["IotJobId"]
    assert "is not an AWS IoT thing ARN" in str(
        error_of(lambda: client.create_software_update_job(**(job | {"UpdateTargets": ["core-a"]})))
    )
    assert "must be one of armv6l" in str(
        error_of(
            lambda: client.create_software_update_job(
                **(job | {"UpdateTargetsArchitecture": "sparc"})
            )
        )
    )
