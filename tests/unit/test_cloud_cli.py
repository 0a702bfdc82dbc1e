"""`edge cloud` in-process: arguments, AWS-shaped output, validation, and one-line errors."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.cloud.cli import main
from edge.cloud.config import load_cloud_config
from edge.fixtures.services import free_port
from tests.support import REPO

SECRET_A = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/a-AbCdEf"
SECRET_B = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/b-GhIjKl"
FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:reader:1"
CONNECTOR = "arn:aws:greengrass:us-east-1::/connectors/TwilioNotifications/versions/4"


def secret(rid: str, arn: str) -> dict[str, Any]:
    return {
        "Id": rid,
        "Name": rid,
        "ResourceDataContainer": {"SecretsManagerSecretResourceData": {"ARN": arn}},
    }


def function(fid: str, policies: list[dict[str, str]], arn: str = FUNCTION) -> dict[str, Any]:
    return {
        "Id": fid,
        "FunctionArn": arn,
        "FunctionConfiguration": {"Environment": {"ResourceAccessPolicies": policies}},
    }


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """Runs `edge cloud --config CONFIG ...` in this process, capturing its output."""

    def __init__(self, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.config = config
        self.capsys = capsys

    def __call__(self, *args: str, config: bool = True) -> Result:
        argv = ["--config", str(self.config), *args] if config else list(args)
        code = main(argv)
        captured = self.capsys.readouterr()
        assert "Traceback" not in captured.err
        return Result(code, captured.out, captured.err)

    def ok(self, *args: str) -> Any:
        result = self(*args)
        assert result.code == 0, result.err
        return result.json if result.out else None

    def error(self, *args: str) -> str:
        """Run a command that must fail; return its one error line."""
        result = self(*args)
        assert result.code == 2, result
        lines = result.err.splitlines()
        assert len(lines) == 1, result.err
        assert lines[0].startswith("edge: error: ")
        return lines[0]

    def version_arn(self, noun: str, items: list[Any]) -> str:
        key = {"resource": "Resources", "function": "Functions", "connector": "Connectors"}.get(
            noun, noun.capitalize() + "s"
        )
        created = self.ok(
            f"create-{noun}-definition", "--initial-version", json.dumps({key: items})
        )
        return str(created["LatestVersionArn"])

    def core_arn(self, thing: str = "core-1") -> str:
        core = {
            "Id": "c",
            "ThingArn": f"arn:aws:iot:us-east-1:123456789012:thing/{thing}",
            "CertificateArn": "arn:aws:iot:us-east-1:123456789012:cert/x",
        }
        return self.version_arn("core", [core])

    def group(self) -> str:
        return str(self.ok("create-group", "--name", "g")["Id"])


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    """A control plane whose broker and S3 are never reached (nothing listens there)."""
    dead = free_port()
    config = tmp_path / "cloud.toml"
    config.write_text(
        f"""
[cloud]
database = "cloud.db"
signing_key = "keys/signing.pem"
artifact_bucket = "artifacts"
[mqtt]
url = "mqtt://127.0.0.1:{dead}"
[aws]
region = "us-east-1"
endpoint_url = "http://127.0.0.1:{dead}"
"""
    )
    return Cli(config, capsys)


def test_definition_lifecycle_answers_with_aws_key_names(cli: Cli) -> None:
    """create/get/list/versions/delete answer with AWS's keys; deleted means not found."""
    created = cli.ok("create-resource-definition", "--name", "R")
    assert set(created) == {"Arn", "CreationTimestamp", "Id", "LastUpdatedTimestamp", "Name"}
    rid = created["Id"]
    version = cli.ok(
        "create-resource-definition-version",
        "--resource-definition-id",
        rid,
        "--resources",
        json.dumps([secret("a", SECRET_A)]),
    )
    assert set(version) == {"Arn", "CreationTimestamp", "Id", "Version"}
    assert version["Id"] == rid
    got = cli.ok("get-resource-definition", "--resource-definition-id", rid)
    assert got["LatestVersion"] == version["Version"]
    assert got["LatestVersionArn"] == version["Arn"]
    shown = cli.ok(
        "get-resource-definition-version",
        "--resource-definition-id",
        rid,
        "--resource-definition-version-id",
        version["Version"],
    )
    assert shown["Definition"] == {"Resources": [secret("a", SECRET_A)]}
    assert [d["Id"] for d in cli.ok("list-resource-definitions")["Definitions"]] == [rid]
    versions = cli.ok("list-resource-definition-versions", "--resource-definition-id", rid)
    assert [v["Version"] for v in versions["Versions"]] == [version["Version"]]
    deleted = cli("delete-resource-definition", "--resource-definition-id", rid)
    assert (deleted.code, deleted.out) == (0, "")
    assert "does not exist" in cli.error("get-resource-definition", "--resource-definition-id", rid)


def test_json_arguments_are_inline_or_file_urls(cli: Cli, tmp_path: Path) -> None:
    """--initial-version takes inline JSON or file://path; bad JSON names the option."""
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"Resources": [secret("a", SECRET_A)]}))
    created = cli.ok("create-resource-definition", "--initial-version", f"file://{path}")
    assert "LatestVersion" in created
    assert "--initial-version: is not valid JSON" in cli.error(
        "create-resource-definition", "--initial-version", "{nope"
    )
    assert "can't read" in cli.error(
        "create-resource-definition", "--initial-version", f"file://{tmp_path}/missing.json"
    )
    assert "appears twice" in cli.error(
        "create-resource-definition", "--initial-version", '{"Resources": [], "Resources": []}'
    )
    assert "not fileb://" in cli.error(
        "create-resource-definition", "--initial-version", f"fileb://{path}"
    )
    assert "NaN is not a JSON value" in cli.error(
        "create-resource-definition", "--initial-version", '{"Resources": NaN}'
    )


def test_argument_errors_are_one_line(cli: Cli) -> None:
    """Missing --config, unknown commands and missing options: one line, exit 2."""
    result = cli("list-groups", config=False)
    assert result.code == 2
    assert result.err == "edge: error: --config is required (see `edge cloud --help`)\n"
    assert "unknown command 'bogus'" in cli.error("bogus")
    assert "--group-id" in cli.error("get-group")
    assert "must be one of NewDeployment, Redeployment" in cli.error(
        "create-deployment", "--group-id", "g", "--deployment-type", "Nope"
    )


def test_config_is_accepted_after_the_command_too(cli: Cli) -> None:
    """--config may follow the command, as AWS CLI global options may."""
    result = cli("list-groups", "--config", str(cli.config), config=False)
    assert result.code == 0
    assert result.json == {"Groups": []}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[cloud]\nbogus = 1\n", "cloud.bogus"),
        ("[nope]\n", "[nope]"),
        ('[cloud]\naccount_id = "42"\n', "cloud.account_id"),
        ('[cloud]\nartifact_bucket = "Bad_Bucket"\n', "cloud.artifact_bucket"),
        ('[mqtt]\nurl = "http://x"\n', "mqtt.url"),
        ("[cloud]\n", "aws.region"),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, named: str
) -> None:
    """Unknown or wrong keys in cloud.toml are one error line naming the key."""
    path = tmp_path / "bad.toml"
    base = '[aws]\nregion = "us-east-1"\n' if named != "aws.region" else ""
    path.write_text(base + text)
    line = Cli(path, capsys).error("list-groups")
    assert named in line


def test_init_creates_a_private_key_once_and_prints_the_public_key(cli: Cli) -> None:
    """The init command makes a 0600 key and <key>.pub, prints its path, keeps a key."""
    first = cli("init")
    assert first.code == 0
    public = Path(first.out.strip())
    private = cli.config.parent / "keys" / "signing.pem"
    assert public == private.with_name("signing.pem.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    before = private.read_bytes()
    second = cli("init")
    assert "kept the existing" in second.err
    assert private.read_bytes() == before


def test_invalid_resource_and_core_versions_name_the_entry(cli: Cli) -> None:
    """A secret twice, a bad ARN, two cores, a bad ThingArn: each message names the entry."""
    twice = [secret("a", SECRET_A), secret("b", SECRET_A.replace("AbCdEf", "XyZxYz"))]
    line = cli.error(
        "create-resource-definition", "--initial-version", json.dumps({"Resources": twice})
    )
    assert 'invalid resource definition version: Resources[1] (Id "b")' in line
    assert "only once" in line
    bad_arn = [secret("a", "arn:aws:secretsmanager:us-east-1:1:secret:x")]
    line = cli.error(
        "create-resource-definition", "--initial-version", json.dumps({"Resources": bad_arn})
    )
    assert 'Resources[0] (Id "a")' in line
    core = {
        "Id": "c",
        "ThingArn": "arn:aws:iot:us-east-1:123456789012:thing/t",
        "CertificateArn": "arn:x",
    }
    line = cli.error(
        "create-core-definition", "--initial-version", json.dumps({"Cores": [core, core]})
    )
    assert "exactly one core" in line
    bad_thing = dict(core, ThingArn="thing/t")
    line = cli.error(
        "create-core-definition", "--initial-version", json.dumps({"Cores": [bad_thing]})
    )
    assert 'Cores[0] (Id "c"): ThingArn must be an AWS IoT thing ARN' in line
    line = cli.error(
        "create-subscription-definition",
        "--initial-version",
        json.dumps(
            {"Subscriptions": [{"Id": "s", "Source": "me", "Subject": "t", "Target": "cloud"}]}
        ),
    )
    assert 'Subscriptions[0] (Id "s"): Source "me" must be "cloud"' in line


GHOST = FUNCTION.replace("reader", "ghost")
TWILIO_ID = "TwilioAuthTokenSecretArn-ResourceId"
INVALID_GROUPS = [
    (
        {
            "resource": [secret("r1", SECRET_A)],
            "function": [function("f", [{"ResourceId": "nope", "Permission": "ro"}])],
        },
        (
            'Functions[0] (Id "f"): FunctionConfiguration.Environment.ResourceAccessPolicies[0]'
            '.ResourceId "nope" names no resource of the group'
        ),
    ),
    (
        {
            "resource": [secret("r1", SECRET_A)],
            "function": [function("f", [{"ResourceId": "r1", "Permission": "rw"}])],
        },
        (
            'Functions[0] (Id "f"): FunctionConfiguration.Environment.ResourceAccessPolicies[0]'
            '.Permission is "rw" for secret resource "r1"; only "ro" is allowed'
        ),
    ),
    (
        {
            "resource": [secret("r1", SECRET_A)],
            "connector": [
                {"Id": "twilio", "ConnectorArn": CONNECTOR, "Parameters": {TWILIO_ID: "nope"}}
            ],
        },
        f'Connectors[0] (Id "twilio"): Parameters["{TWILIO_ID}"] "nope" names no resource',
    ),
    (
        {
            "resource": [secret("r1", SECRET_A), secret("r2", SECRET_B)],
            "connector": [
                {
                    "Id": "twilio",
                    "ConnectorArn": CONNECTOR,
                    "Parameters": {"TwilioAuthTokenSecretArn": SECRET_B, TWILIO_ID: "r1"},
                }
            ],
        },
        (
            'Connectors[0] (Id "twilio"): Parameters["TwilioAuthTokenSecretArn"] '
            f'"{SECRET_B}" is not the ARN of resource "r1"'
        ),
    ),
    (
        {
            "function": [function("f", [])],
            "subscription": [{"Id": "s1", "Source": "cloud", "Subject": "t", "Target": GHOST}],
        },
        f'Subscriptions[0] (Id "s1"): Target "{GHOST}" names no function of the group',
    ),
    (
        {
            "function": [function("f", [])],
            "subscription": [
                {"Id": "s1", "Source": "cloud", "Subject": "twilio/txt", "Target": CONNECTOR}
            ],
        },
        f'Subscriptions[0] (Id "s1"): Target "{CONNECTOR}" names no connector of the group',
    ),
]


@pytest.mark.parametrize(("lists", "expected"), INVALID_GROUPS)
def test_every_invalid_group_gets_its_message(cli: Cli, lists, expected) -> None:
    """create-group-version validates the whole group and names the offending entry."""
    args = ["create-group-version", "--group-id", cli.group()]
    for noun, items in lists.items():
        args += [f"--{noun}-definition-version-arn", cli.version_arn(noun, items)]
    line = cli.error(*args)
    assert line.startswith(f"edge: error: invalid group version: {expected}")


def test_a_valid_group_version_is_stored_with_its_arns(cli: Cli) -> None:
    """A valid group's version is stored; get-group-version shows the ARNs it names."""
    resource = cli.version_arn("resource", [secret("r1", SECRET_A)])
    functions = cli.version_arn(
        "function", [function("f", [{"ResourceId": "r1", "Permission": "ro"}])]
    )
    subs = cli.version_arn(
        "subscription",
        [
            {"Id": "s1", "Source": "cloud", "Subject": "t", "Target": FUNCTION},
            {"Id": "s2", "Source": FUNCTION, "Subject": "t", "Target": "cloud"},
        ],
    )
    group_id = cli.group()
    version = cli.ok(
        "create-group-version",
        "--group-id",
        group_id,
        "--resource-definition-version-arn",
        resource,
        "--function-definition-version-arn",
        functions,
        "--subscription-definition-version-arn",
        subs,
    )
    shown = cli.ok(
        "get-group-version", "--group-id", group_id, "--group-version-id", version["Version"]
    )
    assert shown["Definition"] == {
        "ResourceDefinitionVersionArn": resource,
        "FunctionDefinitionVersionArn": functions,
        "SubscriptionDefinitionVersionArn": subs,
    }
    assert cli.ok("get-group", "--group-id", group_id)["LatestVersion"] == version["Version"]
    listed = cli.ok("list-group-versions", "--group-id", group_id)["Versions"]
    assert [v["Version"] for v in listed] == [version["Version"]]


def test_group_versions_must_name_versions_of_the_right_kind(cli: Cli) -> None:
    """A resource ARN passed as a function version, or one never created, is refused."""
    resource = cli.version_arn("resource", [secret("r1", SECRET_A)])
    group_id = cli.group()
    line = cli.error(
        "create-group-version",
        "--group-id",
        group_id,
        "--function-definition-version-arn",
        resource,
    )
    assert "--function-definition-version-arn" in line
    assert "is not a function definition version ARN" in line
    missing = resource[:-12] + "000000000000"
    line = cli.error(
        "create-group-version", "--group-id", group_id, "--resource-definition-version-arn", missing
    )
    assert "does not exist" in line
    line = cli.error(
        "create-group", "--name", "g", "--initial-version", '{"LoggerDefinitionVersionArn": "x"}'
    )
    assert '"x" is not a logger definition version ARN' in line


def test_create_deployment_refuses_what_it_cannot_build(cli: Cli) -> None:
    """Deployment errors are found before anything is published, each with its own message."""
    assert "edge cloud init" in cli.error(
        "create-deployment", "--group-id", "g", "--deployment-type", "NewDeployment"
    )
    assert cli("init").code == 0
    empty = cli.group()
    assert "has no version yet" in cli.error(
        "create-deployment", "--group-id", empty, "--deployment-type", "NewDeployment"
    )
    assert "is required for a Redeployment" in cli.error(
        "create-deployment", "--group-id", empty, "--deployment-type", "Redeployment"
    )
    assert "only for --deployment-type Redeployment" in cli.error(
        "create-deployment",
        "--group-id",
        empty,
        "--deployment-type",
        "NewDeployment",
        "--deployment-id",
        "x",
    )
    resource_def = cli.ok(
        "create-resource-definition",
        "--initial-version",
        json.dumps({"Resources": [secret("r1", SECRET_A)]}),
    )
    no_core = cli.group()
    cli.ok(
        "create-group-version",
        "--group-id",
        no_core,
        "--resource-definition-version-arn",
        resource_def["LatestVersionArn"],
    )
    assert "names no core definition version" in cli.error(
        "create-deployment", "--group-id", no_core, "--deployment-type", "NewDeployment"
    )
    uncoded = cli.group()
    cli.ok(
        "create-group-version",
        "--group-id",
        uncoded,
        "--core-definition-version-arn",
        cli.core_arn(),
        "--function-definition-version-arn",
        cli.version_arn("function", [function("f", [])]),
    )
    # Nothing is published and AWS Lambda (a dead endpoint here) can't supply it either.
    uncoded_error = cli.error(
        "create-deployment", "--group-id", uncoded, "--deployment-type", "NewDeployment"
    )
    assert "has no published code and AWS Lambda can't be reached" in uncoded_error
    assert "run `edge cloud publish-function --function-arn" in uncoded_error
    deleted = cli.group()
    cli.ok(
        "create-group-version",
        "--group-id",
        deleted,
        "--core-definition-version-arn",
        cli.core_arn(),
        "--resource-definition-version-arn",
        resource_def["LatestVersionArn"],
    )
    cli.ok("delete-resource-definition", "--resource-definition-id", resource_def["Id"])
    line = cli.error(
        "create-deployment", "--group-id", deleted, "--deployment-type", "NewDeployment"
    )
    assert resource_def["LatestVersionArn"] in line
    assert "its definition was deleted" in line
    assert cli.ok("list-deployments", "--group-id", deleted) == {"Deployments": []}


def test_an_unreachable_broker_records_nothing(cli: Cli) -> None:
    """With the broker down, create-deployment fails in one line and records no deployment."""
    assert cli("init").code == 0
    group_id = cli.group()
    cli.ok(
        "create-group-version",
        "--group-id",
        group_id,
        "--core-definition-version-arn",
        cli.core_arn(),
    )
    line = cli.error(
        "create-deployment", "--group-id", group_id, "--deployment-type", "NewDeployment"
    )
    assert "could not talk to the MQTT broker" in line
    assert cli.ok("list-deployments", "--group-id", group_id) == {"Deployments": []}
    assert "does not exist" in cli.error(
        "get-deployment-status", "--group-id", group_id, "--deployment-id", "nope"
    )
    assert "must be a positive number" in cli.error(
        "create-deployment",
        "--group-id",
        group_id,
        "--deployment-type",
        "NewDeployment",
        "--wait",
        "--timeout",
        "0",
    )


def test_publish_function_checks_its_arguments_before_s3(cli: Cli, tmp_path: Path) -> None:
    """A missing fileb://, a non-zip, a bad handler or ARN are refused naming the option."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return 1\n")
    package = tmp_path / "app.zip"
    package.write_bytes(buffer.getvalue())
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    base = ["publish-function", "--function-arn", FUNCTION, "--handler", "app.handler"]
    assert "--zip-file: must be fileb://" in cli.error(*base, "--zip-file", str(package))
    assert "--zip-file: is not a zip file" in cli.error(*base, "--zip-file", f"fileb://{junk}")
    line = cli.error(
        "publish-function",
        "--function-arn",
        FUNCTION,
        "--handler",
        "other.handler",
        "--zip-file",
        f"fileb://{package}",
    )
    assert "no other.py" in line
    line = cli.error(
        "publish-function",
        "--function-arn",
        "myFunction",
        "--handler",
        "app.handler",
        "--zip-file",
        f"fileb://{package}",
    )
    assert "--function-arn" in line
    assert "could not reach S3" in cli.error(*base, "--zip-file", f"fileb://{package}")


def test_example_config_is_valid_and_defaults_are_documented(tmp_path: Path) -> None:
    """cloud.example.toml parses; a minimal config gets the defaults docs/cloud.md lists."""
    example = load_cloud_config(REPO / "cloud.example.toml")
    assert example.cloud.signing_key == REPO / "cloud" / "signing-key.pem"
    assert example.cloud.public_key == REPO / "cloud" / "signing-key.pem.pub"
    path = tmp_path / "c.toml"
    path.write_text('[aws]\nregion = "eu-west-1"\n')
    config = load_cloud_config(path)
    assert config.cloud.database == tmp_path / "edge-cloud.db"
    assert config.cloud.signing_key == tmp_path / "signing-key.pem"
    assert config.cloud.artifact_bucket is None
    assert config.cloud.account_id == "123456789012"
    assert config.mqtt.url == "mqtt://127.0.0.1:1883"
    assert config.mqtt.topic_prefix == "edge"
