# SPDX-License-Identifier: Apache-2.0
"""The connector catalogue, connectors as workers, and connectors.schema: parameters, grants."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from connectors.schema import ConnectorManifest, Parameter, ParameterError
from edge.cloud.errors import DefinitionInvalidError
from edge.cloud.groups import ResolvedGroup, validate_group
from edge.errors import DeploymentInvalidError
from edge.model import parse_group
from edge.model.connectors import builtin_connectors, parse_connector_arn
from edge.secrets.contents import LocalSecret, SecretVersion, StoreContents
from edge.secrets.index import SecretIndex
from edge.workers.connectors import PARAMETERS_VARIABLE, connector_code_dirs, connector_specs
from edge.workers.process import worker_environment
from edge.workers.router import same_function
from edge.workers.services import ServiceError, get_secret_value
from edge.workers.spec import function_specs

SM = "arn:aws:secretsmanager:us-west-2:123456789012:secret:"
TOKEN_ARN = SM + "greengrass-TwilioAuthToken-ntSlp6"
OTHER_ARN = SM + "greengrass-Other-Ab12Cd"
HOOK_ARN = SM + "hook-token-Zz9Yy8"
TWILIO = "arn:aws:greengrass:us-west-2::/connectors/TwilioNotifications/versions/4"
WEBHOOK = "arn:aws:greengrass:us-west-2::/connectors/Webhook/versions/1"
READER = "arn:aws:lambda:us-west-2:123456789012:function:reader:1"
REPO = Path(__file__).resolve().parents[2]


def secret(rid: str, arn: str) -> dict[str, Any]:
    return {
        "Id": rid,
        "Name": rid,
        "ResourceDataContainer": {"SecretsManagerSecretResourceData": {"ARN": arn}},
    }


def device(rid: str) -> dict[str, Any]:
    return {
        "Id": rid,
        "Name": rid,
        "ResourceDataContainer": {"LocalDeviceResourceData": {"SourcePath": "/dev/ttyS0"}},
    }


def twilio(cid: str = "twilio", arn: str = TWILIO, **changes: str | None) -> dict[str, Any]:
    """The V1 documentation's Twilio connector; `changes` set (or, with None, drop) parameters."""
    parameters: dict[str, str] = {
        "TWILIO_ACCOUNT_SID": "abcd12345xyz",
        "TwilioAuthTokenSecretArn": TOKEN_ARN,
        "TwilioAuthTokenSecretArn-ResourceId": "MyTwilioSecret",
        "DefaultFromPhoneNumber": "+19999999999",
        "IsolationMode": "GreengrassContainer",
    }
    for name, value in changes.items():
        key = name.replace("_ResourceId", "-ResourceId")
        if value is None:
            parameters.pop(key, None)
        else:
            parameters[key] = value
    return {"Id": cid, "ConnectorArn": arn, "Parameters": parameters}


def webhook(cid: str = "hook") -> dict[str, Any]:
    return {
        "Id": cid,
        "ConnectorArn": WEBHOOK,
        "Parameters": {
            "WebhookUrl": "https://hooks.example.com/in?x=1",
            "BearerTokenSecretArn": HOOK_ARN,
            "BearerTokenSecretArn-ResourceId": "hook-token",
        },
    }


RESOURCES = [
    secret("MyTwilioSecret", TOKEN_ARN),
    secret("other", OTHER_ARN),
    secret("hook-token", HOOK_ARN),
    device("serial"),
]


def specs_of(*connectors: dict[str, Any]) -> Any:
    return connector_specs(parse_group({"Resources": RESOURCES, "Connectors": list(connectors)}))


def problem(*connectors: dict[str, Any]) -> str:
    with pytest.raises(DeploymentInvalidError) as info:
        specs_of(*connectors)
    return info.value.problem


# --- built-ins and ARNs ---------------------------------------------------------------------


def test_the_built_in_connectors_are_found_with_their_code() -> None:
    """Both packages are found by name, and each handler exists in its folder's module."""
    found = builtin_connectors()
    assert set(found) == {"TwilioNotifications", "Webhook"}
    assert found["TwilioNotifications"].directory == REPO / "connectors" / "twilio_notifications"
    for builtin in found.values():
        module, _, function = builtin.manifest.handler.rpartition(".")
        tree = ast.parse((builtin.directory / f"{module}.py").read_text())
        assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize(
    ("arn", "parts"),
    [
        (TWILIO, ("aws", "us-west-2", "TwilioNotifications", 4)),
        (
            "arn:aws-cn:greengrass:cn-north-1::/connectors/Webhook/versions/12",
            ("aws-cn", "cn-north-1", "Webhook", 12),
        ),
        (TWILIO.replace("us-west-2", ""), ("aws", "", "TwilioNotifications", 4)),
        (TWILIO + "/", None),
        (TWILIO.replace("versions/4", "versions/latest"), None),
        (TWILIO.replace("::", ":123456789012:"), None),
        (TWILIO.replace("greengrass", "lambda", 1), None),
        ("arn:aws:greengrass:::c", None),
        (READER, None),
    ],
)
def test_connector_arns(arn: str, parts: tuple[str, str, str, int] | None) -> None:
    """V1's form arn:PARTITION:greengrass:REGION::/connectors/NAME/versions/N, nothing else."""
    parsed = parse_connector_arn(arn)
    got = None if parsed is None else (parsed.partition, parsed.region, parsed.name, parsed.version)
    assert got == parts


# --- specs ----------------------------------------------------------------------------------


def test_a_connector_runs_as_a_pinned_worker_of_its_built_in_code() -> None:
    """Handler, folder, limits, parameters as JSON, and a grant of exactly its own secret."""
    (spec,) = specs_of(twilio())
    manifest = builtin_connectors()["TwilioNotifications"].manifest
    assert (spec.function_id, spec.function_arn, spec.name) == (
        "twilio",
        TWILIO,
        "TwilioNotifications",
    )
    assert (spec.handler, spec.pinned, spec.run_as) == ("connector.function_handler", True, None)
    assert (spec.memory_kb, spec.timeout_seconds) == (manifest.memory_kb, manifest.timeout_seconds)
    assert connector_code_dirs((spec,)) == {TWILIO: REPO / "connectors" / "twilio_notifications"}
    assert json.loads(spec.variables[PARAMETERS_VARIABLE]) == twilio()["Parameters"]
    assert spec.readable_resources == frozenset({"MyTwilioSecret"})


def test_the_worker_environment_carries_parameters_beside_the_reserved_variables() -> None:
    """Parameters arrive as one JSON variable; identity and token are the connector's own."""
    (spec,) = specs_of(twilio())
    env = worker_environment(
        spec, token="tok", socket_path=Path("/s"), code_dir=Path("/c"), control_fd=3
    )
    assert env["MY_FUNCTION_ARN"] == TWILIO
    assert env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] == "tok"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "TwilioNotifications"
    assert json.loads(env[PARAMETERS_VARIABLE])["TwilioAuthTokenSecretArn"] == TOKEN_ARN


def test_two_connectors_each_read_only_their_own_secret() -> None:
    """The core's own access check: each connector gets its secret and a 403 for the others."""
    specs = specs_of(twilio(), webhook())
    assert [s.readable_resources for s in specs] == [
        frozenset({"MyTwilioSecret"}),
        frozenset({"hook-token"}),
    ]
    versions = {
        rid: LocalSecret(
            resource_id=rid,
            arn=arn,
            name=arn.removeprefix(SM)[:-7],
            labels={"AWSCURRENT": "v1"},
            versions={"v1": SecretVersion("v1", ("AWSCURRENT",), 1.0, secret_string=rid + "!")},
        )
        for rid, arn in [
            ("MyTwilioSecret", TOKEN_ARN),
            ("other", OTHER_ARN),
            ("hook-token", HOOK_ARN),
        ]
    }
    index = SecretIndex.build(StoreContents(secrets=versions), specs)
    assert get_secret_value(index, TWILIO, {"SecretId": TOKEN_ARN})["SecretString"] == (
        "MyTwilioSecret!"
    )
    assert get_secret_value(index, WEBHOOK, {"SecretId": HOOK_ARN})["SecretString"] == (
        "hook-token!"
    )
    for caller, arn in [(TWILIO, OTHER_ARN), (TWILIO, HOOK_ARN), (WEBHOOK, TOKEN_ARN)]:
        with pytest.raises(ServiceError) as info:
            get_secret_value(index, caller, {"SecretId": arn})
        assert info.value.status == 403


def test_a_group_without_connectors_has_no_connector_specs() -> None:
    """Functions are untouched: an empty Connectors list yields nothing."""
    assert connector_specs(parse_group({"Resources": RESOURCES})) == ()
    assert function_specs(parse_group({})) == ()


@pytest.mark.parametrize(
    ("connectors", "expected"),
    [
        (
            [twilio(arn=TWILIO.replace("TwilioNotifications", "Nope"))],
            (
                'Connectors[0] (Id "twilio"): ConnectorArn names connector "Nope", which is not '
                "built into this core; it has TwilioNotifications (versions 1, 2, 3, 4, 5), "
                "Webhook (versions 1)"
            ),
        ),
        (
            [twilio(arn=TWILIO.replace("versions/4", "versions/9"))],
            (
                'Connectors[0] (Id "twilio"): ConnectorArn names version 9 of TwilioNotifications; '
                "this core has versions 1, 2, 3, 4, 5"
            ),
        ),
        (
            [twilio(arn="arn:aws:greengrass:::c")],
            (
                'Connectors[0] (Id "twilio"): ConnectorArn "arn:aws:greengrass:::c" is not a '
                "connector ARN (arn:aws:greengrass:REGION::/connectors/NAME/versions/N)"
            ),
        ),
        (
            [twilio(), twilio("again", arn=TWILIO.replace("versions/4", "versions/5"))],
            (
                'Connectors[1] (Id "again"): ConnectorArn is another TwilioNotifications '
                'connector, like Connectors[0] (Id "twilio"); a group may hold one version of a '
                "connector"
            ),
        ),
        (
            [twilio(TWILIO_ACCOUNT_SID=None)],
            (
                'Connectors[0] (Id "twilio"): Parameters["TWILIO_ACCOUNT_SID"] is required by '
                "connector TwilioNotifications"
            ),
        ),
        (
            [twilio(TWILIO_ACCOUNT_SID="ab/../cd")],
            'Connectors[0] (Id "twilio"): Parameters["TWILIO_ACCOUNT_SID"] must match [A-Za-z0-9]+',
        ),
        (
            [twilio(Colour="blue")],
            (
                'Connectors[0] (Id "twilio"): Parameters["Colour"] is not a parameter of connector '
                "TwilioNotifications; it takes TWILIO_ACCOUNT_SID, TwilioAuthTokenSecretArn, "
                "TwilioAuthTokenSecretArn-ResourceId, DefaultFromPhoneNumber, IsolationMode, "
                "TwilioBaseUrl"
            ),
        ),
        (
            [twilio(IsolationMode="Docker")],
            (
                'Connectors[0] (Id "twilio"): Parameters["IsolationMode"] must be one of '
                "GreengrassContainer, NoContainer"
            ),
        ),
        (
            [twilio(DefaultFromPhoneNumber="555-1234")],
            'Connectors[0] (Id "twilio"): Parameters["DefaultFromPhoneNumber"] must match',
        ),
        (
            [twilio(TwilioBaseUrl="http://api.example.com")],
            'Connectors[0] (Id "twilio"): Parameters["TwilioBaseUrl"] must match',
        ),
        (
            [twilio(TwilioAuthTokenSecretArn_ResourceId=None)],
            (
                'Connectors[0] (Id "twilio"): Parameters["TwilioAuthTokenSecretArn-ResourceId"] is '
                "required with TwilioAuthTokenSecretArn"
            ),
        ),
        (
            [twilio(TwilioAuthTokenSecretArn=None, TwilioAuthTokenSecretArn_ResourceId=None)],
            (
                'Connectors[0] (Id "twilio"): Parameters["TwilioAuthTokenSecretArn"] is required '
                "by connector TwilioNotifications"
            ),
        ),
        (
            [twilio(TwilioAuthTokenSecretArn="x", TwilioAuthTokenSecretArn_ResourceId="serial")],
            (
                'Connectors[0] (Id "twilio"): Parameters["TwilioAuthTokenSecretArn-ResourceId"] '
                '"serial" is not a secret resource of the group; TwilioAuthTokenSecretArn needs one'
            ),
        ),
        (
            [webhook(), {**webhook("h2"), "Parameters": {}}],
            'Connectors[1] (Id "h2"): ConnectorArn is another Webhook connector',
        ),
    ],
)
def test_every_bad_connector_fails_the_deployment_naming_it(
    connectors: list[dict[str, Any]], expected: str
) -> None:
    """Unknown connectors, versions, repeats and bad Parameters name the entry and parameter."""
    assert problem(*connectors).startswith(expected)


def test_good_parameter_values_are_accepted() -> None:
    """V1's example values, a loopback or https base URL, an empty default sender."""
    for changes in [
        {},
        {"TwilioBaseUrl": "https://api.twilio.com"},
        {"TwilioBaseUrl": "http://127.0.0.1:8080/twilio"},
        {"TwilioBaseUrl": "http://localhost"},
        {"DefaultFromPhoneNumber": "", "IsolationMode": "NoContainer"},
        {"DefaultFromPhoneNumber": None, "IsolationMode": None},
    ]:
        (spec,) = specs_of(twilio(**changes))
        assert spec.readable_resources == frozenset({"MyTwilioSecret"})


def test_create_group_version_runs_the_same_connector_checks() -> None:
    """The control plane refuses, at create-group-version, what the core would refuse."""
    bad = twilio(arn=TWILIO.replace("TwilioNotifications", "Nope"))
    group = {"Resources": RESOURCES, "Functions": [], "Connectors": [bad], "Subscriptions": []}
    with pytest.raises(DefinitionInvalidError) as info:
        validate_group(ResolvedGroup(group=group, thing_name=None))
    assert 'Connectors[0] (Id "twilio"): ConnectorArn names connector "Nope"' in str(info.value)
    group["Connectors"] = [twilio(), webhook()]
    validate_group(ResolvedGroup(group=group, thing_name=None))


def test_subscriptions_match_connector_arns_exactly() -> None:
    """A connector ARN is its own identity: no qualifier games, no match with a function."""
    assert same_function(TWILIO, TWILIO)
    assert not same_function(TWILIO, TWILIO.replace("versions/4", "versions/5"))
    assert not same_function(TWILIO, READER)
    assert not same_function(TWILIO.rsplit(":", 1)[0], TWILIO)


# --- the manifest schema --------------------------------------------------------------------

MANIFEST = ConnectorManifest(
    name="Example",
    versions=(1,),
    handler="connector.function_handler",
    memory_kb=32768,
    timeout_seconds=10,
    parameters=(
        Parameter("Url", required=True, pattern=r"https://\S+"),
        Parameter("Token", secret=True),
        Parameter("Mode", choices=("a", "b")),
    ),
)


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"Url": "https://x"}, None),
        ({"Url": "https://x", "Token": "arn", "Token-ResourceId": "r", "Mode": "b"}, None),
        ({}, ("Url", "is required by connector Example")),
        ({"Url": "http://x"}, ("Url", r"must match https://\S+")),
        ({"Url": "https://x", "Mode": "c"}, ("Mode", "must be one of a, b")),
        ({"Url": "https://x", "Token": "arn"}, ("Token-ResourceId", "is required with Token")),
        (
            {"Url": "https://x", "Token-ResourceId": "r"},
            ("Token", "is required with Token-ResourceId"),
        ),
        (
            {"Url": "https://x", "Extra": ""},
            (
                "Extra",
                (
                    "is not a parameter of connector Example; it takes Url, Token, "
                    "Token-ResourceId, Mode"
                ),
            ),
        ),
    ],
)
def test_a_manifest_checks_names_presence_and_values(
    parameters: dict[str, str], expected: tuple[str, str] | None
) -> None:
    """Optional secret pairs are all or nothing; patterns match whole values."""
    if expected is None:
        MANIFEST.check(parameters)
        return
    with pytest.raises(ParameterError) as info:
        MANIFEST.check(parameters)
    assert (info.value.parameter, info.value.problem) == expected


def test_a_manifest_that_could_never_validate_is_refused() -> None:
    """Repeated names, a declared -ResourceId and a broken pattern are bugs caught at import."""
    with pytest.raises(ValueError, match="repeat"):
        ConnectorManifest(
            name="X",
            versions=(1,),
            handler="m.f",
            memory_kb=1,
            timeout_seconds=1,
            parameters=(Parameter("A"), Parameter("A")),
        )
    with pytest.raises(ValueError, match="declare the secret parameter"):
        Parameter("A-ResourceId")
    with pytest.raises(ValueError, match="unterminated"):
        Parameter("A", pattern="[")
