"""`edge cloud serve` end to end: the AWS CLI, boto3 and aiobotocore against the Greengrass API.

Real clients only: the awscli package's own entry point in a subprocess, boto3 and aiobotocore
with `endpoint_url`, plain urllib for unsigned requests; a real `edge run` core, Mosquitto and
moto. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import ipaddress
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiobotocore.session
import boto3
import botocore
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.flood_serve import half_heads, open_fds, unsigned_bodies, vm_rss_kib, wait_closed
from edge.cloud.serve.connections import RESERVED_DESCRIPTORS, connection_cap
from edge.cloud.serve.operations import HANDLERS
from edge.cloud.serve.routes import operation_names
from edge.fixtures.core import CoreProcess, edge_cli, write_config
from edge.fixtures.reference import REFERENCE_ARN, REFERENCE_FUNCTIONS, REFERENCE_RESOURCES
from edge.fixtures.services import AWS_TEST_ENV, TEST_REGION, Mosquitto, MotoServer, free_port
from tests.support import REPO

pytestmark = pytest.mark.network

ACCOUNT = "123456789012"
KEY_ID = "EDGETESTOPERATOR0001"
#: No retries: a test wants the service's first answer, and fast.
NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})


class ServeProcess(CoreProcess):
    """A running `edge cloud serve`, its JSON log captured to a file."""

    def start(self) -> None:
        env = {**os.environ, **AWS_TEST_ENV}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "edge", "--log-format", "json"),
                    *("cloud", "--config", str(self.config), "serve"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )


@dataclass
class Served:
    """One test's control-plane service (and, when asked for, a core)."""

    root: Path
    config: Path
    url: str
    secret: str
    service: ServeProcess
    sm: Any
    thing: str = ""
    core_config: Path | None = None
    core: CoreProcess | None = None
    values: list[str] = field(default_factory=list)

    def client(self, *, secret: str | None = None, key_id: str = KEY_ID, **config: Any) -> Any:
        """A boto3 Greengrass client signing with this service's key (or the given one)."""
        return boto3.client(
            "greengrass",
            region_name=TEST_REGION,
            endpoint_url=self.url,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret or self.secret,
            config=NO_RETRIES.merge(Config(**config)),
        )

    def aws(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the official AWS CLI (the awscli package's entry point) against the service."""
        env = {**os.environ, **AWS_TEST_ENV}
        env.pop("AWS_SESSION_TOKEN")
        env |= {
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_OUTPUT": "json",
            "AWS_MAX_ATTEMPTS": "1",
        }
        return subprocess.run(
            [sys.executable, "-m", "awscli", *args, "--endpoint-url", self.url],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=self.root,
            check=False,
        )

    def aws_json(self, *args: str) -> dict[str, Any]:
        result = self.aws(*args)
        assert result.returncode == 0, result.stderr
        out: dict[str, Any] = json.loads(result.stdout)
        return out

    def cloud(self, *args: str) -> subprocess.CompletedProcess[str]:
        """An `edge cloud` command on the same config (and so the same database)."""
        return edge_cli("cloud", "--config", str(self.config), *args)

    def create_secret(self, name: str) -> str:
        value = f"pw-{secrets.token_urlsafe(18)}"
        self.values.append(value)
        arn: str = self.sm.create_secret(Name=name, SecretString=value)["ARN"]
        return arn

    def put_value(self, arn: str, stages: list[str]) -> str:
        value = f"v-{secrets.token_urlsafe(18)}"
        self.values.append(value)
        version: str = self.sm.put_secret_value(
            SecretId=arn, SecretString=value, VersionStages=stages
        )["VersionId"]
        return version

    def core_definition(self, client: Any) -> str:
        """A core definition naming this test's core, through the API; its version ARN."""
        created = client.create_core_definition(
            Name="core",
            InitialVersion={
                "Cores": [
                    {
                        "Id": "core-1",
                        "ThingArn": f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:thing/{self.thing}",
                        "CertificateArn": f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:cert/abc",
                        "SyncShadow": False,
                    }
                ]
            },
        )
        return str(created["LatestVersionArn"])

    def wait_status(self, client: Any, group_id: str, deployment_id: str, want: str) -> Any:
        """Poll GetDeploymentStatus (as a script would) until it reads `want`."""
        deadline = time.monotonic() + 60
        while True:
            status = client.get_deployment_status(GroupId=group_id, DeploymentId=deployment_id)
            if status["DeploymentStatus"] == want:
                return status
            assert status["DeploymentStatus"] not in {"Success", "Failure"}, status
            assert time.monotonic() < deadline, f"still {status} after 60 s"
            time.sleep(0.2)

    def secrets_listing(self) -> dict[str, Any]:
        assert self.core_config is not None
        result = edge_cli("secrets", "list", "--config", str(self.core_config), "--json")
        assert result.returncode == 0, result.stderr
        out: dict[str, Any] = json.loads(result.stdout)
        return out


def write_serve_config(
    root: Path,
    *,
    broker: Mosquitto,
    moto: MotoServer,
    port: int,
    tls: str = "",
    database: str = "cloud/edge-cloud.db",
) -> Path:
    path = root / "cloud.toml"
    path.write_text(
        f"""
[cloud]
database = "{database}"
signing_key = "cloud/signing.pem"
artifact_bucket = "edge-artifacts"
account_id = "{ACCOUNT}"
listen = "127.0.0.1:{port}"
{tls}

[cloud.auth]
keys = [{{access_key_id = "{KEY_ID}", secret_access_key_file = "operator.secret"}}]

[mqtt]
url = "{broker.url}"
reconnect_max_seconds = 1.0

[aws]
region = "{TEST_REGION}"
endpoint_url = "{moto.url}"
"""
    )
    return path


def start_service(root: Path, config: Path, port: int, *, scheme: str = "http") -> ServeProcess:
    service = ServeProcess(config=config, log_path=root / "serve.log")
    service.start()
    service.wait_for_event("cloud.serve.listening", url=f"{scheme}://127.0.0.1:{port}")
    return service


@pytest.fixture
def served(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any, cloud_database: str
) -> Iterator[Served]:
    """`edge cloud serve` on a free loopback port, initialised, with one access key."""
    port = free_port()
    config = write_serve_config(
        tmp_path, broker=broker, moto=moto, port=port, database=cloud_database
    )
    secret = secrets.token_urlsafe(30)
    secret_file = tmp_path / "operator.secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    init = edge_cli("cloud", "--config", str(config), "init")
    assert init.returncode == 0, init.stderr
    service = start_service(tmp_path, config, port)
    env = Served(tmp_path, config, f"http://127.0.0.1:{port}", secret, service, sm)
    yield env
    if env.core is not None and env.core.proc is not None:
        env.core.stop()
    assert service.stop() == 0, "SIGTERM must stop the service cleanly, exit status 0"
    log = service.log_text()
    assert "cloud.serve.stopped" in log
    assert "Traceback" not in log
    assert secret not in log, "a secret access key reached the service's log"
    output = log + (env.core.log_text() if env.core else "")
    for value in env.values:
        assert value not in output, "a secret value leaked into a log"


@pytest.fixture
def with_core(served: Served, broker: Mosquitto, moto: MotoServer) -> Served:
    """The service, plus a core that trusts its signing key, running and connected."""
    public_key = served.root / "cloud" / "signing.pem.pub"
    served.thing = f"core-{uuid.uuid4().hex[:8]}"
    served.core_config = write_config(
        served.root / "core.toml",
        thing_name=served.thing,
        mqtt_url=broker.url,
        endpoint_url=moto.url,
        deployments=f'trusted_keys = ["{public_key}"]',
    )
    assert edge_cli("init", "--config", str(served.core_config)).returncode == 0
    served.core = CoreProcess(config=served.core_config, log_path=served.root / "core.log")
    served.core.start()
    served.core.wait_for_event("mqtt.connected")
    return served


def signed_request(
    served: Served,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    at: dt.datetime | None = None,
    secret: str | None = None,
    tamper: Callable[[bytes], bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Sign a request with botocore's SigV4 (at `at`), optionally alter its body, send it.

    Signed twice with the same arguments and `at`, a request is the same bytes: a replay.
    """
    request = AWSRequest(
        method=method,
        url=served.url + path,
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    signer = SigV4Auth(Credentials(KEY_ID, secret or served.secret), "greengrass", TEST_REGION)
    moment = at or dt.datetime.now(dt.UTC)
    request.context["timestamp"] = moment.strftime("%Y%m%dT%H%M%SZ")
    signer._modify_request_before_signing(request)
    canonical = signer.canonical_request(request)
    signer._inject_signature_to_request(
        request, signer.signature(signer.string_to_sign(request, canonical), request)
    )
    prepared = request.prepare()
    data = tamper(body) if tamper else body
    return send(
        urllib.request.Request(  # noqa: S310 - loopback
            prepared.url, data=data or None, headers=dict(prepared.headers), method=method
        )
    )


def send(request: urllib.request.Request) -> tuple[int, dict[str, str], dict[str, Any]]:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def error_of(call: Callable[[], Any]) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value


def code(exc: ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


# --- the story ---------------------------------------------------------------------------------


def test_reference_commands_with_the_aws_cli_then_boto3_deploy_to_a_core(with_core: Served):
    """The reference's commands run with `aws --endpoint-url`; boto3 deploys to the core.

    The core then holds the secret, and the service logged the deployment starting and
    finishing.
    """
    served = with_core
    version = served.aws("--version")
    assert version.returncode == 0, version.stderr
    assert "aws-cli/1." in version.stdout + version.stderr
    arn = served.create_secret("greengrass-SomeSecret")
    label1 = served.put_value(arn, ["Label1"])
    label2 = served.put_value(arn, ["Label2"])

    # The reference's commands, verbatim but for the secret's ARN (a moto secret's) and the
    # endpoint; the function grant is verbatim too, naming "MyApiKey".
    resources = served.aws_json(
        "greengrass",
        "create-resource-definition",
        "--name",
        "MyGreengrassResources",
        "--initial-version",
        REFERENCE_RESOURCES.replace(REFERENCE_ARN, arn),
    )
    assert resources["Name"] == "MyGreengrassResources"
    assert resources["Arn"].startswith(
        f"arn:aws:greengrass:{TEST_REGION}:{ACCOUNT}:/greengrass/definition/resources/"
    )
    functions = served.aws_json(
        "greengrass",
        "create-function-definition",
        "--name",
        "MyGreengrassFunctions",
        "--initial-version",
        REFERENCE_FUNCTIONS,
    )
    assert functions["Name"] == "MyGreengrassFunctions"
    # Its function's code is neither published nor in (moto's) AWS Lambda: the service log
    # says so at once, since the API's answer has no field for a warning.
    missing = served.service.wait_for_event("cloud.function.code_missing")
    assert json.loads(REFERENCE_FUNCTIONS)["Functions"][0]["FunctionArn"] in missing["problem"]
    assert "edge cloud publish-function" in missing["problem"]
    shown = served.aws_json(
        "greengrass",
        "get-resource-definition-version",
        "--resource-definition-id",
        resources["Id"],
        "--resource-definition-version-id",
        resources["LatestVersion"],
    )
    assert shown["Definition"] == json.loads(REFERENCE_RESOURCES.replace(REFERENCE_ARN, arn))

    client = served.client()
    core_arn = served.core_definition(client)
    group = client.create_group(Name="MyGroup")
    # The reference's function grants "MyApiKey", which no resource of this group has.
    with pytest.raises(client.exceptions.BadRequestException) as refused:
        client.create_group_version(
            GroupId=group["Id"],
            CoreDefinitionVersionArn=core_arn,
            ResourceDefinitionVersionArn=resources["LatestVersionArn"],
            FunctionDefinitionVersionArn=functions["LatestVersionArn"],
        )
    assert '"MyApiKey" names no resource of the group' in str(refused.value)
    version_id = client.create_group_version(
        GroupId=group["Id"],
        CoreDefinitionVersionArn=core_arn,
        ResourceDefinitionVersionArn=resources["LatestVersionArn"],
    )["Version"]

    created = client.create_deployment(GroupId=group["Id"], DeploymentType="NewDeployment")
    deployment_id = created["DeploymentId"]
    assert created["DeploymentArn"].endswith(f"/groups/{group['Id']}/deployments/{deployment_id}")
    status = served.wait_status(client, group["Id"], deployment_id, "Success")
    assert status["DeploymentType"] == "NewDeployment"
    (listed, *_) = client.list_deployments(GroupId=group["Id"])["Deployments"]
    assert listed["DeploymentId"] == deployment_id
    assert listed["GroupArn"] == group["Arn"]

    listing = served.secrets_listing()
    assert listing["Deployment"]["DeploymentId"] == deployment_id
    assert listing["Deployment"]["GroupVersionId"] == version_id
    (secret,) = listing["Secrets"]
    assert secret["StagingLabels"]["Label1"] == label1
    assert secret["StagingLabels"]["Label2"] == label2
    assert "AWSCURRENT" in secret["StagingLabels"]

    for event in ("cloud.deployment.created", "cloud.deployment.started"):
        served.service.wait_for_event(event, deployment_id=deployment_id)
    served.service.wait_for_event("cloud.deployment.succeeded", deployment_id=deployment_id)
    # The AWS CLI reads the same status.
    assert (
        served.aws_json(
            "greengrass",
            "get-deployment-status",
            "--group-id",
            group["Id"],
            "--deployment-id",
            deployment_id,
        )["DeploymentStatus"]
        == "Success"
    )

    async def with_aiobotocore() -> list[str]:
        session = aiobotocore.session.get_session()
        async with session.create_client(
            "greengrass",
            region_name=TEST_REGION,
            endpoint_url=served.url,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=served.secret,
            config=NO_RETRIES,
        ) as aio:
            groups = await aio.list_groups()
            return [g["Id"] for g in groups["Groups"]]

    assert asyncio.run(with_aiobotocore()) == [group["Id"]]


def test_bad_requests_get_the_error_codes_the_sdks_expect(served: Served) -> None:
    """Missing fields, wrong types, unknown ids and broken rules get AWS's error codes.

    botocore raises its exception class for each, and the message says what is wrong.
    """
    client = served.client()
    lax = served.client(parameter_validation=False)

    missing = error_of(lax.create_group)
    assert isinstance(missing, lax.exceptions.BadRequestException)
    assert 'Missing required parameter in input: "Name"' in str(missing)
    wrong = error_of(lambda: lax.create_group(Name=5))
    assert isinstance(wrong, lax.exceptions.BadRequestException)
    assert "Invalid type for parameter Name" in str(wrong)
    status, headers, body = signed_request(
        served,
        "POST",
        "/greengrass/definition/resources",
        json.dumps({"InitialVersion": {"Resources": "nope"}}).encode(),
    )
    assert (status, headers["x-amzn-ErrorType"]) == (400, "BadRequestException")
    assert "Invalid type for parameter InitialVersion.Resources" in body["Message"]
    status, _, body = signed_request(
        served, "POST", "/greengrass/groups", b'{"Name": "a", "Name": "b"}'
    )
    assert status == 400
    assert "appears twice" in body["Message"]

    unknown = "0b7e2d4c-3a1f-4e5d-9c8b-7a6f5e4d3c2b"
    assert code(error_of(lambda: client.get_group(GroupId=unknown))) == (
        404,
        "IdNotFoundException",
    )
    definition = client.create_resource_definition(Name="empty")
    assert code(
        error_of(
            lambda: client.get_resource_definition_version(
                ResourceDefinitionId=definition["Id"], ResourceDefinitionVersionId=unknown
            )
        )
    ) == (404, "VersionNotFoundException")
    group = client.create_group(Name="g")
    assert code(
        error_of(lambda: client.get_deployment_status(GroupId=group["Id"], DeploymentId=unknown))
    ) == (404, "IdNotFoundException")
    assert code(error_of(lambda: client.list_deployments(GroupId=unknown)))[0] == 404

    # A version that breaks the model's rules, and a group version naming no stored version.
    bad_resource = error_of(
        lambda: client.create_resource_definition_version(
            ResourceDefinitionId=definition["Id"],
            Resources=[
                {
                    "Id": "r",
                    "Name": "r",
                    "ResourceDataContainer": {"SecretsManagerSecretResourceData": {"ARN": "x"}},
                }
            ],
        )
    )
    assert isinstance(bad_resource, client.exceptions.BadRequestException)
    assert "ARN" in str(bad_resource)
    gone = f"{definition['Arn']}/versions/{unknown}"
    no_version = error_of(
        lambda: client.create_group_version(GroupId=group["Id"], ResourceDefinitionVersionArn=gone)
    )
    assert isinstance(no_version, client.exceptions.BadRequestException)

    # Deployments: an unknown type, a Redeployment of nothing, a group with no version.
    assert isinstance(
        error_of(lambda: client.create_deployment(GroupId=group["Id"], DeploymentType="Bogus")),
        client.exceptions.BadRequestException,
    )
    redeploy = error_of(
        lambda: client.create_deployment(GroupId=group["Id"], DeploymentType="Redeployment")
    )
    assert "DeploymentId: is required for a Redeployment" in str(redeploy)
    assert "has no version yet" in str(
        error_of(
            lambda: client.create_deployment(GroupId=group["Id"], DeploymentType="NewDeployment")
        )
    )
    # Every operation edge implements is one of botocore's model (a typo would leave it
    # unreachable).
    assert set(HANDLERS) <= set(operation_names())
    missing = error_of(lambda: client.get_bulk_deployment_status(BulkDeploymentId="b"))
    assert code(missing) == (404, "IdNotFoundException")
    assert client.get_group(GroupId=group["Id"])["Name"] == "g"

    # The AWS CLI shows the same code, as it does for AWS.
    result = served.aws("greengrass", "get-group", "--group-id", unknown)
    assert result.returncode != 0
    assert "(IdNotFoundException) when calling the GetGroup operation" in result.stderr

    # List operations page with MaxResults/NextToken, as botocore's paginator drives them.
    for name in ("a", "b", "c"):
        client.create_group(Name=name)
    pages = client.get_paginator("list_groups").paginate(PaginationConfig={"PageSize": 2})
    names = [g["Name"] for page in pages for g in page["Groups"]]
    assert names == ["g", "a", "b", "c"]


def test_unsigned_and_wrongly_signed_requests_are_refused(served: Served) -> None:
    """Without a valid signature by a configured key, nothing can be read or changed."""
    client = served.client()
    group = client.create_group(Name="private")
    path = f"/greengrass/groups/{group['Id']}"

    # Plain HTTP, no signature at all.
    status, headers, body = send(urllib.request.Request(served.url + path))  # noqa: S310
    assert (status, headers["x-amzn-ErrorType"]) == (403, "MissingAuthenticationTokenException")
    assert body == {"Message": "Missing Authentication Token"}
    assert group["Id"] not in json.dumps(body)
    post = urllib.request.Request(  # noqa: S310 - loopback
        served.url + "/greengrass/groups", data=b'{"Name": "x"}', method="POST"
    )
    assert send(post)[0] == 403
    unsigned = served.client(signature_version=botocore.UNSIGNED)
    assert code(error_of(lambda: unsigned.get_group(GroupId=group["Id"]))) == (
        403,
        "MissingAuthenticationTokenException",
    )

    # Signed, but not by a key this service knows, or with the wrong secret.
    assert code(error_of(lambda: served.client(secret="wrong").list_groups())) == (
        403,
        "InvalidSignatureException",
    )
    stranger = served.client(key_id="AKIASTRANGER00000001")
    assert code(error_of(stranger.list_groups)) == (403, "UnrecognizedClientException")

    # A genuine signature over other bytes, or from ten minutes ago.
    status, headers, _ = signed_request(
        served,
        "POST",
        "/greengrass/groups",
        b'{"Name": "ok"}',
        tamper=lambda b: b.replace(b"ok", b"no"),
    )
    assert (status, headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    status, headers, body = signed_request(served, "GET", path, at=old)
    assert (status, headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")
    assert body["Message"].startswith("Signature expired")
    assert [g["Name"] for g in client.list_groups()["Groups"]] == ["private"]

    # The health endpoint needs no signature and tells nothing about groups.
    status, _, body = send(urllib.request.Request(served.url + "/health"))  # noqa: S310
    assert status == 200
    assert body == {"Status": "ok", "Database": "ok", "Mqtt": "connected"}


def test_slow_heads_and_unsigned_bodies_leave_signed_clients_answered(served: Served) -> None:
    """Half-sent requests and unsigned bodies can't keep signed clients or /health out.

    1,500 connections each send half a request head (three times the connection cap):
    meanwhile a signed client creates and lists groups and /health answers, the service never
    holds more descriptors than its cap allows, and it closes every half-sent request itself.
    Then 200 unsigned 2 MiB bodies are each refused with 403 without being read, signed calls
    succeed throughout, and once they are closed the service's memory is back within 32 MiB of
    where it started (it held none of the bodies).
    """
    assert served.service.proc is not None
    pid = served.service.proc.pid
    port = int(served.url.rsplit(":", 1)[1])
    client = served.client()
    client.create_group(Name="before")
    cap = connection_cap()

    socks = half_heads(port, 1500)
    try:
        client.create_group(Name="during-heads")
        assert [g["Name"] for g in client.list_groups()["Groups"]] == ["before", "during-heads"]
        status, _, body = send(urllib.request.Request(served.url + "/health"))  # noqa: S310
        assert (status, body["Status"]) == (200, "ok")
        assert open_fds(pid) <= cap + RESERVED_DESCRIPTORS
    finally:
        closed = wait_closed(socks, timeout=60)
    assert closed == len(socks), "the service must close half-sent requests on its own"

    rss_before = vm_rss_kib(pid)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        flood = pool.submit(unsigned_bodies, port, 200, 2 * 1024 * 1024, 50)
        calls = 0
        while not flood.done() or calls < 3:
            client.list_groups()
            calls += 1
        outcomes = flood.result()
    # Each is answered 403 before its body is read; a client still sending when the service
    # closes may see the reset before the answer.
    assert set(outcomes) <= {"HTTP/1.1 403 Forbidden", "reset", "closed"}, outcomes
    assert outcomes["HTTP/1.1 403 Forbidden"] >= 100, outcomes
    rss_after = vm_rss_kib(pid)
    assert rss_after - rss_before < 32 * 1024, (rss_before, rss_after)
    client.create_group(Name="after")
    status, _, _ = send(urllib.request.Request(served.url + "/health"))  # noqa: S310
    assert status == 200


def test_a_replayed_signed_request_is_refused_and_changes_nothing(served: Served) -> None:
    """The same signed state-changing request is applied once; a retry after a failure passes.

    A CreateDeployment refused (the group has no version yet) passes when sent again,
    unchanged, once the group has a version; sent a third time it is refused with 403
    InvalidSignatureException "Signature has already been used". Replaying the deployment of
    an older group version after a newer one was deployed is refused too: nothing rolls back.
    """
    client = served.client()
    group = client.create_group(Name="replayed")
    deploy = f"/greengrass/groups/{group['Id']}/deployments"
    # Two minutes ago (still valid): boto3's own calls below can't sign the same bytes.
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)

    def first_deployment() -> tuple[int, dict[str, str], dict[str, Any]]:
        body = json.dumps({"DeploymentType": "NewDeployment"}).encode()
        return signed_request(served, "POST", deploy, body, at=moment)

    status, headers, body = first_deployment()
    assert (status, headers["x-amzn-ErrorType"]) == (400, "BadRequestException")
    assert "has no version yet" in body["Message"]
    served.thing = "replay-core"  # no core runs: a deployment is answered once published
    core_arn = served.core_definition(client)
    old_version = client.create_group_version(
        GroupId=group["Id"], CoreDefinitionVersionArn=core_arn
    )
    status, _, created = first_deployment()
    assert status == 200, created
    status, headers, body = first_deployment()
    assert (status, headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")
    assert body["Message"].startswith("Signature has already been used")

    # A deployment of the old version, signed now; then a newer version is deployed.
    pinned = json.dumps(
        {"DeploymentType": "NewDeployment", "GroupVersionId": old_version["Version"]}
    ).encode()
    status, _, _ = signed_request(served, "POST", deploy, pinned, at=moment)
    assert status == 200
    # The same call as the first version's, maybe in the same second, so signed the same: its
    # own client token (a signed header) makes it another request.
    new_version = client.create_group_version(
        GroupId=group["Id"], CoreDefinitionVersionArn=core_arn, AmznClientToken="second"
    )
    latest = client.create_deployment(GroupId=group["Id"], DeploymentType="NewDeployment")
    status, headers, _ = signed_request(served, "POST", deploy, pinned, at=moment)
    assert (status, headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")
    listed = client.list_deployments(GroupId=group["Id"])["Deployments"]
    assert len(listed) == 3
    assert listed[0]["DeploymentId"] == latest["DeploymentId"]
    assert client.get_group(GroupId=group["Id"])["LatestVersion"] == new_version["Version"]

    # The same for a create: the group exists once. A read may be repeated freely.
    named = json.dumps({"Name": "once"}).encode()
    assert signed_request(served, "POST", "/greengrass/groups", named, at=moment)[0] == 200
    assert signed_request(served, "POST", "/greengrass/groups", named, at=moment)[0] == 403
    for _ in range(2):
        assert signed_request(served, "GET", "/greengrass/groups", at=moment)[0] == 200
    names = [g["Name"] for g in client.list_groups()["Groups"]]
    assert names.count("once") == 1
    served.service.wait_for_event("cloud.api.refused", error="InvalidSignatureException")


def test_bad_names_and_text_that_is_not_unicode_are_refused(served: Served) -> None:
    """A lone surrogate, NUL or 100,000 characters in a name gets a 400 naming the rule.

    Raw JSON escapes reach the service as sent; a header whose bytes aren't UTF-8 gets a 400
    too. Nothing is created, and the service's log holds no traceback (checked at teardown).
    The CLI refuses the same names.
    """
    cases = [
        (b'{"Name": "\\ud800"}', "Name: holds a lone UTF-16 surrogate"),
        (
            json.dumps({"Name": "a\u0000b"}).encode(),
            "Name: character 2 is U+0000, a control character",
        ),
        (
            json.dumps({"Name": "x" * 100_000}).encode(),
            "Name: must be at most 128 characters, not 100000",
        ),
        (json.dumps({"Name": "tab\there"}).encode(), "Name: character 4 is U+0009"),
    ]
    for path in ("/greengrass/groups", "/greengrass/definition/resources"):
        for body, message in cases:
            status, headers, answer = signed_request(served, "POST", path, body)
            assert (status, headers["x-amzn-ErrorType"]) == (400, "BadRequestException"), answer
            assert message in answer["Message"]
    status, headers, answer = signed_request(
        served, "GET", "/greengrass/groups", headers={"X-Amzn-Client-Token": "caf\xe9"}
    )
    assert (status, headers["x-amzn-ErrorType"]) == (400, "BadRequestException"), answer
    assert answer["Message"] == "header X-Amzn-Client-Token is not UTF-8 text"
    # Bytes that aren't UTF-8 in the request line: aiohttp's own 400, with nothing logged.
    port = int(served.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /greengrass/groups/\xff HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.0 400 ")
    client = served.client()
    assert client.list_groups()["Groups"] == []
    assert client.list_resource_definitions()["Definitions"] == []
    # Printable text of any script, with spaces, up to 128 characters, is a name.
    assert client.create_group(Name="Zone B — 温室 2")["Name"] == "Zone B — 温室 2"
    assert client.create_group(Name="n" * 128)["Name"] == "n" * 128
    result = served.cloud("create-group", "--name", "y" * 200)
    assert result.returncode == 2
    assert "--name: must be at most 128 characters, not 200" in result.stderr


def test_cli_and_service_share_one_database_at_once(with_core: Served) -> None:
    """`edge cloud` commands and API calls interleave safely on one database.

    A deployment made by the CLI is followed by the service, and one made through the API is
    seen by the CLI.
    """
    served = with_core
    client = served.client()
    errors: list[BaseException] = []
    api_ids: list[str] = []
    cli_ids: list[str] = []

    def through_api(index: int) -> None:
        try:
            api_ids.append(client.create_resource_definition(Name=f"api-{index}")["Id"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def through_cli(index: int) -> None:
        result = served.cloud("create-resource-definition", "--name", f"cli-{index}")
        if result.returncode != 0:
            errors.append(AssertionError(result.stderr))
        else:
            cli_ids.append(json.loads(result.stdout)["Id"])

    threads = [threading.Thread(target=through_api, args=(i,)) for i in range(6)]
    threads += [threading.Thread(target=through_cli, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    via_api = {d["Id"] for d in client.list_resource_definitions()["Definitions"]}
    listed = served.cloud("list-resource-definitions")
    via_cli = {d["Id"] for d in json.loads(listed.stdout)["Definitions"]}
    assert via_api == via_cli == set(api_ids) | set(cli_ids)
    assert len(via_api) == 9

    arn = served.create_secret("shared-db")
    resources = client.create_resource_definition(
        Name="r",
        InitialVersion={
            "Resources": [
                {
                    "Id": "shared",
                    "Name": "shared",
                    "ResourceDataContainer": {"SecretsManagerSecretResourceData": {"ARN": arn}},
                }
            ]
        },
    )
    core_arn = served.core_definition(client)
    result = served.cloud("create-group", "--name", "mixed")
    group_id = json.loads(result.stdout)["Id"]
    client.create_group_version(
        GroupId=group_id,
        CoreDefinitionVersionArn=core_arn,
        ResourceDefinitionVersionArn=resources["LatestVersionArn"],
    )

    # Deployed by the CLI (not waiting): the service's follower records its outcome.
    result = served.cloud(
        "create-deployment", "--group-id", group_id, "--deployment-type", "NewDeployment"
    )
    assert result.returncode == 0, result.stderr
    by_cli = json.loads(result.stdout)["DeploymentId"]
    served.wait_status(client, group_id, by_cli, "Success")
    served.service.wait_for_event("cloud.deployment.succeeded", deployment_id=by_cli)

    # Deployed through the API: the CLI reads the same record.
    by_api = client.create_deployment(
        GroupId=group_id, DeploymentType="Redeployment", DeploymentId=by_cli
    )["DeploymentId"]
    served.wait_status(client, group_id, by_api, "Success")
    status = served.cloud(
        "get-deployment-status", "--group-id", group_id, "--deployment-id", by_api
    )
    assert json.loads(status.stdout)["DeploymentStatus"] == "Success"
    assert json.loads(status.stdout)["DeploymentType"] == "Redeployment"
    listed = served.cloud("list-deployments", "--group-id", group_id)
    assert [d["DeploymentId"] for d in json.loads(listed.stdout)["Deployments"]] == [
        by_api,
        by_cli,
    ]
    assert served.secrets_listing()["Deployment"]["DeploymentId"] == by_api


def test_tls_and_refusals_at_start(tmp_path: Path, broker: Mosquitto, moto: MotoServer) -> None:
    """With tls_cert_file/tls_key_file the API is HTTPS only; bad keys refuse to start.

    A service with no key, or with a secret file others can read, exits 2 saying so; SIGINT
    stops a running one with status 0.
    """
    port = free_port()
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    cert_path, key_path = self_signed(tls_dir)
    config = write_serve_config(
        tmp_path,
        broker=broker,
        moto=moto,
        port=port,
        tls=f'tls_cert_file = "{cert_path}"\ntls_key_file = "{key_path}"',
    )
    secret_file = tmp_path / "operator.secret"
    secret = secrets.token_urlsafe(30)
    secret_file.write_text(secret)
    secret_file.chmod(0o640)
    assert edge_cli("cloud", "--config", str(config), "init").returncode == 0

    refused = edge_cli("cloud", "--config", str(config), "serve")
    assert refused.returncode == 2
    assert "chmod 0600" in refused.stderr
    assert secret not in refused.stderr + refused.stdout
    secret_file.chmod(0o600)
    no_keys = tmp_path / "nokeys.toml"
    no_keys.write_text(
        config.read_text().split("[cloud.auth]")[0]
        + "[mqtt]"
        + config.read_text().split("[mqtt]")[1]
    )
    result = edge_cli("cloud", "--config", str(no_keys), "serve")
    assert result.returncode == 2
    assert "cloud.auth.keys: lists no access key" in result.stderr

    service = start_service(tmp_path, config, port, scheme="https")
    try:
        client = boto3.client(
            "greengrass",
            region_name=TEST_REGION,
            endpoint_url=f"https://127.0.0.1:{port}",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=secret,
            verify=str(cert_path),
            config=NO_RETRIES,
        )
        assert client.list_groups()["Groups"] == []
        context = ssl.create_default_context(cafile=str(cert_path))
        health = urllib.request.urlopen(
            f"https://127.0.0.1:{port}/health", timeout=10, context=context
        )
        assert json.loads(health.read())["Database"] == "ok"
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        assert service.stop(signal.SIGINT) == 0
    assert "cloud.serve.stopped" in service.log_text()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path
