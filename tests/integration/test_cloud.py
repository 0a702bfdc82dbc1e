"""The control plane end to end: `edge cloud` processes, a real `edge run` core, Mosquitto, moto."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.fixtures.core import CoreProcess, Operator, edge_cli, write_config
from edge.fixtures.reference import REFERENCE_ARN, REFERENCE_FUNCTIONS, REFERENCE_RESOURCES
from edge.fixtures.services import AWS_TEST_ENV, TEST_REGION, Mosquitto, MotoServer
from edge.signing import load_signing_key, seal
from tests.support import REPO
from tests.support.controlplane import dump_tables, open_configured
from tests.support.functions import build_package

pytestmark = pytest.mark.network
#: `edge cloud` without a server is the embedded path: SQLite, the default (see
#: `cloud_database`). The reference story's statements are the same on PostgreSQL, where
#: test_cloud_loggers runs `create-deployment --wait` against a core, the served API's tests
#: deploy, reset and list, and tests/unit/test_cloud_status_record records failures; concurrent
#: commands, where the engine's locking decides, run on both.
CLOUD_ENGINE = "sqlite"

ACCOUNT = "123456789012"

# The reference document's command, verbatim but for the secret's ARN (a moto secret's): the
# demo deploys the same text.
REFERENCE_INITIAL_VERSION = REFERENCE_RESOURCES


def write_cloud_config(
    path: Path, *, broker: Mosquitto, moto: MotoServer, database: str = "cloud/edge-cloud.db"
) -> Path:
    """A control-plane config against the test's broker and moto (Secrets Manager and S3)."""
    path.write_text(
        f"""
[cloud]
database = "{database}"
signing_key = "cloud/signing.pem"
artifact_bucket = "edge-artifacts"
account_id = "{ACCOUNT}"

[mqtt]
url = "{broker.url}"

[aws]
region = "{TEST_REGION}"
endpoint_url = "{moto.url}"
"""
    )
    return path


@dataclass
class Cloud:
    """One test's control plane, core and secrets."""

    root: Path
    config: Path
    thing: str
    core_config: Path
    core: CoreProcess
    sm: Any
    broker: Mosquitto
    #: `[cloud] database`, as the config says it.
    database: str
    values: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = edge_cli("cloud", "--config", str(self.config), *args)
        self.output.append(result.stdout + result.stderr)
        if check:
            assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        return result

    def json(self, *args: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.run(*args).stdout)
        return out

    @property
    def store(self) -> Path:
        return self.root / "state" / "secrets.store"

    def listing(self) -> dict[str, Any]:
        result = edge_cli("secrets", "list", "--config", str(self.core_config), "--json")
        assert result.returncode == 0, result.stderr
        self.output.append(result.stdout + result.stderr)
        out: dict[str, Any] = json.loads(result.stdout)
        return out

    def create_secret(self, name: str) -> tuple[str, str]:
        value = f"pw-{secrets.token_urlsafe(18)}"
        resp = self.sm.create_secret(Name=name, SecretString=value)
        self.values.append(value)
        return resp["ARN"], resp["VersionId"]

    def put_value(self, arn: str, stages: list[str] | None = None) -> str:
        value = f"v-{secrets.token_urlsafe(18)}"
        kwargs: dict[str, Any] = {"SecretId": arn, "SecretString": value}
        if stages is not None:
            kwargs["VersionStages"] = stages
        self.values.append(value)
        version_id: str = self.sm.put_secret_value(**kwargs)["VersionId"]
        return version_id

    def core_definition(self) -> str:
        """A core definition naming this test's core; return its version ARN."""
        core = {
            "Cores": [
                {
                    "Id": "core-1",
                    "ThingArn": f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:thing/{self.thing}",
                    "CertificateArn": f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:cert/abc123",
                    "SyncShadow": False,
                }
            ]
        }
        created = self.json(
            "create-core-definition", "--name", "core", "--initial-version", json.dumps(core)
        )
        return str(created["LatestVersionArn"])

    def group(self, *, as_reference: bool = False, **arns: str) -> tuple[str, str]:
        """Create a group with one version; return (group id, version id).

        `arns` are definition version ARNs by kind (core=..., resource=...), as for
        `group_version`. One create-group with an initial version; `as_reference`: create-group,
        then create-group-version, as the reference commands do.
        """
        if as_reference:
            group_id = self.json("create-group", "--name", "g")["Id"]
            return group_id, self.group_version(group_id, **arns)
        initial = {f"{key.capitalize()}DefinitionVersionArn": arn for key, arn in arns.items()}
        created = self.json("create-group", "--name", "g", "--initial-version", json.dumps(initial))
        return str(created["Id"]), str(created["LatestVersion"])

    def group_version(self, group_id: str, **arns: str) -> str:
        args = ["create-group-version", "--group-id", group_id]
        for key, arn in arns.items():
            args += [f"--{key}-definition-version-arn", arn]
        return str(self.json(*args)["Version"])

    def deploy(self, group_id: str, *extra: str, wait: bool = True) -> tuple[str, Any]:
        args = ["create-deployment", "--group-id", group_id, *extra]
        if "--deployment-type" not in extra:
            args += ["--deployment-type", "NewDeployment"]
        if wait:
            args += ["--wait", "--timeout", "60"]
        result = self.run(*args, check=False)
        return json.loads(result.stdout)["DeploymentId"], result

    def status(self, group_id: str, deployment_id: str) -> dict[str, Any]:
        return self.json(
            "get-deployment-status", "--group-id", group_id, "--deployment-id", deployment_id
        )

    def envelope(self, deployment_id: str) -> bytes:
        with open_configured(self.config) as db, db.read() as conn:
            envelope = conn.execute(
                "SELECT envelope FROM deployments WHERE id = :id", {"id": deployment_id}
            ).scalar()
        return bytes(envelope)


@pytest.fixture
def cloud(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any, cloud_database: str
) -> Iterator[Cloud]:
    """A control plane (initialised), and a core that trusts its key, running and connected."""
    config = write_cloud_config(
        tmp_path / "cloud.toml", broker=broker, moto=moto, database=cloud_database
    )
    init = edge_cli("cloud", "--config", str(config), "init")
    assert init.returncode == 0, init.stderr
    public_key = Path(init.stdout.strip())
    thing = f"core-{uuid.uuid4().hex[:8]}"
    core_config = write_config(
        tmp_path / "core.toml",
        thing_name=thing,
        mqtt_url=broker.url,
        endpoint_url=moto.url,
        deployments=f'trusted_keys = ["{public_key}"]',
    )
    assert edge_cli("init", "--config", str(core_config)).returncode == 0
    core = CoreProcess(config=core_config, log_path=tmp_path / "core.log")
    env = Cloud(tmp_path, config, thing, core_config, core, sm, broker, cloud_database)
    core.start()
    core.wait_for_event("mqtt.connected")
    yield env
    if core.proc is not None:
        core.stop()
    output = core.log_text() + "".join(env.output)
    for value in env.values:
        assert value not in output, "a secret value leaked into the logs or CLI output"
    with open_configured(config) as db:
        dump = repr(dump_tables(db))
    for value in env.values:
        assert value not in dump, "a secret value reached the control plane's database"


def test_reference_commands_deploy_rotate_fail_and_remove(cloud: Cloud) -> None:
    """The reference commands deploy to a real core; rotation, deletion and removal follow."""
    arn, _ = cloud.create_secret("greengrass-SomeSecret")
    label1 = cloud.put_value(arn, ["Label1"])
    label2 = cloud.put_value(arn, ["Label2"])
    current = cloud.put_value(arn)  # the newest version is AWSCURRENT
    resources = cloud.json(
        "create-resource-definition",
        "--name",
        "MyGreengrassResources",
        "--initial-version",
        REFERENCE_INITIAL_VERSION.replace(REFERENCE_ARN, arn),
    )
    assert resources["Name"] == "MyGreengrassResources"
    assert resources["Arn"].startswith(
        f"arn:aws:greengrass:{TEST_REGION}:{ACCOUNT}:/greengrass/definition/resources/"
    )
    core_arn = cloud.core_definition()
    group_id, version_id = cloud.group(
        core=core_arn, resource=resources["LatestVersionArn"], as_reference=True
    )

    first, result = cloud.deploy(group_id)
    assert result.returncode == 0, result.stderr
    assert f"deployment {first}: InProgress" in result.stderr
    assert f"deployment {first}: Success" in result.stderr
    status = cloud.status(group_id, first)
    assert status["DeploymentStatus"] == "Success"
    assert status["DeploymentType"] == "NewDeployment"
    listing = cloud.listing()
    assert listing["Deployment"]["DeploymentId"] == first
    assert listing["Deployment"]["GroupVersionId"] == version_id
    (secret,) = listing["Secrets"]
    assert secret["StagingLabels"] == {"AWSCURRENT": current, "Label1": label1, "Label2": label2}

    # Rotate, then redeploy without --wait: get-deployment-status reads the retained report.
    rotated = cloud.put_value(arn)
    second, result = cloud.deploy(
        group_id, "--deployment-type", "Redeployment", "--deployment-id", first, wait=False
    )
    assert result.returncode == 0, result.stderr
    assert second != first
    cloud.core.wait_for_event("deploy.complete", deployment_id=second)
    assert cloud.status(group_id, second)["DeploymentStatus"] == "Success"
    assert cloud.listing()["Secrets"][0]["StagingLabels"]["AWSCURRENT"] == rotated

    # Delete the secret: Failure, with the message, and the store stays as it was.
    before = cloud.store.read_bytes()
    cloud.sm.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    third, result = cloud.deploy(group_id)
    assert result.returncode == 1
    assert "can't be found" in result.stderr
    failed = cloud.status(group_id, third)
    assert failed["DeploymentStatus"] == "Failure"
    assert arn in failed["ErrorMessage"]
    assert "can't be found" in failed["ErrorMessage"]
    # ErrorDetails, as AWS answers it: the kind of failure and the same message.
    assert failed["ErrorDetails"] == [
        {"DetailedErrorCode": "SecretNotFoundError", "DetailedErrorMessage": failed["ErrorMessage"]}
    ]
    assert cloud.store.read_bytes() == before

    # Remove the resource from the group: deployed, it is gone from the core.
    emptied = cloud.json(
        "create-resource-definition-version",
        "--resource-definition-id",
        resources["Id"],
        "--resources",
        "[]",
    )
    cloud.group_version(group_id, core=core_arn, resource=emptied["Arn"])
    fourth, result = cloud.deploy(group_id)
    assert result.returncode == 0, result.stderr
    assert cloud.listing()["Secrets"] == []

    reset = cloud.json("reset-deployments", "--group-id", group_id, "--wait", "--timeout", "60")[
        "DeploymentId"
    ]
    assert cloud.listing()["Deployment"]["DeploymentType"] == "ResetDeployment"

    listed = cloud.json("list-deployments", "--group-id", group_id)["Deployments"]
    assert [d["DeploymentId"] for d in listed] == [reset, fourth, third, second, first]
    assert [d["DeploymentType"] for d in listed[1:4]] == [
        "NewDeployment",
        "NewDeployment",
        "Redeployment",
    ]


def _deployed_group(cloud: Cloud) -> tuple[str, str]:
    """A group with one secret, deployed with Success; return (group id, deployment id)."""
    arn, _ = cloud.create_secret(f"s-{uuid.uuid4().hex[:6]}")
    resources = {
        "Resources": [
            {
                "Id": "r1",
                "Name": "r1",
                "ResourceDataContainer": {"SecretsManagerSecretResourceData": {"ARN": arn}},
            }
        ]
    }
    res = cloud.json("create-resource-definition", "--initial-version", json.dumps(resources))
    group_id, _ = cloud.group(core=cloud.core_definition(), resource=res["LatestVersionArn"])
    dep, result = cloud.deploy(group_id)
    assert result.returncode == 0, result.stderr
    return group_id, dep


def _rejected(cloud: Cloud, payload: bytes, event: str) -> dict[str, Any]:
    """Publish a payload to the core; wait for its rejection; the store must not change."""
    before = cloud.store.read_bytes()
    seen = cloud.core.count(event)
    operator = Operator(port=cloud.broker.port, prefix="edge", thing=cloud.thing)
    operator.connect()
    try:
        operator.publish_raw(payload)
        found = cloud.core.wait_for_event(event, after=seen)
    finally:
        operator.close()
    assert cloud.store.read_bytes() == before
    return found


def test_forged_tampered_unsigned_misaddressed_and_replayed_documents_change_nothing(
    cloud: Cloud,
) -> None:
    """Each bad document is logged as rejected and leaves the store byte-for-byte unchanged."""
    group_id, first = _deployed_group(cloud)
    envelope = json.loads(cloud.envelope(first))
    document = json.loads(base64.b64decode(envelope["Document"]))
    document["DeploymentId"] = str(uuid.uuid4())
    document["CreatedAt"] = "2099-01-01T00:00:00Z"
    doc_bytes = json.dumps(document).encode()

    forged = seal(doc_bytes, signing_key=Ed25519PrivateKey.generate(), thing_name=cloud.thing)
    event = _rejected(cloud, forged, "deploy.signature_rejected")
    assert "not in [deployments] trusted_keys" in event["error"]

    tampered = dict(envelope, Document=base64.b64encode(doc_bytes).decode())
    event = _rejected(cloud, json.dumps(tampered).encode(), "deploy.signature_rejected")
    assert "does not verify" in event["error"]

    event = _rejected(cloud, doc_bytes, "deploy.signature_rejected")
    assert "not signed" in event["error"]

    key = load_signing_key(cloud.root / "cloud" / "signing.pem")
    elsewhere = seal(doc_bytes, signing_key=key, thing_name="another-core")
    event = _rejected(cloud, elsewhere, "deploy.signature_rejected")
    assert "signed for thing 'another-core'" in event["error"]

    second, result = cloud.deploy(group_id)
    assert result.returncode == 0, result.stderr
    event = _rejected(cloud, cloud.envelope(first), "deploy.replay_rejected")
    assert event["deployment_id"] == first
    assert cloud.listing()["Deployment"]["DeploymentId"] == second
    assert cloud.core.count("deploy.started") == 2


def _reference_function_group(cloud: Cloud, secret_arn: str) -> str:
    """A group of the reference function and a `MyApiKey` resource on the secret; its id."""
    resource = {
        "Resources": [
            {
                "Id": "MyApiKey",
                "Name": "MyApiKey",
                "ResourceDataContainer": {"SecretsManagerSecretResourceData": {"ARN": secret_arn}},
            }
        ]
    }
    res = cloud.json("create-resource-definition", "--initial-version", json.dumps(resource))
    fns = cloud.json(
        "create-function-definition",
        "--name",
        "MyGreengrassFunctions",
        "--initial-version",
        REFERENCE_FUNCTIONS,
    )
    group_id, _ = cloud.group(
        resource=res["LatestVersionArn"],
        function=fns["LatestVersionArn"],
        core=cloud.core_definition(),
    )
    return group_id


def test_publish_function_stores_the_zip_and_deployments_carry_its_code(
    cloud: Cloud, moto: MotoServer
) -> None:
    """publish-function puts the zip in S3 by digest; the signed document names it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def function_handler(event, context):\n    return event\n")
    package = cloud.root / "app.zip"
    package.write_bytes(buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    function_arn = "arn:aws:lambda:us-west-2:123456789012:function:myFunction:1"
    published = cloud.json(
        "publish-function",
        "--function-arn",
        function_arn,
        "--zip-file",
        f"fileb://{package}",
        "--handler",
        "app.function_handler",
    )
    uri = f"s3://edge-artifacts/functions/{digest}.zip"
    assert published["Code"] == {"Uri": uri, "Sha256": digest}
    s3 = boto3.client("s3", region_name=TEST_REGION, endpoint_url=moto.url)
    stored = s3.get_object(Bucket="edge-artifacts", Key=f"functions/{digest}.zip")["Body"].read()
    assert stored == buffer.getvalue()

    arn, _ = cloud.create_secret("api-key")
    group_id = _reference_function_group(cloud, arn)
    # Only the document is inspected here: running the function is the workers' business.
    cloud.core.stop()
    dep, result = cloud.deploy(group_id, wait=False)
    assert result.returncode == 0, result.stderr
    envelope = json.loads(cloud.envelope(dep))
    document = json.loads(base64.b64decode(envelope["Document"]))
    (function,) = document["Group"]["Functions"]
    assert function["FunctionConfiguration"]["Handler"] == "app.function_handler"
    assert function["FunctionConfiguration"]["Code"] == {"Uri": uri, "Sha256": digest}
    assert function["FunctionConfiguration"]["MemorySize"] == 16384
    assert envelope["ThingName"] == cloud.thing


@pytest.mark.parametrize("cloud_database", ["sqlite", "postgresql"], indirect=True)
def test_concurrent_commands_each_get_their_own_version(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, cloud_database: str
) -> None:
    """Eight `edge cloud` processes adding versions at once all succeed with distinct versions."""
    config = write_cloud_config(
        tmp_path / "cloud.toml", broker=broker, moto=moto, database=cloud_database
    )
    created = edge_cli("cloud", "--config", str(config), "create-resource-definition")
    assert created.returncode == 0, created.stderr
    definition_id = json.loads(created.stdout)["Id"]
    env = {**os.environ, **AWS_TEST_ENV}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge",
                "cloud",
                "--config",
                str(config),
                "create-resource-definition-version",
                "--resource-definition-id",
                definition_id,
                "--resources",
                "[]",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        for _ in range(8)
    ]
    results = [(p.wait(60), *p.communicate()) for p in procs]
    assert all(code == 0 for code, _, _ in results), [err for _, _, err in results]
    versions = {json.loads(out)["Version"] for _, out, _ in results}
    assert len(versions) == 8
    listed = edge_cli(
        "cloud",
        "--config",
        str(config),
        "list-resource-definition-versions",
        "--resource-definition-id",
        definition_id,
    )
    assert {v["Version"] for v in json.loads(listed.stdout)["Versions"]} == versions


def test_function_granted_by_the_definition_reads_rotated_and_kept_values(cloud: Cloud) -> None:
    """A deployed function reads its secret, then the rotated one, then keeps the last value."""
    package, _ = build_package(cloud.root / "app.zip")
    function_arn = "arn:aws:lambda:us-west-2:123456789012:function:myFunction:1"
    cloud.json(
        "publish-function",
        "--function-arn",
        function_arn,
        "--zip-file",
        f"fileb://{package}",
        "--handler",
        "app.function_handler",
    )
    arn, _ = cloud.create_secret("greengrass-MySecret-abc")
    value = cloud.values[-1]
    group_id = _reference_function_group(cloud, arn)

    def read() -> dict[str, Any]:
        result = edge_cli(
            "invoke",
            "--config",
            str(cloud.core_config),
            "--function-arn",
            function_arn,
            "--payload",
            json.dumps({"SecretId": "greengrass-MySecret-abc"}),
        )
        assert result.returncode == 0, result.stderr
        answer: dict[str, Any] = json.loads(result.stdout)
        return answer

    first, result = cloud.deploy(group_id)
    assert result.returncode == 0, result.stderr
    assert read()["SecretString"] == value

    rotated_version = cloud.put_value(arn)
    rotated = cloud.values[-1]
    _, result = cloud.deploy(
        group_id, "--deployment-type", "Redeployment", "--deployment-id", first
    )
    assert result.returncode == 0, result.stderr
    answer = read()
    assert (answer["SecretString"], answer["VersionId"]) == (rotated, rotated_version)

    cloud.sm.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    _, result = cloud.deploy(group_id)
    assert result.returncode == 1
    assert "can't be found" in result.stderr
    assert read()["SecretString"] == rotated
