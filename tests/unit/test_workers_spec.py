# SPDX-License-Identifier: Apache-2.0
"""edge.workers.spec: reading a V1 function's run configuration, and refusing what can't run."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.errors import DeploymentInvalidError
from edge.fixtures.reference import REFERENCE_FUNCTION_JSON
from edge.model import Function, parse_group
from edge.workers.spec import (
    DEFAULT_MEMORY_KB,
    DEFAULT_TIMEOUT_SECONDS,
    MAX_TIMEOUT_SECONDS,
    MIN_MEMORY_KB,
    CodeRef,
    FunctionSpec,
    RunAs,
    function_spec,
    function_specs,
)

# The function of the V1 "Working with secret resources" page (REFERENCE_FUNCTION_JSON) gets
# the Handler and Code that a published function version carries.
API_KEY_RESOURCE = {
    "Id": "MyApiKey",
    "Name": "MyApiKey",
    "ResourceDataContainer": {
        "SecretsManagerSecretResourceData": {
            "ARN": "arn:aws:secretsmanager:us-west-2:123456789012:secret:greengrass-MyApiKey-KUj89s"
        }
    },
}
SERIAL_RESOURCE = {
    "Id": "serial",
    "Name": "SerialPort",
    "ResourceDataContainer": {
        "LocalDeviceResourceData": {
            "SourcePath": "/dev/ttyS0",
            "GroupOwnerSetting": {"AutoAddGroupOwner": False},
        }
    },
}
SHA = "0123456789abcdef" * 4
S3_URI = "s3://my-bucket/functions/myFunction-1.zip"
HANDLER = "function.function_handler"


def reference() -> dict[str, Any]:
    """The reference function with a Handler and an S3 Code, as published."""
    fn: dict[str, Any] = json.loads(REFERENCE_FUNCTION_JSON)
    fn["FunctionConfiguration"]["Handler"] = HANDLER
    fn["FunctionConfiguration"]["Code"] = {"Uri": S3_URI, "Sha256": SHA}
    return fn


def minimal(fid: str = "f1") -> dict[str, Any]:
    """A function with only what it must have: Handler and Code."""
    return {
        "Id": fid,
        "FunctionArn": f"arn:aws:lambda:us-west-2:123456789012:function:{fid}:3",
        "FunctionConfiguration": {
            "Handler": HANDLER,
            "Code": {"Uri": "file:///opt/functions/f1.zip"},
        },
    }


def specs_of(*functions: dict[str, Any]) -> tuple[FunctionSpec, ...]:
    """Parse a group holding these functions (and the resources they use) into specs."""
    group = parse_group(
        {"Resources": [API_KEY_RESOURCE, SERIAL_RESOURCE], "Functions": list(functions)}
    )
    return function_specs(group)


def rejected(fn: dict[str, Any], *others_first: dict[str, Any]) -> str:
    """The problem text of a function that must be refused."""
    with pytest.raises(DeploymentInvalidError) as info:
        specs_of(*others_first, fn)
    return info.value.problem


def with_config(**changes: Any) -> dict[str, Any]:
    """The reference function with FunctionConfiguration keys replaced (None deletes)."""
    fn = reference()
    config = fn["FunctionConfiguration"]
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return fn


# --- what a valid function becomes --------------------------------------------------------------


def test_reference_function_becomes_its_spec():
    """The documented function, published, reads as the spec the manager runs."""
    (spec,) = specs_of(reference())
    assert spec == FunctionSpec(
        function_id="MyLambdaFunction",
        function_arn="arn:aws:lambda:us-west-2:123456789012:function:myFunction:1",
        handler=HANDLER,
        code=CodeRef(uri=S3_URI, sha256=SHA),
        pinned=False,
        timeout_seconds=10.0,
        memory_kb=16384,
        variables={},
        run_as=None,
        readable_resources=frozenset({"MyApiKey"}),
    )
    assert spec.code.scheme == "s3"
    assert spec.name == "myFunction"
    assert spec.unqualified_arn == "arn:aws:lambda:us-west-2:123456789012:function:myFunction"


def test_omitted_fields_take_v1_defaults():
    """Without Timeout, MemorySize or Pinned a function gets V1's 3 s, 16384 KB, on-demand."""
    (spec,) = specs_of(minimal())
    assert (spec.timeout_seconds, spec.memory_kb, spec.pinned) == (3.0, 16384, False)
    assert (DEFAULT_TIMEOUT_SECONDS, DEFAULT_MEMORY_KB) == (3, 16384)
    assert spec.code == CodeRef(uri="file:///opt/functions/f1.zip", sha256=None)
    assert spec.code.scheme == "file"
    assert spec.readable_resources == frozenset()
    assert spec.run_as is None


def test_pinned_timeout_memory_variables_and_run_as_are_read():
    """Pinned, a fractional Timeout, MemorySize, variables and RunAs all reach the spec."""
    fn = with_config(Pinned=True, Timeout=2.5, MemorySize=MIN_MEMORY_KB)
    fn["FunctionConfiguration"]["Environment"]["Variables"] = {"STAGE": "prod", "EMPTY": ""}
    fn["FunctionConfiguration"]["Environment"]["Execution"] = {"RunAs": {"Uid": 0, "Gid": 998}}
    (spec,) = specs_of(fn)
    assert spec.pinned is True
    assert spec.timeout_seconds == 2.5
    assert spec.memory_kb == MIN_MEMORY_KB
    assert spec.variables == {"STAGE": "prod", "EMPTY": ""}
    assert spec.run_as == RunAs(uid=0, gid=998)


def test_variables_are_a_copy_of_the_document():
    """Changing the group's raw JSON afterwards does not change a spec's variables."""
    fn = with_config()
    fn["FunctionConfiguration"]["Environment"]["Variables"] = {"A": "1"}
    group = parse_group({"Resources": [API_KEY_RESOURCE], "Functions": [fn]})
    spec = function_spec(group.functions[0])
    group.functions[0].raw["FunctionConfiguration"]["Environment"]["Variables"]["A"] = "2"
    assert spec.variables == {"A": "1"}


def test_readable_resources_come_from_every_access_policy():
    """Each ResourceAccessPolicies entry, secret or not, is a resource the function may read."""
    fn = reference()
    fn["FunctionConfiguration"]["Environment"]["ResourceAccessPolicies"].append(
        {"ResourceId": "serial", "Permission": "rw"}
    )
    (spec,) = specs_of(fn)
    assert spec.readable_resources == frozenset({"MyApiKey", "serial"})


def test_code_may_sit_beside_the_function_configuration():
    """A `Code` object at the function's top level is read when FunctionConfiguration has none."""
    fn = minimal()
    fn["Code"] = fn["FunctionConfiguration"].pop("Code")
    (spec,) = specs_of(fn)
    assert spec.code.uri == "file:///opt/functions/f1.zip"


def test_local_directory_with_sha256_is_accepted():
    """A file:// directory URI with a Sha256 is a valid Code."""
    fn = with_config(Code={"Uri": "file:///opt/functions/dir", "Sha256": SHA})
    (spec,) = specs_of(fn)
    assert spec.code == CodeRef(uri="file:///opt/functions/dir", sha256=SHA)


def test_every_function_of_the_group_gets_a_spec_in_order():
    """function_specs returns one spec per function, in document order."""
    specs = specs_of(minimal("a"), minimal("b"), reference())
    assert [s.function_id for s in specs] == ["a", "b", "MyLambdaFunction"]


def test_unqualified_function_arn():
    """A function ARN without a version is its own unqualified ARN."""
    fn = minimal()
    fn["FunctionArn"] = "arn:aws:lambda:us-west-2:123456789012:function:f1"
    (spec,) = specs_of(fn)
    assert spec.unqualified_arn == spec.function_arn
    assert spec.name == "f1"


# --- what is refused ---------------------------------------------------------------------------

BAD_FIELDS = [
    pytest.param({"Handler": None}, "Handler", id="missing-handler"),
    pytest.param({"Handler": ""}, "Handler", id="empty-handler"),
    pytest.param({"Handler": "handler"}, "Handler", id="handler-without-module"),
    pytest.param({"Handler": "my-mod.fn"}, "Handler", id="handler-with-dash"),
    pytest.param({"Handler": "mod.fn()"}, "Handler", id="handler-with-call"),
    pytest.param({"Handler": "1mod.fn"}, "Handler", id="handler-leading-digit"),
    pytest.param({"Handler": "mod..fn"}, "Handler", id="handler-empty-part"),
    pytest.param({"Handler": "mod.fn\n"}, "Handler", id="handler-trailing-newline"),
    pytest.param({"Handler": ["mod.fn"]}, "Handler", id="handler-not-string"),
    pytest.param({"Code": None}, "Code", id="missing-code"),
    pytest.param({"Code": "s3://b/k.zip"}, "Code", id="code-not-object"),
    pytest.param({"Code": {"Sha256": SHA}}, "Code", id="code-without-uri"),
    pytest.param({"Code": {"Uri": "ftp://host/f.zip", "Sha256": SHA}}, "Code.Uri", id="ftp"),
    pytest.param({"Code": {"Uri": "https://host/f.zip", "Sha256": SHA}}, "Code.Uri", id="https"),
    pytest.param({"Code": {"Uri": "/opt/f.zip"}}, "Code.Uri", id="bare-path"),
    pytest.param({"Code": {"Uri": "file:f.zip"}}, "Code.Uri", id="file-relative"),
    pytest.param({"Code": {"Uri": "file://f.zip"}}, "Code.Uri", id="file-host-not-path"),
    pytest.param({"Code": {"Uri": "s3://bucket", "Sha256": SHA}}, "Code.Uri", id="s3-no-key"),
    pytest.param({"Code": {"Uri": "s3:///key.zip", "Sha256": SHA}}, "Code.Uri", id="s3-no-bucket"),
    pytest.param({"Code": {"Uri": S3_URI}}, "Code.Sha256", id="s3-without-sha256"),
    pytest.param({"Code": {"Uri": S3_URI, "Sha256": SHA.upper()}}, "Code.Sha256", id="upper-sha"),
    pytest.param({"Code": {"Uri": S3_URI, "Sha256": SHA[:-1]}}, "Code.Sha256", id="short-sha"),
    pytest.param({"Code": {"Uri": S3_URI, "Sha256": SHA + "\n"}}, "Code.Sha256", id="sha-newline"),
    pytest.param({"Code": {"Uri": S3_URI, "Sha256": 5}}, "Code.Sha256", id="sha-not-string"),
    pytest.param({"Timeout": 0}, "Timeout", id="timeout-zero"),
    pytest.param({"Timeout": -1}, "Timeout", id="timeout-negative"),
    pytest.param({"Timeout": "3"}, "Timeout", id="timeout-string"),
    pytest.param({"Timeout": True}, "Timeout", id="timeout-bool"),
    pytest.param({"Timeout": MAX_TIMEOUT_SECONDS + 1}, "Timeout", id="timeout-over-a-day"),
    pytest.param({"MemorySize": MIN_MEMORY_KB - 1}, "MemorySize", id="memory-below-2048"),
    pytest.param({"MemorySize": "16384"}, "MemorySize", id="memory-string"),
    pytest.param({"Pinned": "yes"}, "Pinned", id="pinned-yes"),
    pytest.param({"Pinned": 1}, "Pinned", id="pinned-one"),
]


@pytest.mark.parametrize(("changes", "field"), BAD_FIELDS)
def test_bad_field_is_refused_naming_function_and_field(changes, field):
    """Each field that can't be run is refused with the function's entry and the field named."""
    problem = rejected(with_config(**changes))
    assert problem.startswith('Functions[0] (Id "MyLambdaFunction"): ')
    assert field in problem


@pytest.mark.parametrize(
    ("run_as", "field"),
    [
        pytest.param({"Uid": 1000}, "RunAs", id="without-gid"),
        pytest.param({"Gid": 1000}, "RunAs", id="without-uid"),
        pytest.param({"Uid": "1000", "Gid": 1000}, "RunAs", id="uid-string"),
        pytest.param({"Uid": True, "Gid": 1000}, "RunAs", id="uid-bool"),
        pytest.param({"Uid": -1, "Gid": 1000}, "RunAs", id="uid-negative"),
        pytest.param({"Uid": 1000, "Gid": 2**32}, "RunAs", id="gid-too-large"),
        pytest.param("root", "RunAs", id="not-object"),
    ],
)
def test_bad_run_as_is_refused(run_as, field):
    """RunAs must carry integer Uid and Gid; anything else is refused naming the function."""
    fn = reference()
    fn["FunctionConfiguration"]["Environment"]["Execution"] = {"RunAs": run_as}
    problem = rejected(fn)
    assert problem.startswith('Functions[0] (Id "MyLambdaFunction"): ')
    assert f"Environment.Execution.{field}" in problem


def test_configuration_that_is_not_an_object_is_refused():
    """A FunctionConfiguration that slipped past the model as a non-object is refused too."""
    fn = Function(
        function_id="f1",
        function_arn=minimal()["FunctionArn"],
        raw={"FunctionConfiguration": ["Handler", HANDLER]},
    )
    with pytest.raises(DeploymentInvalidError) as info:
        function_spec(fn, 4)
    assert info.value.problem.startswith('Functions[4] (Id "f1"): FunctionConfiguration')


def test_error_names_the_index_of_the_bad_function():
    """With several functions, the message points at the bad one's index and Id."""
    bad = minimal("second")
    bad["FunctionConfiguration"]["Timeout"] = 0
    problem = rejected(bad, minimal("first"))
    assert problem.startswith('Functions[1] (Id "second"): FunctionConfiguration.Timeout')


def test_error_is_a_deployment_error_without_id():
    """A refused function is an invalid deployment; the caller adds the deployment id."""
    with pytest.raises(DeploymentInvalidError) as info:
        specs_of(with_config(Handler=None))
    assert info.value.deployment_id is None
    assert str(info.value).startswith("invalid deployment document: Functions[0]")


# --- properties --------------------------------------------------------------------------------

identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)


@given(parts=st.lists(identifiers, min_size=2, max_size=4))
def test_any_dotted_python_path_is_a_handler(parts):
    """Every `module[.sub].function` made of identifiers is accepted as written."""
    handler = ".".join(parts)
    (spec,) = specs_of(with_config(Handler=handler))
    assert spec.handler == handler


@given(timeout=st.integers(1, MAX_TIMEOUT_SECONDS) | st.floats(1, MAX_TIMEOUT_SECONDS))
def test_timeouts_in_range_are_kept(timeout):
    """Any Timeout from 1 s to a day is kept as given (in seconds, as a float)."""
    (spec,) = specs_of(with_config(Timeout=timeout))
    assert spec.timeout_seconds == float(timeout)


@given(
    timeout=st.integers(max_value=0)
    | st.integers(min_value=MAX_TIMEOUT_SECONDS + 1)
    | st.floats(max_value=0.999)
    | st.floats(min_value=MAX_TIMEOUT_SECONDS + 0.001)
    | st.just(float("nan"))
)
def test_timeouts_out_of_range_are_refused(timeout):
    """Any Timeout below 1 s, above a day, infinite or NaN is refused, naming the field."""
    # Built without the model, which refuses non-finite numbers anywhere in a group first.
    raw = with_config(Timeout=timeout)
    fn = Function(function_id="MyLambdaFunction", function_arn=raw["FunctionArn"], raw=raw)
    with pytest.raises(DeploymentInvalidError) as info:
        function_spec(fn)
    assert "FunctionConfiguration.Timeout must be a number from 1 to 86400" in info.value.problem
