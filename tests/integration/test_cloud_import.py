"""`edge cloud import-greengrass` end to end: a V1 account in moto, the AWS CLI, a real core.

The account lives in moto's Greengrass V1 backend (`edge.fixtures.moto_greengrass`: moto's
server with AWS's form of Greengrass ARNs, and connector and logger definitions), built with
boto3 as a V1 user's would be. The import runs as the real CLI; what it stored is read back
with the official AWS CLI from `edge cloud serve`, and a real `edge run` core deploys an
imported group. Retrying is seen through the reader itself, in front of a proxy that answers
with throttling (`bench.latency_proxy`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from bench.latency_proxy import LatencyProxy
from edge.cloud.config import load_cloud_config
from edge.cloud.v1import.reader import FIRST_CONTACT_ATTEMPTS, read_account
from edge.fixtures.core import CoreProcess, edge_cli, write_config
from edge.fixtures.services import (
    AWS_TEST_ENV,
    TEST_REGION,
    Mosquitto,
    MotoServer,
    free_port,
    run_moto,
)
from tests.integration.test_cloud_serve import KEY_ID, start_service, write_serve_config
from tests.support.controlplane import open_configured
from tests.support.functions import build_package

pytestmark = pytest.mark.network

ACCOUNT = "123456789012"
CERT = f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:cert/"
TWILIO = f"arn:aws:greengrass:{TEST_REGION}::/connectors/TwilioNotifications/versions/4"


@pytest.fixture(scope="module")
def v1_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """This module's own moto server, holding the V1 account (and its Secrets Manager and S3)."""
    log = tmp_path_factory.mktemp("moto-v1") / "moto.log"
    with run_moto(log, module="edge.fixtures.moto_greengrass") as server:
        yield server


@pytest.fixture
def v1(v1_server: MotoServer) -> MotoServer:
    """The V1 server, emptied for this test."""
    v1_server.reset()
    return v1_server


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:{TEST_REGION}:{ACCOUNT}:function:{name}:1"


def secret_resource(rid: str, arn: str) -> dict[str, Any]:
    return {
        "Id": rid,
        "Name": rid,
        "ResourceDataContainer": {"SecretsManagerSecretResourceData": {"ARN": arn}},
    }


def function(name: str, grants: dict[str, str]) -> dict[str, Any]:
    return {
        "Id": name,
        "FunctionArn": function_arn(name),
        "FunctionConfiguration": {
            "Executable": "app.function_handler",
            "MemorySize": 16384,
            "Pinned": False,
            "Timeout": 10,
            "Environment": {
                "Variables": {"STAGE": "prod"},
                "ResourceAccessPolicies": [
                    {"ResourceId": rid, "Permission": perm} for rid, perm in grants.items()
                ],
            },
        },
    }


def subscription(sid: str, source: str, target: str, subject: str) -> dict[str, Any]:
    return {"Id": sid, "Source": source, "Target": target, "Subject": subject}


@dataclass
class Account:
    """The V1 account a test built: groups by name, and the secret values (for leak checks)."""

    gg: Any
    groups: dict[str, str] = field(default_factory=dict)
    values: list[str] = field(default_factory=list)


def core_version(gg: Any, definition_id: str | None, thing: str, cert: str) -> tuple[str, str]:
    cores = {
        "Cores": [
            {
                "Id": "core",
                "ThingArn": f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:thing/{thing}",
                "CertificateArn": CERT + cert,
                "SyncShadow": False,
            }
        ]
    }
    if definition_id is None:
        created = gg.create_core_definition(Name=f"{thing}-core", InitialVersion=cores)
        return created["Id"], created["LatestVersionArn"]
    return definition_id, gg.create_core_definition_version(
        CoreDefinitionId=definition_id, **cores
    )["Arn"]


def build_account(v1: MotoServer, thing: str) -> Account:
    """Three groups with secrets, functions, subscriptions, a device and a volume; versions."""
    gg = boto3.client("greengrass", region_name=TEST_REGION, endpoint_url=v1.url)
    sm = boto3.client("secretsmanager", region_name=TEST_REGION, endpoint_url=v1.url)
    account = Account(gg)

    def secret(name: str) -> str:
        value = f"pw-{secrets.token_urlsafe(18)}"
        account.values.append(value)
        return str(sm.create_secret(Name=name, SecretString=value)["ARN"])

    # Kitchen: deployed to the test's core; every definition has two versions, the group three.
    api_key, db_password = secret("kitchen-api-key"), secret("kitchen-db-password")
    core_id, core_1 = core_version(gg, None, thing, "kitchen-1")
    _, core_2 = core_version(gg, core_id, thing, "kitchen-2")
    res = gg.create_resource_definition(
        Name="kitchen-secrets", InitialVersion={"Resources": [secret_resource("ApiKey", api_key)]}
    )
    res_2 = gg.create_resource_definition_version(
        ResourceDefinitionId=res["Id"],
        Resources=[secret_resource("ApiKey", api_key), secret_resource("DbPassword", db_password)],
    )["Arn"]
    fns = gg.create_function_definition(
        Name="kitchen-functions",
        InitialVersion={"Functions": [function("reader", {"ApiKey": "ro"})]},
    )
    fns_2 = gg.create_function_definition_version(
        FunctionDefinitionId=fns["Id"],
        Functions=[function("reader", {"ApiKey": "ro", "DbPassword": "ro"})],
    )["Arn"]
    subs = gg.create_subscription_definition(
        Name="kitchen-subscriptions",
        InitialVersion={
            "Subscriptions": [subscription("in", "cloud", function_arn("reader"), "kitchen/in")]
        },
    )
    subs_2 = gg.create_subscription_definition_version(
        SubscriptionDefinitionId=subs["Id"],
        Subscriptions=[
            subscription("in", "cloud", function_arn("reader"), "kitchen/in"),
            subscription("out", function_arn("reader"), "cloud", "kitchen/out"),
        ],
    )["Arn"]
    kitchen = gg.create_group(
        Name="Kitchen",
        InitialVersion={
            "CoreDefinitionVersionArn": core_1,
            "ResourceDefinitionVersionArn": res["LatestVersionArn"],
            "FunctionDefinitionVersionArn": fns["LatestVersionArn"],
        },
    )["Id"]
    for version in (
        {"CoreDefinitionVersionArn": core_2, "ResourceDefinitionVersionArn": res_2},
        {
            "CoreDefinitionVersionArn": core_2,
            "ResourceDefinitionVersionArn": res_2,
            "FunctionDefinitionVersionArn": fns_2,
            "SubscriptionDefinitionVersionArn": subs_2,
        },
    ):
        gg.create_group_version(GroupId=kitchen, **version)
    account.groups["Kitchen"] = kitchen

    # Garage: a local volume and a device beside its secret.
    _, core_g = core_version(gg, None, "garage-core", "garage")
    opener = secret("garage-opener")
    res_g = gg.create_resource_definition(
        Name="garage-resources",
        InitialVersion={
            "Resources": [
                secret_resource("Opener", opener),
                {
                    "Id": "Logs",
                    "Name": "Logs",
                    "ResourceDataContainer": {
                        "LocalVolumeResourceData": {
                            "SourcePath": "/var/log/garage",
                            "DestinationPath": "/logs",
                        }
                    },
                },
            ]
        },
    )["LatestVersionArn"]
    fns_g = gg.create_function_definition(
        Name="garage-functions",
        InitialVersion={"Functions": [function("door", {"Opener": "ro", "Logs": "rw"})]},
    )["LatestVersionArn"]
    device = gg.create_device_definition(
        Name="garage-sensors",
        InitialVersion={
            "Devices": [
                {
                    "Id": "sensor",
                    "ThingArn": f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:thing/door-sensor",
                    "CertificateArn": CERT + "sensor",
                    "SyncShadow": True,
                }
            ]
        },
    )["LatestVersionArn"]
    sensor = f"arn:aws:iot:{TEST_REGION}:{ACCOUNT}:thing/door-sensor"
    subs_g = gg.create_subscription_definition(
        Name="garage-subscriptions",
        InitialVersion={
            "Subscriptions": [subscription("door", sensor, function_arn("door"), "door/state")]
        },
    )["LatestVersionArn"]
    base = {
        "CoreDefinitionVersionArn": core_g,
        "ResourceDefinitionVersionArn": res_g,
        "FunctionDefinitionVersionArn": fns_g,
    }
    garage = gg.create_group(Name="Garage", InitialVersion=base)["Id"]
    gg.create_group_version(
        GroupId=garage,
        **base,
        DeviceDefinitionVersionArn=device,
        SubscriptionDefinitionVersionArn=subs_g,
    )
    account.groups["Garage"] = garage

    # Office: a function whose code nobody published yet, a Twilio connector, a logger.
    _, core_o = core_version(gg, None, "office-core", "office")
    token = secret("office-token")
    res_o = gg.create_resource_definition(
        Name="office-secrets", InitialVersion={"Resources": [secret_resource("Token", token)]}
    )["LatestVersionArn"]
    fns_o = gg.create_function_definition(
        Name="office-functions",
        InitialVersion={"Functions": [function("printer", {"Token": "ro"})]},
    )["LatestVersionArn"]
    office = gg.create_group(
        Name="Office",
        InitialVersion={"CoreDefinitionVersionArn": core_o, "ResourceDefinitionVersionArn": res_o},
    )["Id"]
    twilio = gg.create_connector_definition(
        Name="office-connectors",
        InitialVersion={
            "Connectors": [
                {
                    "Id": "sms",
                    "ConnectorArn": TWILIO,
                    "Parameters": {
                        "TWILIO_ACCOUNT_SID": "AC0123456789",
                        "TwilioAuthTokenSecretArn": token,
                        "TwilioAuthTokenSecretArn-ResourceId": "Token",
                        "DefaultFromPhoneNumber": "+15555550100",
                    },
                }
            ]
        },
    )["LatestVersionArn"]
    logger = gg.create_logger_definition(
        Name="office-logs",
        InitialVersion={
            "Loggers": [
                {
                    "Id": "system",
                    "Component": "GreengrassSystem",
                    "Level": "INFO",
                    "Type": "FileSystem",
                    "Space": 128,
                }
            ]
        },
    )["LatestVersionArn"]
    gg.create_group_version(
        GroupId=office,
        CoreDefinitionVersionArn=core_o,
        ResourceDefinitionVersionArn=res_o,
        FunctionDefinitionVersionArn=fns_o,
        ConnectorDefinitionVersionArn=twilio,
        LoggerDefinitionVersionArn=logger,
    )
    account.groups["Office"] = office
    return account


def write_cloud_config(
    root: Path,
    *,
    broker: Mosquitto,
    v1: MotoServer,
    port: int,
    database: str = "cloud/edge-cloud.db",
) -> Path:
    """A control plane (and its API, for the AWS CLI) reading the V1 account at `v1`."""
    secret_file = root / "operator.secret"
    secret_file.write_text(secrets.token_urlsafe(30) + "\n")
    secret_file.chmod(0o600)
    return write_serve_config(root, broker=broker, moto=v1, port=port, database=database)


def import_fails(root: Path, broker: Mosquitto, endpoint: MotoServer) -> str:
    """Import from `endpoint` into a new control plane in `root`: exit 2, nothing written.

    Returns the error line.
    """
    root.mkdir()
    config = write_cloud_config(root, broker=broker, v1=endpoint, port=free_port())
    failed = import_greengrass(config)
    assert failed.returncode == 2
    assert not (root / "cloud" / "edge-cloud.db").exists()
    return failed.stderr.strip().splitlines()[-1]


def cloud(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = edge_cli("cloud", "--config", str(config), *args, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def import_greengrass(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cloud(config, "import-greengrass", *args)


def group_block(stdout: str, group_id: str) -> str:
    """The report's lines about one group: its heading and the indented lines under it."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"group {group_id}"))
    end = next(
        (i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")), len(lines)
    )
    return "\n".join(lines[start:end])


#: Runs every argument list of a JSON list on stdin through one driver of the official AWS CLI
#: (`awscli.clidriver`, what `aws` and `python -m awscli` run), each command's stdout captured
#: alone; prints each exit status and stdout. One process start (about a second) serves them
#: all, where a process per command would cost that much each.
_AWS_CLI_BATCH = """
import contextlib, io, json, sys
from awscli.clidriver import create_clidriver
driver, results = create_clidriver(), []
for args in json.load(sys.stdin):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        results.append({"rc": driver.main(args), "stdout": out.getvalue()})
json.dump(results, sys.stdout)
"""


def aws_cli(url: str, secret: str, commands: list[list[str]]) -> list[dict[str, Any]]:
    """Each `aws greengrass` command's JSON answer, signed with the test's key."""
    env = {**os.environ, **AWS_TEST_ENV}
    env.pop("AWS_SESSION_TOKEN")
    env |= {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_OUTPUT": "json",
        "AWS_MAX_ATTEMPTS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", _AWS_CLI_BATCH],
        input=json.dumps([["greengrass", *args, "--endpoint-url", url] for args in commands]),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    ran = json.loads(result.stdout)
    assert [r["rc"] for r in ran] == [0] * len(commands), result.stderr
    return [json.loads(r["stdout"]) for r in ran]


def moto_answer(gg: Any, method: str, **params: str) -> dict[str, Any]:
    answer: dict[str, Any] = getattr(gg, method)(**params)
    answer.pop("ResponseMetadata")
    return answer


def compare_through_aws_cli(account: Account, url: str, secret: str) -> int:
    """Every group, group version and definition (version) read both ways; return how many."""
    gg, seen = account.gg, set()
    expected: list[tuple[list[str], dict[str, Any]]] = []

    def read(command: list[str], method: str, **params: str) -> dict[str, Any]:
        """What moto answers `method`; the AWS CLI's `command` must answer the same."""
        answer = moto_answer(gg, method, **params)
        expected.append((command, answer))
        return answer

    for group_id in account.groups.values():
        read(["get-group", "--group-id", group_id], "get_group", GroupId=group_id)
        for listed in gg.list_group_versions(GroupId=group_id)["Versions"]:
            version = listed["Version"]
            theirs = read(
                ["get-group-version", "--group-id", group_id, "--group-version-id", version],
                "get_group_version",
                GroupId=group_id,
                GroupVersionId=version,
            )
            for key, arn in theirs["Definition"].items():
                if arn in seen:
                    continue
                seen.add(arn)
                noun = key.removesuffix("DefinitionVersionArn")
                lower, parts = noun.lower(), arn.split("/")
                ids = {f"{noun}DefinitionId": parts[-3]}
                read(
                    [f"get-{lower}-definition", f"--{lower}-definition-id", parts[-3]],
                    f"get_{lower}_definition",
                    **ids,
                )
                read(
                    [
                        *(f"get-{lower}-definition-version", f"--{lower}-definition-id"),
                        *(parts[-3], f"--{lower}-definition-version-id", parts[-1]),
                    ],
                    f"get_{lower}_definition_version",
                    **ids,
                    **{f"{noun}DefinitionVersionId": parts[-1]},
                )
    answers = aws_cli(url, secret, [command for command, _ in expected])
    for (command, theirs), mine in zip(expected, answers, strict=True):
        assert mine == theirs, command
    return len(expected)


def deploy_and_invoke(
    tmp_path: Path, broker: Mosquitto, v1: MotoServer, *, config: Path, thing: str, account: Account
) -> str:
    """Deploy the imported Kitchen group to a real core; its function reads a secret; the log."""
    core_config = write_config(
        tmp_path / "core.toml",
        thing_name=thing,
        mqtt_url=broker.url,
        endpoint_url=v1.url,
        deployments=f'trusted_keys = ["{tmp_path / "cloud" / "signing.pem.pub"}"]',
    )
    assert edge_cli("init", "--config", str(core_config)).returncode == 0
    core = CoreProcess(config=core_config, log_path=tmp_path / "core.log")
    core.start()
    try:
        core.wait_for_event("mqtt.connected")
        deployed = cloud(
            config,
            *("create-deployment", "--group-id", account.groups["Kitchen"]),
            *("--deployment-type", "NewDeployment", "--wait", "--timeout", "60"),
        )
        assert deployed.returncode == 0, deployed.stderr
        assert "Success" in deployed.stderr
        invoked = edge_cli(
            *("invoke", "--config", str(core_config), "--function-arn", function_arn("reader")),
            *("--payload", json.dumps({"SecretId": "kitchen-db-password"})),
        )
        assert invoked.returncode == 0, invoked.stderr
        assert json.loads(invoked.stdout)["SecretString"] == account.values[1]
    finally:
        core.stop()
    return core.log_text()


def test_import_reads_back_field_by_field_deploys_and_reports_what_edge_cant_run(
    tmp_path: Path, broker: Mosquitto, v1: MotoServer, cloud_database: str
) -> None:
    """A V1 account imports whole: the AWS CLI reads back what moto holds, a core deploys it.

    The Twilio connector and the device and logger definitions are copied; the local volume and
    the function without code are reported under their groups; a second import adds nothing.
    """
    thing = f"core-{uuid.uuid4().hex[:8]}"
    account = build_account(v1, thing)
    port = free_port()
    config = write_cloud_config(tmp_path, broker=broker, v1=v1, port=port, database=cloud_database)
    assert cloud(config, "init").returncode == 0
    package, _ = build_package(tmp_path / "app.zip")
    published = cloud(
        config,
        *("publish-function", "--function-arn", function_arn("reader")),
        *("--zip-file", f"fileb://{package}", "--handler", "app.function_handler"),
    )
    assert published.returncode == 0, published.stderr

    first = import_greengrass(config)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "groups: 3 copied, 0 already present" in out
    assert "group versions: 7 copied, 0 already present" in out
    assert "resource definition versions: 4 copied, 0 already present" in out
    assert "edge: groups 3/3" in first.stderr
    assert "edge: resource definitions 3/3" in first.stderr
    kitchen = group_block(out, account.groups["Kitchen"])
    assert "can't run" not in kitchen, kitchen
    garage = group_block(out, account.groups["Garage"])
    assert "left out" not in garage
    assert "device definitions: 1 copied, 0 already present" in out
    assert "logger definition versions: 1 copied, 0 already present" in out
    assert "resource 'Logs' (LocalVolumeResourceData)" in garage
    office = group_block(out, account.groups["Office"])
    printer = function_arn("printer")
    assert (
        f"`edge cloud publish-function --function-arn {printer} --zip-file fileb://PACKAGE.zip "
        f"--handler app.function_handler`" in office
    )
    assert "left out" not in office
    assert "connector definition versions 1" in office.splitlines()[0]
    assert "connector 'sms'" not in office, "edge ships the Twilio connector"

    secret = (tmp_path / "operator.secret").read_text().strip()
    service = start_service(tmp_path, config, port)
    try:
        # 3 groups, 7 group versions, and the 17 definition versions they name, each with its
        # definition.
        assert (
            compare_through_aws_cli(account, f"http://127.0.0.1:{port}", secret) == 3 + 7 + 2 * 17
        )
        # Credentials the service doesn't know (the tests' "testing" key).
        assert import_fails(tmp_path / "denied", broker, dataclasses.replace(v1, port=port)) == (
            f"edge: error: import-greengrass: http://127.0.0.1:{port} refused ListGroups "
            f"(UnrecognizedClientException); give these credentials read access to Greengrass "
            f"(greengrass:Get*, greengrass:List*, e.g. the AWS managed policy "
            f"AWSGreengrassReadOnlyAccess)"
        )
    finally:
        assert service.stop() == 0

    log = deploy_and_invoke(tmp_path, broker, v1, config=config, thing=thing, account=account)
    for value in account.values:
        assert value not in out + log, "a secret value reached the import's output or a log"

    again = import_greengrass(config)
    assert again.returncode == 0, again.stderr
    assert "nothing new" in again.stdout
    assert "groups: 0 copied, 3 already present" in again.stdout
    for group_id in account.groups.values():
        assert group_block(again.stdout, group_id).splitlines()[0].endswith(": nothing new")
    # What edge can't run is still said on every run, until it is dealt with.
    assert "resource 'Logs' (LocalVolumeResourceData)" in again.stdout
    assert f"--function-arn {printer}" in again.stdout


def test_dry_run_group_ids_conflicts_and_errors_leave_the_database_as_it_was(
    tmp_path: Path, broker: Mosquitto, v1: MotoServer, cloud_database: str
) -> None:
    """--dry-run and failures write nothing; --group-id picks groups; conflicts stay as they are."""
    account = build_account(v1, "dry-core")
    config = write_cloud_config(
        tmp_path, broker=broker, v1=v1, port=free_port(), database=cloud_database
    )

    def stored_groups() -> list[str]:
        with open_configured(config) as db, db.read() as conn:
            return sorted(row["id"] for row in conn.execute("SELECT id FROM groups"))

    dry = import_greengrass(config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "summary (dry run, nothing written):" in dry.stdout
    assert "groups: 3 would copy, 0 already present" in dry.stdout
    assert "device definitions: 1 would copy, 0 already present" in dry.stdout
    assert stored_groups() == []

    missing = str(uuid.uuid4())
    refused = import_greengrass(
        config, "--group-id", account.groups["Office"], "--group-id", missing
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"edge: error: import-greengrass: --group-id {missing}: the account has no such group; "
        f"`aws greengrass list-groups` lists them"
    )
    assert stored_groups() == []

    office = import_greengrass(config, "--group-id", account.groups["Office"])
    assert office.returncode == 0, office.stderr
    assert "groups: 1 copied, 0 already present" in office.stdout
    assert stored_groups() == [account.groups["Office"]]

    # Someone changed a stored version under V1's id: the import reports it and keeps it.
    with open_configured(config) as db, db.write() as conn:
        conn.execute(
            "UPDATE definition_versions SET body = :body WHERE body LIKE '%office-token%'",
            {"body": json.dumps({"Resources": []})},
        )
    conflicted = import_greengrass(config)
    assert conflicted.returncode == 1, conflicted.stderr
    block = group_block(conflicted.stdout, account.groups["Office"])
    assert block.splitlines()[0].endswith("not written (conflict)")
    assert "resource definition version" in block
    assert "is stored with other content" in block
    assert "1 group(s) not written" in conflicted.stdout
    assert sorted(stored_groups()) == sorted(account.groups.values())
    with open_configured(config) as db, db.read() as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM definition_versions WHERE body LIKE '%office-token%'"
            ).scalar()
            == 0
        )

    # A mistyped endpoint is said within seconds, not after the backoff meant for throttling.
    nowhere = dataclasses.replace(v1, port=free_port())
    started = time.monotonic()
    line = import_fails(tmp_path / "elsewhere", broker, nowhere)
    assert time.monotonic() - started < 15
    assert line.startswith(
        f"edge: error: import-greengrass: can't reach the Greengrass API at {nowhere.url}"
    )
    assert "check [aws] endpoint_url and region" in line

    no_credentials = subprocess.run(
        [sys.executable, "-m", "edge", "cloud", "--config", str(config), "import-greengrass"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
        },
        check=False,
    )
    assert no_credentials.returncode == 2
    assert no_credentials.stderr.strip().splitlines()[-1] == (
        "edge: error: import-greengrass: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or another source of botocore's credential chain"
    )


async def test_throttling_before_the_first_answer_is_waited_out(
    tmp_path: Path, broker: Mosquitto, v1: MotoServer
) -> None:
    """Only a connection that can't be made fails fast: throttling at first is retried further."""
    group = v1.client("greengrass").create_group(Name="Lone")["Id"]
    async with LatencyProxy(upstream=v1.url, delay=0.0) as proxy:
        proxy.inject(status=429, code="ThrottlingException", count=FIRST_CONTACT_ATTEMPTS)
        throttling = dataclasses.replace(v1, port=proxy.port)
        config = write_cloud_config(tmp_path, broker=broker, v1=throttling, port=free_port())
        account = await read_account(load_cloud_config(config), [], lambda *_: None)
    assert proxy.injected.total() == FIRST_CONTACT_ATTEMPTS
    assert [g.info["Id"] for g in account.groups] == [group]
