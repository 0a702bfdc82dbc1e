"""`edge cloud serve` lifecycle: renames, deletes, resets, tags and client tokens.

Real clients only (boto3, the official AWS CLI, `edge cloud`), a real `edge cloud serve`, and a
real `edge run` core where a deployment or a reset must reach one. Nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
from typing import Any

import pytest
from botocore.validate import ParamValidator

from edge.cloud.serve.routes import service_model
from edge.fixtures.services import TEST_REGION, free_port
from tests.integration import test_cloud_serve as base
from tests.integration.test_cloud_serve import (
    ACCOUNT,
    Served,
    code,
    error_of,
    signed_request,
)

pytestmark = pytest.mark.network

# The service fixtures of test_cloud_serve, shared rather than copied.
served = base.served
with_core = base.with_core

#: AWS shows every timestamp with milliseconds.
MILLISECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
KINDS = ("core", "resource", "function", "connector", "subscription")


def shaped(operation: str, answer: dict[str, Any]) -> dict[str, Any]:
    """The answer without boto3's metadata, checked against the model's output shape."""
    body = {k: v for k, v in answer.items() if k != "ResponseMetadata"}
    shape = service_model().operation_model(operation).output_shape
    if shape is None:
        assert body == {}
        return body
    report = ParamValidator().validate(body, shape)
    assert not report.has_errors(), report.generate_report()
    return body


def _resource_version(arn: str) -> dict[str, Any]:
    """A resource definition version of one secret resource, "r1"."""
    data = {"SecretsManagerSecretResourceData": {"ARN": arn}}
    return {"Resources": [{"Id": "r1", "Name": "r1", "ResourceDataContainer": data}]}


def _secret_resources(served: Served, client: Any) -> dict[str, Any]:
    arn = served.create_secret(f"s-{secrets.token_hex(3)}")
    created: dict[str, Any] = client.create_resource_definition(
        Name="resources", InitialVersion=_resource_version(arn)
    )
    return created


def _group_with_core(served: Served, client: Any, **refs: str) -> dict[str, Any]:
    if not served.thing:
        served.thing = f"core-{secrets.token_hex(4)}"
    core_arn = served.core_definition(client)
    group: dict[str, Any] = client.create_group(
        Name="MyGroup", InitialVersion={"CoreDefinitionVersionArn": core_arn, **refs}
    )
    return group


# --- renames and deletes ----------------------------------------------------------------------


def test_groups_and_definitions_are_renamed_and_deleted_as_aws_does(served: Served) -> None:
    """update-group and every update-X-definition rename; delete-X-definition deletes.

    A definition a group version names can still be deleted: the group version keeps the ARN,
    and deploying it fails saying the definition was deleted. A group that was never deployed
    is deleted with its versions. The AWS CLI and `edge cloud` do the same.
    """
    client = served.client()
    for kind in KINDS:
        create = getattr(client, f"create_{kind}_definition")
        update = getattr(client, f"update_{kind}_definition")
        get = getattr(client, f"get_{kind}_definition")
        key = f"{kind.capitalize()}DefinitionId"
        created = create(Name="before")
        shaped(
            f"Update{kind.capitalize()}Definition",
            update(**{key: created["Id"], "Name": f"after {kind}"}),
        )
        shown = get(**{key: created["Id"]})
        assert shown["Name"] == f"after {kind}"
        assert shown["CreationTimestamp"] == created["CreationTimestamp"]
        assert MILLISECONDS.fullmatch(shown["LastUpdatedTimestamp"])

    resources = _secret_resources(served, client)
    group = _group_with_core(
        served, client, ResourceDefinitionVersionArn=resources["LatestVersionArn"]
    )
    shaped("UpdateGroup", client.update_group(GroupId=group["Id"], Name="Renamed"))
    assert client.get_group(GroupId=group["Id"])["Name"] == "Renamed"
    bad = error_of(lambda: client.update_group(GroupId=group["Id"], Name="a\x00b"))
    assert isinstance(bad, client.exceptions.BadRequestException)
    assert "control character" in str(bad)
    assert client.get_group(GroupId=group["Id"])["Name"] == "Renamed"
    unknown = "0b7e2d4c-3a1f-4e5d-9c8b-7a6f5e4d3c2b"
    assert code(error_of(lambda: client.update_group(GroupId=unknown, Name="x"))) == (
        404,
        "IdNotFoundException",
    )

    # Delete the resource definition the group's latest version names: allowed, as in AWS.
    client.delete_resource_definition(ResourceDefinitionId=resources["Id"])
    assert code(
        error_of(lambda: client.get_resource_definition(ResourceDefinitionId=resources["Id"]))
    ) == (404, "IdNotFoundException")
    version = client.get_group_version(GroupId=group["Id"], GroupVersionId=group["LatestVersion"])
    assert version["Definition"]["ResourceDefinitionVersionArn"] == resources["LatestVersionArn"]
    refused = error_of(
        lambda: client.create_deployment(GroupId=group["Id"], DeploymentType="NewDeployment")
    )
    assert isinstance(refused, client.exceptions.BadRequestException)
    assert resources["LatestVersionArn"] in str(refused)
    assert "its definition was deleted" in str(refused)
    assert client.list_deployments(GroupId=group["Id"])["Deployments"] == []

    # The AWS CLI renames and deletes too; a group never deployed goes with its versions.
    served.aws("greengrass", "update-group", "--group-id", group["Id"], "--name", "ByCli")
    assert client.get_group(GroupId=group["Id"])["Name"] == "ByCli"
    deleted = served.aws("greengrass", "delete-group", "--group-id", group["Id"])
    assert deleted.returncode == 0, deleted.stderr
    assert code(error_of(lambda: client.get_group(GroupId=group["Id"])))[0] == 404
    assert group["Id"] not in {g["Id"] for g in client.list_groups()["Groups"]}


def test_edge_cloud_renames_and_deletes_like_the_api(served: Served) -> None:
    """`edge cloud` has update-X-definition, update-group and delete-group, on the same data.

    Like create-group, update-group needs a name; without one it changes nothing.
    """
    client = served.client()
    other = client.create_function_definition(Name="f")
    renamed = served.cloud(
        "update-function-definition", "--function-definition-id", other["Id"], "--name", "g"
    )
    assert renamed.returncode == 0, renamed.stderr
    assert renamed.stdout == ""
    assert client.get_function_definition(FunctionDefinitionId=other["Id"])["Name"] == "g"
    second = client.create_group(Name="second")
    assert served.cloud("update-group", "--group-id", second["Id"], "--name", "s2").returncode == 0
    assert client.get_group(GroupId=second["Id"])["Name"] == "s2"
    nameless = served.cloud("update-group", "--group-id", second["Id"])
    assert nameless.returncode == 2
    assert "--name: is required" in nameless.stderr
    assert client.get_group(GroupId=second["Id"])["Name"] == "s2"
    assert served.cloud("delete-group", "--group-id", second["Id"]).returncode == 0
    assert code(error_of(lambda: client.get_group(GroupId=second["Id"])))[0] == 404


# --- resets -----------------------------------------------------------------------------------


def test_a_deployed_group_is_deleted_only_after_reset_deployments(with_core: Served) -> None:
    """delete-group refuses a deployed group; reset-deployments empties the core; then it goes.

    create-deployment doesn't take ResetDeployment (AWS's model doesn't) and says to use
    reset-deployments; the reset is recorded as a deployment of type ResetDeployment, and
    ListDeployments shows CreatedAt with milliseconds, like every other timestamp.
    """
    served = with_core
    client = served.client()
    resources = _secret_resources(served, client)
    group = _group_with_core(
        served, client, ResourceDefinitionVersionArn=resources["LatestVersionArn"]
    )
    deployed = client.create_deployment(GroupId=group["Id"], DeploymentType="NewDeployment")
    served.wait_status(client, group["Id"], deployed["DeploymentId"], "Success")
    assert len(served.secrets_listing()["Secrets"]) == 1

    refused = error_of(lambda: client.delete_group(GroupId=group["Id"]))
    assert isinstance(refused, client.exceptions.BadRequestException)
    assert "reset-deployments" in str(refused)
    assert client.get_group(GroupId=group["Id"])["Name"] == "MyGroup"
    wrong_type = error_of(
        lambda: client.create_deployment(GroupId=group["Id"], DeploymentType="ResetDeployment")
    )
    assert isinstance(wrong_type, client.exceptions.BadRequestException)
    assert "reset-deployments" in str(wrong_type)
    cli_wrong = served.cloud(
        "create-deployment", "--group-id", group["Id"], "--deployment-type", "ResetDeployment"
    )
    assert cli_wrong.returncode == 2
    assert "reset-deployments" in cli_wrong.stderr

    reset = shaped("ResetDeployments", client.reset_deployments(GroupId=group["Id"]))
    assert reset["DeploymentArn"].endswith(f"/deployments/{reset['DeploymentId']}")
    status = served.wait_status(client, group["Id"], reset["DeploymentId"], "Success")
    assert status["DeploymentType"] == "ResetDeployment"
    listing = served.secrets_listing()
    assert listing["Secrets"] == []
    assert listing["Deployment"]["DeploymentType"] == "ResetDeployment"
    listed = shaped("ListDeployments", client.list_deployments(GroupId=group["Id"]))["Deployments"]
    assert [d["DeploymentType"] for d in listed] == ["ResetDeployment", "NewDeployment"]
    for entry in listed:
        assert MILLISECONDS.fullmatch(entry["CreatedAt"]), entry["CreatedAt"]
    raw = served.aws_json("greengrass", "list-deployments", "--group-id", group["Id"])
    assert MILLISECONDS.fullmatch(raw["Deployments"][0]["CreatedAt"])

    shaped("DeleteGroup", client.delete_group(GroupId=group["Id"]))
    assert code(error_of(lambda: client.get_group(GroupId=group["Id"])))[0] == 404


def test_a_forced_reset_is_recorded_when_the_core_cannot_be_reached(served: Served) -> None:
    """reset-deployments --force records the reset with no broker; without --force, nothing.

    The forced reset is a Success whose ErrorMessage says the core was not reached, and the
    group can then be deleted.
    """
    client = served.client()
    group = _group_with_core(served, client)
    dead = served.root / "dead.toml"
    text = served.config.read_text()
    url = re.search(r'url = "([^"]+)"', text)
    assert url is not None
    dead.write_text(text.replace(url[1], f"mqtt://127.0.0.1:{free_port()}"))

    def dead_cloud(*args: str) -> Any:
        return base.edge_cli("cloud", "--config", str(dead), *args)

    failed = dead_cloud("reset-deployments", "--group-id", group["Id"])
    assert failed.returncode == 2
    assert "MQTT broker" in failed.stderr
    assert client.list_deployments(GroupId=group["Id"])["Deployments"] == []

    forced = dead_cloud("reset-deployments", "--group-id", group["Id"], "--force")
    assert forced.returncode == 0, forced.stderr
    reset_id = json.loads(forced.stdout)["DeploymentId"]
    status = client.get_deployment_status(GroupId=group["Id"], DeploymentId=reset_id)
    assert status["DeploymentStatus"] == "Success"
    assert status["DeploymentType"] == "ResetDeployment"
    assert "not reached" in status["ErrorMessage"]
    client.delete_group(GroupId=group["Id"])
    assert code(error_of(lambda: client.get_group(GroupId=group["Id"])))[0] == 404


# --- tags -------------------------------------------------------------------------------------


def test_tags_are_kept_returned_and_changed_within_aws_limits(served: Served) -> None:
    """Tags given on create come back from Get and ListTagsForResource; Tag/Untag change them.

    AWS's limits hold (50 per resource, keys up to 128, values up to 256, no `aws:` keys),
    and a refused change leaves the tags as they were.
    """
    client = served.client()
    group = client.create_group(Name="tagged", tags={"team": "ops", "env": "test"})
    shown = shaped("GetGroup", client.get_group(GroupId=group["Id"]))
    assert shown["tags"] == {"team": "ops", "env": "test"}
    arn = group["Arn"]
    assert shaped("ListTagsForResource", client.list_tags_for_resource(ResourceArn=arn)) == {
        "tags": {"team": "ops", "env": "test"}
    }
    shaped("TagResource", client.tag_resource(ResourceArn=arn, tags={"env": "prod", "site": "a"}))
    shaped("UntagResource", client.untag_resource(ResourceArn=arn, TagKeys=["team", "absent"]))
    assert client.list_tags_for_resource(ResourceArn=arn)["tags"] == {"env": "prod", "site": "a"}

    for kind in KINDS:
        created = getattr(client, f"create_{kind}_definition")(Name=kind, tags={"kind": kind})
        shown = getattr(client, f"get_{kind}_definition")(
            **{f"{kind.capitalize()}DefinitionId": created["Id"]}
        )
        assert shaped(f"Get{kind.capitalize()}Definition", shown)["tags"] == {"kind": kind}

    too_many = {f"k{i}": "v" for i in range(49)}
    refusals = [
        lambda: client.tag_resource(ResourceArn=arn, tags=too_many),
        lambda: client.tag_resource(ResourceArn=arn, tags={"k" * 129: "v"}),
        lambda: client.tag_resource(ResourceArn=arn, tags={"k": "v" * 257}),
        lambda: client.tag_resource(ResourceArn=arn, tags={"aws:owner": "me"}),
        lambda: client.create_group(Name="x", tags={f"k{i}": "v" for i in range(51)}),
    ]
    for refusal in refusals:
        assert isinstance(error_of(refusal), client.exceptions.BadRequestException)
    assert client.list_tags_for_resource(ResourceArn=arn)["tags"] == {"env": "prod", "site": "a"}
    assert "x" not in {g["Name"] for g in client.list_groups()["Groups"]}
    client.tag_resource(ResourceArn=arn, tags={"k" * 128: "v" * 256})

    nowhere = f"arn:aws:greengrass:{TEST_REGION}:{ACCOUNT}:/greengrass/groups/nope"
    assert code(error_of(lambda: client.list_tags_for_resource(ResourceArn=nowhere))) == (
        400,
        "BadRequestException",
    )

    # The AWS CLI and `edge cloud` see and change the same tags.
    served.aws("greengrass", "tag-resource", "--resource-arn", arn, "--tags", "cli=yes")
    shown = served.aws_json("greengrass", "list-tags-for-resource", "--resource-arn", arn)
    assert shown["tags"]["cli"] == "yes"
    untagged = served.cloud("untag-resource", "--resource-arn", arn, "--tag-keys", "cli", "site")
    assert untagged.returncode == 0, untagged.stderr
    listed = served.cloud("list-tags-for-resource", "--resource-arn", arn)
    assert json.loads(listed.stdout)["tags"] == {"env": "prod", "k" * 128: "v" * 256}

    # `edge cloud` takes the AWS CLI's Key=Value shorthand as well as JSON.
    made = served.cloud("create-group", "--name", "cli", "--tags", "team=a,env=b")
    assert made.returncode == 0, made.stderr
    made_id = json.loads(made.stdout)["Id"]
    assert client.get_group(GroupId=made_id)["tags"] == {"team": "a", "env": "b"}

    client.delete_group(GroupId=group["Id"])
    assert code(error_of(lambda: client.list_tags_for_resource(ResourceArn=arn)))[0] == 400


# --- client tokens ----------------------------------------------------------------------------


def test_a_repeated_client_token_gets_the_first_answer(served: Served) -> None:
    """The same AmznClientToken with the same input answers as the first call, changing nothing.

    Other input under the same token is refused (IdempotentParameterMismatch). A request
    with a token, sent again byte for byte (the same signature), gets the first answer rather
    than the replay refusal; one without a token is still refused as a replay.
    """
    client = served.client()
    first = shaped("CreateGroup", client.create_group(Name="once", AmznClientToken="token-1"))
    again = shaped("CreateGroup", client.create_group(Name="once", AmznClientToken="token-1"))
    assert again == first
    assert [g["Name"] for g in client.list_groups()["Groups"]].count("once") == 1
    mismatch = error_of(lambda: client.create_group(Name="other", AmznClientToken="token-1"))
    assert isinstance(mismatch, client.exceptions.BadRequestException)
    assert "IdempotentParameterMismatch" in str(mismatch)
    # A token belongs to one operation.
    definition = client.create_core_definition(Name="once", AmznClientToken="token-1")
    assert definition["Id"] != first["Id"]

    # The same signed bytes twice: with a token, the first answer; without, a replay.
    at = dt.datetime.now(dt.UTC)
    body = json.dumps({"Name": "signed"}).encode()
    token = {"X-Amzn-Client-Token": "token-2"}
    status1, _, answer1 = signed_request(
        served, "POST", "/greengrass/groups", body, at=at, headers=token
    )
    status2, _, answer2 = signed_request(
        served, "POST", "/greengrass/groups", body, at=at, headers=token
    )
    assert (status1, status2) == (200, 200)
    assert answer1 == answer2
    untokened = json.dumps({"Name": "untokened"}).encode()
    assert signed_request(served, "POST", "/greengrass/groups", untokened, at=at)[0] == 200
    status3, headers3, _ = signed_request(served, "POST", "/greengrass/groups", untokened, at=at)
    assert (status3, headers3["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")

    # CreateDeployment with one token through the AWS CLI, twice: one deployment.
    group = _group_with_core(served, client)
    args = (
        *("greengrass", "create-deployment", "--group-id", group["Id"]),
        *("--deployment-type", "NewDeployment", "--amzn-client-token", "deploy-1"),
    )
    one = served.aws_json(*args)
    two = served.aws_json(*args)
    assert one == two
    assert len(client.list_deployments(GroupId=group["Id"])["Deployments"]) == 1
    # A failed request leaves its token free: the retry with good input is applied.
    broken = error_of(
        lambda: client.create_group_version(
            GroupId=group["Id"], CoreDefinitionVersionArn="nope", AmznClientToken="version-1"
        )
    )
    assert isinstance(broken, client.exceptions.BadRequestException)
    core_arn = client.get_group_version(GroupId=group["Id"], GroupVersionId=group["LatestVersion"])[
        "Definition"
    ]["CoreDefinitionVersionArn"]
    kept = client.create_group_version(
        GroupId=group["Id"], CoreDefinitionVersionArn=core_arn, AmznClientToken="version-1"
    )
    assert client.get_group(GroupId=group["Id"])["LatestVersion"] == kept["Version"]


def test_edge_cloud_commands_take_a_client_token_too(served: Served) -> None:
    """`edge cloud … --amzn-client-token T` repeated prints the first answer and changes nothing.

    Other arguments under the same token are refused, exit 2, as the API refuses them.
    """
    client = served.client()
    args = ("create-group", "--name", "by-cli", "--amzn-client-token", "cli-1")
    first, second = served.cloud(*args), served.cloud(*args)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert json.loads(first.stdout) == json.loads(second.stdout)
    assert [g["Name"] for g in client.list_groups()["Groups"]] == ["by-cli"]
    other = served.cloud("create-group", "--name", "else", "--amzn-client-token", "cli-1")
    assert other.returncode == 2
    assert "IdempotentParameterMismatch" in other.stderr

    group = _group_with_core(served, client)
    deploy = (
        *("create-deployment", "--group-id", group["Id"]),
        *("--deployment-type", "NewDeployment", "--amzn-client-token", "cli-deploy"),
    )
    one, two = served.cloud(*deploy), served.cloud(*deploy)
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    assert json.loads(one.stdout) == json.loads(two.stdout)
    assert len(client.list_deployments(GroupId=group["Id"])["Deployments"]) == 1


def test_a_v1_workflow_script_runs_unchanged_with_the_aws_cli(with_core: Served) -> None:
    """A V1 script, only `aws greengrass` commands, from tagged create to cleanup, on a core.

    Tags on create, a logger definition (its CloudWatch logger named in the core's note), a
    deployment retried under one client token (deployed once), a rename, the reset, then every
    delete: the core's store ends empty and nothing is left behind.
    """
    served = with_core
    arn = served.create_secret(f"s-{secrets.token_hex(3)}")
    resources = served.aws_json(
        *("greengrass", "create-resource-definition", "--name", "res", "--tags", "team=ops"),
        *("--initial-version", json.dumps(_resource_version(arn))),
    )
    loggers = served.aws_json(
        *("greengrass", "create-logger-definition", "--name", "logs"),
        "--initial-version",
        json.dumps(
            {
                "Loggers": [
                    {
                        "Id": "system",
                        "Component": "GreengrassSystem",
                        "Level": "INFO",
                        "Type": "FileSystem",
                        "Space": 256,
                    },
                    {"Id": "cw", "Component": "Lambda", "Level": "INFO", "Type": "AWSCloudWatch"},
                ]
            }
        ),
    )
    core_arn = served.core_definition(served.client())
    group = served.aws_json(
        *("greengrass", "create-group", "--name", "V1Group", "--tags", "team=ops"),
        "--initial-version",
        json.dumps(
            {
                "CoreDefinitionVersionArn": core_arn,
                "ResourceDefinitionVersionArn": resources["LatestVersionArn"],
                "LoggerDefinitionVersionArn": loggers["LatestVersionArn"],
            }
        ),
    )
    gid = group["Id"]
    tags = served.aws_json("greengrass", "list-tags-for-resource", "--resource-arn", group["Arn"])
    assert tags["tags"] == {"team": "ops"}
    deploy = (
        *("greengrass", "create-deployment", "--group-id", gid),
        *("--deployment-type", "NewDeployment", "--amzn-client-token", "v1-deploy"),
    )
    deployed = served.aws_json(*deploy)
    assert served.aws_json(*deploy) == deployed
    served.wait_status(served.client(), gid, deployed["DeploymentId"], "Success")
    assert len(served.secrets_listing()["Secrets"]) == 1
    assert served.core is not None
    ignored = served.core.wait_for_event("deploy.ignored")["note"]
    assert 'AWSCloudWatch logger "cw"' in ignored
    assert (
        served.aws("greengrass", "update-group", "--group-id", gid, "--name", "Renamed").returncode
        == 0
    )

    refused = served.aws("greengrass", "delete-group", "--group-id", gid)
    assert refused.returncode != 0
    assert "BadRequestException" in refused.stderr
    assert "reset-deployments" in refused.stderr
    reset = served.aws_json("greengrass", "reset-deployments", "--group-id", gid, "--force")
    served.wait_status(served.client(), gid, reset["DeploymentId"], "Success")
    assert served.secrets_listing()["Secrets"] == []

    for args in (
        ("delete-group", "--group-id", gid),
        ("delete-resource-definition", "--resource-definition-id", resources["Id"]),
        ("delete-logger-definition", "--logger-definition-id", loggers["Id"]),
    ):
        result = served.aws("greengrass", *args)
        assert result.returncode == 0, result.stderr
    assert served.aws_json("greengrass", "list-groups")["Groups"] == []
    assert served.aws_json("greengrass", "list-resource-definitions")["Definitions"] == []
