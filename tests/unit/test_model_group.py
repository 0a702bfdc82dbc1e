"""Tests for edge.model.group: parsing a V1 group and enforcing its rules."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from edge.errors import DeploymentInvalidError
from edge.fixtures.reference import REFERENCE_ARN, REFERENCE_FUNCTION_JSON, REFERENCE_RESOURCE_JSON
from edge.model import (
    MAX_NESTING_DEPTH,
    Connector,
    Function,
    Group,
    OtherResource,
    ResourceAccessPolicy,
    SecretResource,
    parse_group,
)

TWILIO_ARN = (
    "arn:aws:secretsmanager:us-west-2:123456789012:secret:greengrass-TwilioAuthToken-ntSlp6"
)
TWILIO_CONNECTOR_ARN = "arn:aws:greengrass:us-west-2::/connectors/TwilioNotifications/versions/4"


def arn(name: str = "app-token", suffix: str = "AbC123") -> str:
    return f"arn:aws:secretsmanager:us-west-2:123456789012:secret:{name}-{suffix}"


def secret(rid: str = "token", arn_text: str = REFERENCE_ARN, labels: Any = None) -> dict[str, Any]:
    data: dict[str, Any] = {"ARN": arn_text}
    if labels is not None:
        data["AdditionalStagingLabelsToDownload"] = labels
    return {
        "Id": rid,
        "Name": f"name-{rid[:120]}",
        "ResourceDataContainer": {"SecretsManagerSecretResourceData": data},
    }


def device(rid: str = "serial") -> dict[str, Any]:
    return {
        "Id": rid,
        "Name": "SerialPort",
        "ResourceDataContainer": {
            "LocalDeviceResourceData": {
                "SourcePath": "/dev/ttyS0",
                "GroupOwnerSetting": {"AutoAddGroupOwner": False},
            }
        },
    }


def function(fid: str = "f1", policies: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    return {
        "Id": fid,
        "FunctionArn": f"arn:aws:lambda:us-west-2:123456789012:function:{fid}:1",
        "FunctionConfiguration": {
            "Environment": {
                "ResourceAccessPolicies": [
                    {"ResourceId": rid, "Permission": perm} for rid, perm in policies or []
                ]
            }
        },
    }


def connector(cid: str = "c1", parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"Id": cid, "ConnectorArn": TWILIO_CONNECTOR_ARN, "Parameters": parameters or {}}


def subscription(sid: str = "s1") -> dict[str, Any]:
    return {"Id": sid, "Source": "cloud", "Subject": "alerts/#", "Target": "GGShadowService"}


def rejected(group: object) -> str:
    """Parse a group that must be invalid; return the problem text."""
    with pytest.raises(DeploymentInvalidError) as info:
        parse_group(group)
    assert info.value.deployment_id is None
    assert str(info.value) == f"invalid deployment document: {info.value.problem}"
    return info.value.problem


# --- the reference documents --------------------------------------------------------------------


def test_reference_secret_resource() -> None:
    """The documentation's secret resource parses with its ARN, name and labels."""
    group = parse_group({"Resources": [json.loads(REFERENCE_RESOURCE_JSON)]})
    assert group.secret_resources == (
        SecretResource(
            resource_id="my-resource-id",
            name="MySecretResource",
            arn=REFERENCE_ARN,
            additional_labels=("Label1", "Label2"),
        ),
    )
    resource = group.secret("my-resource-id")
    assert resource is not None
    assert resource.labels == ("AWSCURRENT", "Label1", "Label2")
    assert resource.secret_name == "greengrass-SomeSecret"


def test_reference_function_with_its_resource() -> None:
    """The documentation's function parses when the group holds the MyApiKey it names."""
    function_obj = json.loads(REFERENCE_FUNCTION_JSON)
    group = parse_group({"Resources": [secret("MyApiKey")], "Functions": [function_obj]})
    (parsed,) = group.functions
    assert parsed.function_id == "MyLambdaFunction"
    assert parsed.function_arn == "arn:aws:lambda:us-west-2:123456789012:function:myFunction:1"
    assert parsed.access_policies == (
        ResourceAccessPolicy(resource_id="MyApiKey", permission="ro"),
    )
    assert parsed.raw == function_obj
    assert parsed.may_read("MyApiKey")
    assert not parsed.may_read("my-resource-id")


def test_reference_documents_together_are_rejected() -> None:
    """Taken together, the two examples don't match: the function names a missing resource."""
    problem = rejected(
        {
            "Resources": [json.loads(REFERENCE_RESOURCE_JSON)],
            "Functions": [json.loads(REFERENCE_FUNCTION_JSON)],
        }
    )
    assert problem == (
        'Functions[0] (Id "MyLambdaFunction"): FunctionConfiguration.Environment.'
        'ResourceAccessPolicies[0].ResourceId "MyApiKey" names no resource of the group'
    )


# --- the model -----------------------------------------------------------------------------------


def test_empty_group() -> None:
    """An empty object is the empty group, the same as Group()."""
    assert parse_group({}) == Group()


def test_lists_may_be_absent_or_empty_and_unknown_keys_are_ignored() -> None:
    """Absent lists are empty, and V1 sections we don't use (Cores, Loggers) are allowed."""
    group = parse_group({"Resources": [], "Cores": [{"Id": "core"}], "Loggers": {"x": 1}})
    assert group == Group()


def test_labels_put_awscurrent_first_without_duplicates() -> None:
    """Labels start with AWSCURRENT and have no repeats, whatever order the group lists them in."""
    resource = SecretResource(
        resource_id="r",
        name="n",
        arn=REFERENCE_ARN,
        additional_labels=("B", "AWSCURRENT", "A", "B"),
    )
    assert resource.labels == ("AWSCURRENT", "B", "A")
    assert SecretResource(resource_id="r", name="n", arn=REFERENCE_ARN).labels == ("AWSCURRENT",)


def test_secret_resource_refuses_a_bad_arn() -> None:
    """Building a SecretResource directly with a malformed ARN raises ValueError."""
    with pytest.raises(ValueError, match="partial ARNs"):
        SecretResource(resource_id="r", name="n", arn=REFERENCE_ARN.removesuffix("-KUj89s"))


@pytest.mark.parametrize(
    "container",
    [
        "LocalDeviceResourceData",
        "LocalVolumeResourceData",
        "S3MachineLearningModelResourceData",
        "SageMakerMachineLearningModelResourceData",
    ],
)
def test_other_resource_types_are_kept(container: str) -> None:
    """Every other V1 resource type becomes an OtherResource with its container key as kind."""
    group = parse_group(
        {"Resources": [{"Id": "r", "Name": "n", "ResourceDataContainer": {container: {}}}]}
    )
    assert group.other_resources == (OtherResource(resource_id="r", name="n", kind=container),)
    assert group.secret("r") is None


def test_secret_lookup() -> None:
    """Group.secret finds a secret resource by id and returns None for others and unknowns."""
    group = parse_group(
        {"Resources": [device("dev"), secret("a", arn("a")), secret("b", arn("b"))]}
    )
    found = group.secret("b")
    assert found is not None
    assert found.arn == arn("b")
    assert group.secret("dev") is None
    assert group.secret("missing") is None


def test_functions_may_read_other_resources_rw() -> None:
    """A function may get "rw" on a non-secret resource, and "ro" on a secret."""
    group = parse_group(
        {
            "Resources": [device("dev"), secret("tok")],
            "Functions": [function("f", [("dev", "rw"), ("tok", "ro")])],
        }
    )
    (parsed,) = group.functions
    assert parsed.may_read("dev")
    assert parsed.may_read("tok")
    assert not parsed.may_read("other")


def test_function_keeps_unknown_configuration() -> None:
    """FunctionConfiguration keys we don't read are kept in raw, and raw is a copy."""
    obj = function("f")
    obj["FunctionConfiguration"].update(
        {"Handler": "app.handler", "Execution": {"RunAs": {"Uid": 1000, "Gid": 1000}}}
    )
    obj["FunctionConfiguration"]["Environment"]["Variables"] = {"MODE": "prod"}
    document = {"Functions": [obj]}
    group = parse_group(document)
    expected = copy.deepcopy(obj)
    obj["FunctionConfiguration"]["Handler"] = "changed"
    assert group.functions[0].raw == expected


def test_twilio_connector() -> None:
    """A connector whose ARN parameter matches the resource its -ResourceId names is accepted."""
    params = {
        "TwilioAuthTokenSecretArn": TWILIO_ARN,
        "TwilioAuthTokenSecretArn-ResourceId": "TwilioAuthToken",
        "TwilioAccountSid": "ACxxxxxxxx",
        "DefaultFromPhoneNumber": "+19999999999",
    }
    group = parse_group(
        {
            "Resources": [secret("TwilioAuthToken", TWILIO_ARN)],
            "Connectors": [connector("MyTwilioNotificationsConnector", params)],
        }
    )
    (parsed,) = group.connectors
    assert parsed == Connector(
        connector_id="MyTwilioNotificationsConnector",
        connector_arn=TWILIO_CONNECTOR_ARN,
        parameters=params,
    )
    assert parsed.secret_resource_ids() == ("TwilioAuthToken",)
    assert group.connector_secrets(parsed) == group.secret_resources


def test_modbus_connector_names_a_device_resource() -> None:
    """A -ResourceId may name a non-secret resource (Modbus's serial port); only secrets count."""
    params = {"ModbusSerialPort-ResourceId": "serial", "ModbusSerialPort": "/path/to/port"}
    group = parse_group({"Resources": [device("serial")], "Connectors": [connector("m", params)]})
    (parsed,) = group.connectors
    assert parsed.secret_resource_ids() == ("serial",)
    assert group.connector_secrets(parsed) == ()


def test_secret_resource_ids_without_repeats() -> None:
    """secret_resource_ids lists each id once, in parameter order."""
    built = Connector(
        connector_id="c",
        connector_arn="x",
        parameters={"B-ResourceId": "b", "A-ResourceId": "a", "C-ResourceId": "b", "Other": "z"},
    )
    assert built.secret_resource_ids() == ("b", "a")


def test_subscriptions_are_kept() -> None:
    """Subscriptions are kept as given, with unknown keys."""
    sub = dict(subscription(), Extra=[1, 2])
    assert parse_group({"Subscriptions": [sub]}).subscriptions == (sub,)


def test_group_is_hashable_and_comparable() -> None:
    """Groups are frozen values: equal when parsed from equal input, and hashable."""
    obj = {"Resources": [secret()], "Functions": [function("f", [("token", "ro")])]}
    first, second = parse_group(obj), parse_group(copy.deepcopy(obj))
    assert first == second
    assert hash(first) == hash(second)
    assert isinstance(first.functions[0], Function)


# --- rules: types and shapes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ([], "Group must be an object, not an array"),
        (None, "Group must be an object, not null"),
        ({"Resources": {}}, "Group: Resources must be an array, not an object"),
        ({"Functions": "f"}, "Group: Functions must be an array, not a string"),
        ({"Connectors": 1}, "Group: Connectors must be an array, not a number"),
        ({"Subscriptions": True}, "Group: Subscriptions must be an array, not a boolean"),
        ({"Resources": [[]]}, "Resources[0] must be an object, not an array"),
        ({"Resources": [{"Name": "n"}]}, "Resources[0]: Id is missing"),
        ({"Resources": [{"Id": 7}]}, "Resources[0]: Id must be a string, not a number"),
        ({"Resources": [{"Id": ""}]}, 'Resources[0] (Id ""): Id must not be empty'),
        ({"Functions": [None]}, "Functions[0] must be an object, not null"),
        ({"Connectors": [{"Id": "c"}]}, 'Connectors[0] (Id "c"): ConnectorArn is missing'),
        ({"Subscriptions": ["s"]}, "Subscriptions[0] must be an object, not a string"),
    ],
)
def test_wrong_shapes_are_named(group: object, expected: str) -> None:
    """A wrong type anywhere is an error naming the path, never a TypeError or KeyError."""
    assert rejected(group) == expected


@pytest.mark.parametrize("bad_id", ["has space", "a/b", "a.b", "é", "x" * 129, "a\nb", "#", "+"])
def test_ids_must_match_the_greengrass_pattern(bad_id: str) -> None:
    """Ids must be 1-128 characters of letters, digits, ":", "_" and "-"."""
    for section, entry in (
        ("Resources", secret(bad_id)),
        ("Functions", function(bad_id)),
        ("Connectors", connector(bad_id)),
        ("Subscriptions", subscription(bad_id)),
    ):
        problem = rejected({section: [entry]})
        assert problem.startswith(f"{section}[0] (Id ")
        assert 'must be 1-128 characters of letters, digits, ":", "_" or "-"' in problem


def test_id_of_128_characters_is_accepted() -> None:
    """An id of exactly 128 allowed characters is accepted."""
    rid = "a:b_c-" + "x" * 122
    assert parse_group({"Resources": [secret(rid)]}).secret(rid) is not None


def test_resource_name_rules() -> None:
    """A resource Name is required, a string, printable and at most 128 characters."""
    entry = secret("r")
    del entry["Name"]
    assert rejected({"Resources": [entry]}) == 'Resources[0] (Id "r"): Name is missing'
    entry["Name"] = ["n"]
    assert "Name must be a string, not an array" in rejected({"Resources": [entry]})
    entry["Name"] = "a\x00b"
    assert "Name must be at most 128 printable characters" in rejected({"Resources": [entry]})
    entry["Name"] = "n" * 129
    assert "Name must be at most 128 printable characters" in rejected({"Resources": [entry]})


@pytest.mark.parametrize(
    ("container", "fragment"),
    [
        ({}, "ResourceDataContainer must have exactly one key, the resource type; it has 0"),
        (
            {
                "SecretsManagerSecretResourceData": {"ARN": REFERENCE_ARN},
                "LocalDeviceResourceData": {},
            },
            "ResourceDataContainer must have exactly one key, the resource type; it has 2",
        ),
        ({"IotThing": {}}, 'ResourceDataContainer has unknown resource type "IotThing"'),
        ([], "ResourceDataContainer must be an object, not an array"),
        (
            {"LocalVolumeResourceData": "x"},
            "ResourceDataContainer.LocalVolumeResourceData must be an object, not a string",
        ),
        (
            {"SecretsManagerSecretResourceData": []},
            "ResourceDataContainer.SecretsManagerSecretResourceData must be an object",
        ),
        (
            {"SecretsManagerSecretResourceData": {}},
            "ResourceDataContainer.SecretsManagerSecretResourceData.ARN is missing",
        ),
        (
            {"SecretsManagerSecretResourceData": {"ARN": 5}},
            "SecretsManagerSecretResourceData.ARN must be a string, not a number",
        ),
    ],
)
def test_resource_data_container_rules(container: object, fragment: str) -> None:
    """A ResourceDataContainer holds exactly one known resource type, of the right shape."""
    problem = rejected(
        {"Resources": [{"Id": "r", "Name": "n", "ResourceDataContainer": container}]}
    )
    assert problem.startswith('Resources[0] (Id "r"): ')
    assert fragment in problem


def test_missing_container() -> None:
    """A resource without ResourceDataContainer is rejected, naming it."""
    problem = rejected({"Resources": [{"Id": "r", "Name": "n"}]})
    assert problem == 'Resources[0] (Id "r"): ResourceDataContainer is missing'


# --- rules: secret resources -----------------------------------------------------------------


def test_malformed_arn_names_the_resource() -> None:
    """A malformed secret ARN is rejected, naming the resource and the ARN's problem."""
    bad = REFERENCE_ARN.replace("secretsmanager", "ssm")
    problem = rejected({"Resources": [secret("ok", arn("ok")), secret("bad-one", bad)]})
    assert problem.startswith(
        'Resources[1] (Id "bad-one"): ResourceDataContainer.SecretsManagerSecretResourceData.ARN '
        "is invalid: secret ARN"
    )
    assert 'service "ssm"' in problem


def test_the_same_secret_twice_is_rejected_even_with_another_suffix() -> None:
    """Two resources naming one secret (same partition, region, account, name) are rejected."""
    problem = rejected(
        {"Resources": [secret("first", arn("db", "AAAAAA")), secret("second", arn("db", "BBBBBB"))]}
    )
    assert problem == (
        'Resources[1] (Id "second") references secret "db", which Resources[0] (Id "first") '
        "already references; a group may reference a secret only once"
    )


def test_same_name_in_another_region_is_another_secret() -> None:
    """Secrets with one name in two regions are two secrets, and both may be referenced."""
    other = arn("db").replace("us-west-2", "eu-west-1")
    group = parse_group({"Resources": [secret("a", arn("db")), secret("b", other)]})
    assert len(group.secret_resources) == 2


def test_duplicate_resource_ids() -> None:
    """Two resources with one id are rejected, naming both, whatever their types."""
    problem = rejected({"Resources": [secret("dup", arn("a")), device("dup")]})
    assert problem == (
        'Resources[1] (Id "dup"): Id is also the Id of Resources[0] (Id "dup"); '
        "resource ids must be unique"
    )


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        ("Label1", "AdditionalStagingLabelsToDownload must be an array, not a string"),
        ([1], "AdditionalStagingLabelsToDownload[0] must be a string, not a number"),
        (["ok", None], "AdditionalStagingLabelsToDownload[1] must be a string, not null"),
        ([""], "AdditionalStagingLabelsToDownload[0] must not be empty"),
        (["has space"], '"has space" must not contain whitespace or control characters'),
        (["tab\t"], "must not contain whitespace or control characters"),
        (["nl\n"], "must not contain whitespace or control characters"),
        (["bell\x07"], "must not contain whitespace or control characters"),
        (["x" * 257], "AdditionalStagingLabelsToDownload[0] is longer than 256 characters"),
    ],
)
def test_bad_staging_labels(labels: object, fragment: str) -> None:
    """Staging labels must be 1-256 characters without whitespace or control characters."""
    problem = rejected({"Resources": [secret("tok", labels=labels)]})
    assert problem.startswith('Resources[0] (Id "tok"): ResourceDataContainer.')
    assert fragment in problem


def test_good_staging_labels() -> None:
    """Labels of 1 and 256 characters, non-ASCII letters and AWSCURRENT itself are accepted."""
    labels = ["x", "y" * 256, "Étiquette", "AWSPREVIOUS", "AWSCURRENT"]
    found = parse_group({"Resources": [secret("tok", labels=labels)]}).secret("tok")
    assert found is not None
    assert found.additional_labels == tuple(labels)
    assert found.labels == ("AWSCURRENT", "x", "y" * 256, "Étiquette", "AWSPREVIOUS")


# --- rules: functions ----------------------------------------------------------------------------


def test_duplicate_function_ids() -> None:
    """Two functions with one id are rejected, naming both."""
    problem = rejected({"Functions": [function("f"), function("g"), function("f")]})
    assert problem == (
        'Functions[2] (Id "f"): Id is also the Id of Functions[0] (Id "f"); '
        "function ids must be unique"
    )


def test_policy_on_a_missing_resource() -> None:
    """A ResourceAccessPolicies entry naming a resource not in the group is rejected."""
    problem = rejected(
        {
            "Resources": [secret("tok")],
            "Functions": [function("f", [("tok", "ro"), ("gone", "ro")])],
        }
    )
    assert problem == (
        'Functions[0] (Id "f"): FunctionConfiguration.Environment.ResourceAccessPolicies[1]'
        '.ResourceId "gone" names no resource of the group'
    )


def test_rw_on_a_secret_is_rejected() -> None:
    """Only "ro" is allowed on a secret resource."""
    problem = rejected(
        {"Resources": [secret("tok")], "Functions": [function("f", [("tok", "rw")])]}
    )
    assert problem == (
        'Functions[0] (Id "f"): FunctionConfiguration.Environment.ResourceAccessPolicies[0]'
        '.Permission is "rw" for secret resource "tok"; only "ro" is allowed on a secret resource'
    )


@pytest.mark.parametrize("permission", ["RO", "r", "rx", "read", " ro"])
def test_unknown_permissions(permission: str) -> None:
    """Only "ro" and "rw" exist; anything else is rejected even on non-secret resources."""
    problem = rejected(
        {"Resources": [device("dev")], "Functions": [function("f", [("dev", permission)])]}
    )
    assert problem.startswith('Functions[0] (Id "f"): ')
    assert "Permission " in problem
    assert 'must be "ro" or "rw"' in problem


def test_policy_shapes() -> None:
    """Policies must be objects with string ResourceId and Permission."""
    entry = function("f")
    env = entry["FunctionConfiguration"]["Environment"]
    env["ResourceAccessPolicies"] = [{"ResourceId": "tok"}]
    base = 'Functions[0] (Id "f"): FunctionConfiguration.Environment.ResourceAccessPolicies'
    group = {"Resources": [secret("tok")], "Functions": [entry]}
    assert rejected(group) == f"{base}[0].Permission is missing"
    env["ResourceAccessPolicies"] = [{"ResourceId": ["tok"], "Permission": "ro"}]
    assert rejected(group) == f"{base}[0].ResourceId must be a string, not an array"
    env["ResourceAccessPolicies"] = ["tok"]
    assert rejected(group) == f"{base}[0] must be an object, not a string"
    env["ResourceAccessPolicies"] = {"tok": "ro"}
    assert rejected(group) == f"{base} must be an array, not an object"


def test_policy_granted_twice() -> None:
    """One function listing the same resource twice is rejected: the permission is ambiguous."""
    problem = rejected(
        {"Resources": [device("dev")], "Functions": [function("f", [("dev", "ro"), ("dev", "rw")])]}
    )
    assert problem.endswith(
        'ResourceAccessPolicies[1].ResourceId "dev" is granted twice to this function'
    )


def test_function_configuration_shapes() -> None:
    """FunctionArn, FunctionConfiguration, Environment and Variables are type-checked."""
    entry = function("f")
    group = {"Functions": [entry]}
    entry["FunctionConfiguration"]["Environment"]["Variables"] = {"A": "1", "B": 2}
    assert rejected(group) == (
        'Functions[0] (Id "f"): FunctionConfiguration.Environment.Variables["B"] must be a '
        "string, not a number"
    )
    entry["FunctionConfiguration"]["Environment"] = []
    assert rejected(group) == (
        'Functions[0] (Id "f"): FunctionConfiguration.Environment must be an object, not an array'
    )
    entry["FunctionConfiguration"] = "config"
    assert rejected(group) == (
        'Functions[0] (Id "f"): FunctionConfiguration must be an object, not a string'
    )
    del entry["FunctionArn"]
    assert rejected(group) == 'Functions[0] (Id "f"): FunctionArn is missing'


def test_function_without_configuration() -> None:
    """A function without FunctionConfiguration has no access policies."""
    parsed = parse_group({"Functions": [{"Id": "f", "FunctionArn": "arn:x"}]}).functions[0]
    assert parsed.access_policies == ()


# --- rules: connectors and subscriptions -----------------------------------------------------


def test_duplicate_connector_ids() -> None:
    """Two connectors with one id are rejected, naming both."""
    problem = rejected({"Connectors": [connector("c"), connector("c")]})
    assert problem == (
        'Connectors[1] (Id "c"): Id is also the Id of Connectors[0] (Id "c"); '
        "connector ids must be unique"
    )


def test_connector_resource_id_naming_a_missing_resource() -> None:
    """A -ResourceId parameter naming no resource of the group is rejected."""
    params = {"TwilioAuthTokenSecretArn-ResourceId": "TwilioAuthToken"}
    problem = rejected({"Connectors": [connector("twilio", params)]})
    assert problem == (
        'Connectors[0] (Id "twilio"): Parameters["TwilioAuthTokenSecretArn-ResourceId"] '
        '"TwilioAuthToken" names no resource of the group'
    )


def test_connector_arn_parameter_mismatch() -> None:
    """The ARN parameter paired with a -ResourceId must hold that resource's ARN."""
    params = {
        "TwilioAuthTokenSecretArn": arn("other"),
        "TwilioAuthTokenSecretArn-ResourceId": "TwilioAuthToken",
    }
    problem = rejected(
        {
            "Resources": [secret("TwilioAuthToken", TWILIO_ARN)],
            "Connectors": [connector("twilio", params)],
        }
    )
    assert problem.startswith(
        'Connectors[0] (Id "twilio"): Parameters["TwilioAuthTokenSecretArn"] '
        f'"{arn("other")}" is not the ARN of resource "TwilioAuthToken" named by '
        "TwilioAuthTokenSecretArn-ResourceId"
    )


def test_connector_without_paired_arn_parameter() -> None:
    """A -ResourceId without its paired parameter is accepted; there is nothing to compare."""
    params = {"SecretArn-ResourceId": "tok"}
    group = parse_group({"Resources": [secret("tok")], "Connectors": [connector("c", params)]})
    assert group.connector_secrets(group.connectors[0]) == group.secret_resources


def test_connector_parameter_shapes() -> None:
    """Parameters must be an object of strings."""
    problem = rejected({"Connectors": [connector("c", {"Port": 8080})]})
    assert problem == 'Connectors[0] (Id "c"): Parameters["Port"] must be a string, not a number'
    entry = connector("c")
    entry["Parameters"] = [["Port", "8080"]]
    assert rejected({"Connectors": [entry]}) == (
        'Connectors[0] (Id "c"): Parameters must be an object, not an array'
    )


@pytest.mark.parametrize("key", ["Id", "Source", "Subject", "Target"])
def test_subscription_fields(key: str) -> None:
    """Subscriptions need string Id, Source, Subject and Target."""
    entry = subscription("s")
    entry[key] = 3
    assert rejected({"Subscriptions": [entry]}).endswith(f"{key} must be a string, not a number")
    del entry[key]
    assert rejected({"Subscriptions": [entry]}).endswith(f"{key} is missing")


def test_duplicate_subscription_ids() -> None:
    """Two subscriptions with one id are rejected."""
    problem = rejected({"Subscriptions": [subscription("s"), subscription("s")]})
    assert problem.startswith('Subscriptions[1] (Id "s"): Id is also the Id of Subscriptions[0]')


# --- rules: data that only a hostile document carries ------------------------------------------


def nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


def test_deep_nesting_inside_a_function_is_rejected() -> None:
    """Nesting beyond MAX_NESTING_DEPTH is rejected, naming the entry, before anything recurses."""
    entry = function("deep")
    entry["FunctionConfiguration"]["Custom"] = nested(2000)
    problem = rejected({"Functions": [entry]})
    assert (
        problem == f'Functions[0] (Id "deep") is nested more than {MAX_NESTING_DEPTH} levels deep'
    )


def test_nesting_at_the_limit_is_accepted() -> None:
    """A group exactly MAX_NESTING_DEPTH levels deep is accepted."""
    entry = function("f")
    # Levels: the group is 1, Functions 2, the entry 3, FunctionConfiguration 4, Custom 5.
    entry["FunctionConfiguration"]["Custom"] = nested(MAX_NESTING_DEPTH - 5)
    parse_group({"Functions": [entry]})
    entry["FunctionConfiguration"]["Custom"] = nested(MAX_NESTING_DEPTH - 4)
    rejected({"Functions": [entry]})


def test_lone_surrogates_are_rejected() -> None:
    """Strings that can't be stored as UTF-8 are rejected, naming the entry."""
    entry = subscription("s")
    entry["Subject"] = "topic\ud800"
    assert rejected({"Subscriptions": [entry]}) == (
        'Subscriptions[0] (Id "s") contains a string with a lone UTF-16 surrogate'
    )
    assert rejected({"Loggers": {"\udfff": 1}}) == (
        "Group: Loggers contains a string with a lone UTF-16 surrogate"
    )


def test_non_json_python_values_are_rejected() -> None:
    """parse_group called with Python objects that JSON can't produce raises, never crashes."""
    assert rejected({1: []}) == "Group has a key that is a number, not a string"
    assert rejected({"Resources": [{"Id": {1, 2}}]}) == (
        "Resources[0] contains a Python set, which is not JSON data"
    )
    assert rejected({"Functions": [{(1,): "x"}]}) == (
        "Functions[0] has a key that is a Python tuple, not a string"
    )


def test_messages_quote_only_a_short_excerpt() -> None:
    """An oversized field is quoted truncated, so the error never echoes the whole value."""
    long_id = "x" * 5000
    problem = rejected({"Resources": [secret(long_id)]})
    assert long_id not in problem
    assert len(problem) < 400
