"""Lambda workers end to end: unmodified V1 code with the real greengrasssdk, on a real core."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from edge.fixtures.core import secret_resource
from edge.fixtures.services import TEST_REGION
from tests.support.env import Env
from tests.support.functions import build_package, function, function_arn, invoke

pytestmark = pytest.mark.network


@pytest.fixture
def package(tmp_path: Path) -> dict[str, Any]:
    """The function package as a Code object (file:// zip with its Sha256)."""
    path, digest = build_package(tmp_path / "app.zip")
    return {"Uri": path.as_uri(), "Sha256": digest}


def test_v1_code_reads_its_secrets_like_on_greengrass(env: Env, package: dict[str, Any]) -> None:
    """By name, by ARN, by label, binary as base64, CreatedDate a datetime; refusals say which."""
    arn_db, current_db, value_db = env.create_secret("app/db")
    label_vid, label_value = env.add_labelled_version(arn_db, "Label1")
    arn_cert, _, value_cert = env.create_secret("app/cert", binary=True)
    arn_other, _, _ = env.create_secret("other/secret")
    reader = function("reader", "app.function_handler", package, policies=["db", "cert"])
    dep = env.operator.deploy(
        [
            secret_resource("db", arn_db, ["Label1"]),
            secret_resource("cert", arn_cert),
            secret_resource("other", arn_other),
        ],
        functions=[reader],
    )
    env.operator.wait_status(dep, "Success")

    by_name = invoke(env, "reader", {"SecretId": "app/db"})
    assert by_name["SecretString"] == value_db
    assert by_name["ARN"] == arn_db
    assert by_name["Name"] == "app/db"
    assert by_name["VersionId"] == current_db
    assert "AWSCURRENT" in by_name["VersionStages"]
    # The SDK turned CreatedDate into a datetime (the handler serialised it with isoformat()).
    created = env.sm.get_secret_value(SecretId=arn_db)["CreatedDate"]
    assert datetime.fromisoformat(by_name["CreatedDate"]).timestamp() == pytest.approx(
        created.timestamp(), abs=1
    )

    assert invoke(env, "reader", {"SecretId": arn_db})["SecretString"] == value_db
    labelled = invoke(env, "reader", {"SecretId": "app/db", "VersionStage": "Label1"})
    assert (labelled["SecretString"], labelled["VersionId"]) == (label_value, label_vid)
    assert isinstance(value_cert, bytes)
    assert (
        base64.b64decode(invoke(env, "reader", {"SecretId": "app/cert"})["SecretBinary"])
        == value_cert
    )

    refused = invoke(env, "reader", {"SecretId": "other/secret"})
    assert refused["error"] == "SecretsManagerError"
    assert "403" in refused["message"]
    assert "may not read" in refused["message"]
    unknown = invoke(env, "reader", {"SecretId": "no/such/secret"})
    assert "404" in unknown["message"]
    assert "not deployed" in unknown["message"]
    undeployed = invoke(env, "reader", {"SecretId": "app/db", "VersionStage": "Label9"})
    assert "Label9" in undeployed["message"]


def test_rotated_value_is_seen_after_a_redeploy(env: Env, package: dict[str, Any]) -> None:
    """After the secret rotates and the group is redeployed, the function reads the new value."""
    arn, _, old_value = env.create_secret("rotating")
    group = (
        [secret_resource("r", arn)],
        [function("reader", "app.function_handler", package, policies=["r"])],
    )
    env.operator.wait_status(env.operator.deploy(group[0], functions=group[1]), "Success")
    assert invoke(env, "reader", {"SecretId": "rotating"})["SecretString"] == old_value
    new_value = "rotated-" + old_value
    env.values.append(new_value)
    new_version = env.sm.put_secret_value(SecretId=arn, SecretString=new_value)["VersionId"]
    env.operator.wait_status(
        env.operator.deploy(group[0], functions=group[1], deployment_type="Redeployment"), "Success"
    )
    answer = invoke(env, "reader", {"SecretId": "rotating"})
    assert (answer["SecretString"], answer["VersionId"]) == (new_value, new_version)


def test_context_and_v1_environment(env: Env, package: dict[str, Any]) -> None:
    """Handlers get V1's context fields, V1's environment and the group's variables."""
    fn = function("ctx", "app.context_fields", package, variables={"GREETING": "hello"}, timeout=30)
    env.operator.wait_status(env.operator.deploy(functions=[fn]), "Success")
    fields = invoke(env, "ctx", {"k": [1, 2]})
    assert fields["function_name"] == "ctx"
    assert fields["invoked_function_arn"] == function_arn("ctx")
    assert fields["MY_FUNCTION_ARN"] == function_arn("ctx")
    assert fields["SECRETS_MANAGER_FUNCTION_ARN"] == "arn:aws:lambda:::function:GGSecretManager:1"
    assert fields["GGC_MAX_INTERFACE_VERSION"] == "1.5"
    assert fields["GREETING"] == "hello"
    assert fields["has_token"] is True
    assert 0 < fields["remaining_ms"] <= 30000
    assert fields["event"] == {"k": [1, 2]}
    assert fields["aws_request_id"]


def test_python_variables_reach_the_function_but_not_the_interpreters_start(
    env: Env, package: dict[str, Any]
) -> None:
    """PYTHON* variables that act at interpreter start are set only once the worker is confined.

    PYTHONHOME pointing nowhere would stop the interpreter from starting at all, and a
    PYTHONWARNINGS category names a module to import: both would act before the worker is
    confined and leaves root. The function still sees both in its environment.
    """
    variables = {
        "PYTHONHOME": "/nonexistent/edge-python-home",
        "PYTHONWARNINGS": "error::edge_no_such_module.Warning",
        "GREETING": "hi",
    }
    fn = function("ctx", "app.context_fields", package, variables=variables)
    env.operator.wait_status(env.operator.deploy(functions=[fn]), "Success")
    fields = invoke(env, "ctx", {})
    assert fields["PYTHONHOME"] == "/nonexistent/edge-python-home"
    assert fields["PYTHONWARNINGS"] == "error::edge_no_such_module.Warning"
    assert fields["GREETING"] == "hi"


def test_timeout_crash_error_and_memory_limit(env: Env, package: dict[str, Any]) -> None:
    """Timeouts and crashes are Unhandled with a reason, a raise is Handled, memory is bounded."""
    functions = [
        function("sleeper", "app.sleep", package, timeout=1),
        function("crasher", "app.crash", package, pinned=True),
        function("failer", "app.fail", package),
        function("hog", "app.hog", package, memory_kb=32768),
        function("ctx", "app.context_fields", package),
    ]
    env.operator.wait_status(env.operator.deploy(functions=functions), "Success")
    assert "timed out after 1 seconds" in invoke(env, "sleeper", {"seconds": 5}, expect_error=True)
    assert invoke(env, "sleeper", {"seconds": 0})["slept"] == 0

    crashed = invoke(env, "crasher", {}, expect_error=True)
    assert "Unhandled" in crashed
    assert "exited with status 7" in crashed
    env.core.wait_for_event("worker.restarting")

    failed = invoke(env, "failer", {"x": 1}, expect_error=True)
    assert "Handled" in failed
    assert "bad input" in failed

    hogged = invoke(env, "hog", {"megabytes": 200}, expect_error=True)
    assert "memory limit of 32768 KB" in hogged
    assert invoke(env, "ctx", {})["function_name"] == "ctx"


def test_function_output_is_logged_with_secret_values_masked(
    env: Env, package: dict[str, Any]
) -> None:
    """A handler that prints its secret shows up in the core's log with the value as ****."""
    arn, _, value = env.create_secret("printed")
    fn = function("leaky", "app.leak", package, policies=["p"])
    env.operator.wait_status(
        env.operator.deploy([secret_resource("p", arn)], functions=[fn]), "Success"
    )
    assert invoke(env, "leaky", {"SecretId": "printed"}) == {"printed": True}
    line = env.core.wait_for_event("worker.output", stream="stdout")
    assert line["line"] == "the password is ****"
    assert line["function_arn"] == function_arn("leaky")
    assert value not in env.core.log_text()


def test_invoke_another_function_and_publish_through_subscriptions(
    env: Env, package: dict[str, Any]
) -> None:
    """lambda.invoke reaches a local function; iot-data.publish reaches the broker and locals."""
    functions = [
        function("invoker", "app.invoke_other", package),
        function("echo", "app.echo", package),
        function("publisher", "app.publish", package),
    ]
    subscriptions = [
        {
            "Id": "to-cloud",
            "Source": function_arn("publisher"),
            "Subject": "edge-test/out/#",
            "Target": "cloud",
        },
        {
            "Id": "from-cloud",
            "Source": "cloud",
            "Subject": "edge-test/in/+",
            "Target": function_arn("echo"),
        },
        {
            "Id": "echoed",
            "Source": function_arn("echo"),
            "Subject": "edge-test/echoed",
            "Target": "cloud",
        },
    ]
    dep = env.operator.deploy(functions=functions, subscriptions=subscriptions)
    env.operator.wait_status(dep, "Success")
    answer = invoke(env, "invoker", {"FunctionName": function_arn("echo"), "Payload": {"hi": 1}})
    assert answer == {"FunctionError": "", "Payload": {"echo": {"hi": 1}}}

    received = env.operator.subscribe("edge-test/#")
    assert invoke(env, "publisher", {"topic": "edge-test/out/a", "message": {"n": 1}}) == {
        "published": "edge-test/out/a"
    }
    assert received.get(timeout=10) == ("edge-test/out/a", {"n": 1})

    env.operator.publish("edge-test/in/x", {"from": "cloud"})
    topic, message = received.get(timeout=10)
    while topic != "edge-test/echoed":  # our own publish to edge-test/in/x comes back first
        topic, message = received.get(timeout=10)
    assert message == {"got": {"from": "cloud"}, "subject": "edge-test/in/x"}


def test_code_from_s3_is_fetched_and_verified(env: Env, tmp_path: Path) -> None:
    """s3:// code is downloaded with its Sha256 checked; a mismatch fails and changes nothing."""
    path, digest = build_package(tmp_path / "s3app.zip")
    s3 = boto3.client("s3", region_name=TEST_REGION, endpoint_url=env.moto.url)
    s3.create_bucket(Bucket="functions")
    s3.put_object(Bucket="functions", Key="app.zip", Body=path.read_bytes())
    good = function(
        "ctx", "app.context_fields", {"Uri": "s3://functions/app.zip", "Sha256": digest}
    )
    env.operator.wait_status(env.operator.deploy(functions=[good]), "Success")
    assert invoke(env, "ctx", {})["function_name"] == "ctx"
    before = env.store_path.read_bytes()
    bad = function(
        "ctx", "app.context_fields", {"Uri": "s3://functions/app.zip", "Sha256": "0" * 64}
    )
    failed = env.operator.final_status(env.operator.deploy(functions=[bad]))
    assert failed["DeploymentStatus"] == "Failure"
    assert "Sha256 mismatch" in failed["ErrorMessage"]
    assert env.store_path.read_bytes() == before
    assert invoke(env, "ctx", {})["function_name"] == "ctx"


def test_a_stolen_connection_without_the_token_gets_nothing(
    env: Env, package: dict[str, Any]
) -> None:
    """Another process on the socket with a wrong token is refused before any answer."""
    arn, _, value = env.create_secret("guarded")
    fn = function("reader", "app.function_handler", package, policies=["g"])
    env.operator.wait_status(
        env.operator.deploy([secret_resource("g", arn)], functions=[fn]), "Success"
    )
    code = (
        "import sys\n"
        "from edge.ipc.client import IpcClient\n"
        "from edge.ipc.protocol import OP_GET_SECRET_VALUE\n"
        "c = IpcClient(sys.argv[1], 'forged-token')\n"
        "try:\n"
        "    print(c.call(OP_GET_SECRET_VALUE, {'SecretId': 'guarded'}))\n"
        "except Exception as e:\n"
        "    print('refused', type(e).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(env.state_dir / "ipc" / "core.sock")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.stdout.startswith("refused"), out
    assert value not in out.stdout + out.stderr
    env.core.wait_for_event("ipc.auth.refused")


def test_functions_come_back_after_an_offline_restart(env: Env, package: dict[str, Any]) -> None:
    """A restarted core starts its deployed functions from disk and serves their secrets."""
    arn, _, value = env.create_secret("persisted")
    fn = function("reader", "app.function_handler", package, policies=["p"], pinned=True)
    env.operator.wait_status(
        env.operator.deploy([secret_resource("p", arn)], functions=[fn]), "Success"
    )
    assert env.core.stop() == 0
    env.core.start()
    env.core.wait_for_event("workers.applied", after=1)
    assert invoke(env, "reader", {"SecretId": "persisted"})["SecretString"] == value


@pytest.mark.skipif(os.geteuid() != 0, reason="RunAs applies only when the core runs as root")
def test_run_as_drops_to_the_configured_ids_and_still_reaches_the_core(
    env: Env, package: dict[str, Any]
) -> None:
    """A RunAs worker runs with its gid and no extra groups, over a socket the core handed it.

    It can't enter the core's 0700 socket directory, so the core passes it a connected socket.
    Uid 0 keeps the test independent of whether another user may run this machine's Python and
    read the checkout (a CI clone lives in a 0700 temporary directory); the gid and the
    inherited socket prove the same code path a real uid takes.
    """
    arn, _, value = env.create_secret("run-as")
    fn = function("who", "app.whoami", package, policies=["r"], run_as={"Uid": 0, "Gid": 65534})
    env.operator.wait_status(
        env.operator.deploy([secret_resource("r", arn)], functions=[fn]), "Success"
    )
    answer = invoke(env, "who", {"SecretId": "run-as"})
    assert (answer["uid"], answer["gid"], answer["groups"]) == (0, 65534, [])
    assert answer["inherited_ipc"] is True
    assert answer["secret"] == value
