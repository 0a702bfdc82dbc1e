"""`edge status` against a real core: connection, outcomes, refusals, store, workers."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sysconfig
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.fixtures.core import edge_cli, next_created_at, secret_resource
from edge.signing import seal
from tests.support.env import Env
from tests.support.functions import code_of, function, function_arn
from tests.support.users import REPO, checkout_reachable, python_or_skip, shared_directory

pytestmark = pytest.mark.network


def status(env: Env, *flags: str) -> subprocess.CompletedProcess[str]:
    result = edge_cli("status", "--config", str(env.config), *flags)
    env.cli_output.append(result.stdout + result.stderr)  # checked for values at teardown
    return result


def status_json(env: Env) -> tuple[int, dict[str, Any]]:
    result = status(env, "--json")
    report: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, report


def test_a_running_core_reports_its_deployment_workers_and_a_forged_document(
    env: Env, tmp_path: Path
) -> None:
    """Healthy (exit 0), the last outcome, its pinned worker, and the forgery it refused."""
    code, report = status_json(env)
    assert code == 0
    assert report["ThingName"] == env.operator.thing
    assert report["Running"] is True
    assert report["Mqtt"]["Connected"] is True
    assert (report["LastDeployment"], report["LastRefused"], report["Workers"]) == (None, None, [])

    arn, _, value = env.create_secret("status/db")
    code_zip = code_of(tmp_path / "app.zip")
    reader = function("reader", "app.function_handler", code_zip, policies=["db"], pinned=True)
    dep = env.operator.deploy([secret_resource("db", arn)], functions=[reader])
    env.operator.wait_status(dep, "Success")
    env.core.wait_for_event("worker.started")

    code, report = status_json(env)
    assert code == 0
    assert report["LastDeployment"]["DeploymentId"] == dep
    assert report["LastDeployment"]["DeploymentStatus"] == "Success"
    assert (report["Store"]["DeploymentId"], report["Store"]["Secrets"]) == (dep, 1)
    assert report["Store"]["AgeSeconds"] >= 0
    (worker,) = report["Workers"]
    assert (worker["FunctionArn"], worker["State"]) == (function_arn("reader"), "running")
    assert isinstance(worker["Pid"], int)
    assert worker["StartedAt"]

    forged_id = str(uuid.uuid4())
    document = {
        "DeploymentId": forged_id,
        "DeploymentType": "NewDeployment",
        "GroupId": "g",
        "GroupVersionId": "v",
        "CreatedAt": next_created_at(),
        "Group": {"Resources": []},
    }
    forged = seal(
        json.dumps(document).encode(),
        signing_key=Ed25519PrivateKey.generate(),
        thing_name=env.operator.thing,
    )
    seen = env.core.count("deploy.signature_rejected")
    env.operator.publish_raw(forged)
    env.core.wait_for_event("deploy.signature_rejected", after=seen)

    code, report = status_json(env)
    assert code == 0
    assert report["LastRefused"]["Reason"] == "signature"
    assert "trusted_keys" in report["LastRefused"]["Error"]
    assert report["LastDeployment"]["DeploymentId"] == dep  # the forgery got no status
    text = status(env).stdout
    assert f"Last deployment: {dep} Success" in text
    assert "Last refused: signature" in text
    assert f"Worker {function_arn('reader')}: running pid {worker['Pid']}" in text
    assert value not in text
    (tmp_path / "status.txt").write_text(text)


def test_a_stopped_core_is_reported_from_its_state_directory(env: Env) -> None:
    """Not running: exit 3, and the store and last outcome as the state directory holds them."""
    arn, _, _ = env.create_secret("status/stopped")
    dep = env.operator.deploy([secret_resource("s", arn)])
    env.operator.wait_status(dep, "Success")
    env.core.stop()

    code, report = status_json(env)
    assert code == 3
    assert report["Running"] is False
    assert report["LastDeployment"]["DeploymentStatus"] == "Success"
    assert (report["Store"]["DeploymentId"], report["Store"]["Secrets"]) == (dep, 1)
    result = status(env)
    assert result.returncode == 3
    assert "Core: not running" in result.stdout
    assert f"Last deployment: {dep} Success" in result.stdout


def test_a_core_without_its_broker_runs_but_is_not_healthy(env: Env) -> None:
    """Broker gone: exit 1 and "not connected"; connected again: exit 0."""
    env.operator.close()
    env.broker.stop()
    env.core.wait_for_event("mqtt.disconnected")
    code, report = status_json(env)
    assert (code, report["Running"], report["Mqtt"]["Connected"]) == (1, True, False)
    assert "not connected to" in status(env).stdout
    env.broker.start()
    env.core.wait_for_event("mqtt.connected", after=1, timeout=30)
    assert status_json(env)[0] == 0
    env.operator.connect()


@pytest.mark.skipif(
    os.geteuid() != 0, reason="only root can run `edge status` as another user (nobody) here"
)
def test_a_user_who_may_not_read_the_token_is_told_so_not_that_the_core_is_stopped(
    env: Env,
) -> None:
    """As nobody, beside a running root core: exit 2 and what to do, never "not running"."""
    nobody = pwd.getpwnam("nobody")
    python = python_or_skip(nobody)
    # What an operator account has: a config it can read (no PIN in it), the core's state
    # directory 0700 and root's.
    with shared_directory("edge-status-") as shared, checkout_reachable():
        state_dir = env.config.parent / "state"
        text = env.config.read_text().replace('state_dir = "state"', f'state_dir = "{state_dir}"')
        config = shared / "core.toml"
        config.write_text(text)
        config.chmod(0o644)
        site_packages = sysconfig.get_paths()["purelib"]
        result = subprocess.run(
            [python, "-m", "edge", "status", "--config", str(config)],
            user=nobody.pw_uid,
            group=nobody.pw_gid,
            extra_groups=[],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{site_packages}"},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    env.cli_output.append(result.stdout + result.stderr)
    assert result.returncode == 2, result.stderr
    assert f"this user (uid {nobody.pw_uid}) may not read the operator token" in result.stderr
    assert "as the core's user or as root" in result.stderr
    assert "not running" not in result.stdout + result.stderr
    # The core it couldn't ask runs on, and still answers its own user.
    assert status_json(env)[0] == 0
