"""The core end to end: a real `edge run` process, a real Mosquitto, moto's Secrets Manager."""

from __future__ import annotations

import json
import os
import signal
import stat
import uuid
from pathlib import Path

import pytest

from edge.fixtures.core import (
    CoreProcess,
    edge_cli,
    iter_files,
    next_created_at,
    secret_resource,
    write_config,
)
from edge.fixtures.services import free_port
from tests.support.env import Env

pytestmark = pytest.mark.network


def test_deploys_string_and_binary_secrets_with_extra_labels(env: Env) -> None:
    """A deployment fetches AWSCURRENT and extra labels, reports Success, and lists ids only."""
    arn_a, current_a, _ = env.create_secret("app/db-password")
    label_vid, _ = env.add_labelled_version(arn_a, "Label1")
    arn_b, current_b, _ = env.create_secret("app/cert", binary=True)
    dep = env.operator.deploy(
        [secret_resource("db", arn_a, ["Label1"]), secret_resource("cert", arn_b)],
    )
    assert env.operator.wait_status(dep, "InProgress")["DeploymentType"] == "NewDeployment"
    done = env.operator.wait_status(dep, "Success")
    assert "ErrorMessage" not in done
    assert set(done) == {"DeploymentId", "DeploymentType", "DeploymentStatus", "UpdatedAt"}

    listing = env.listing()
    assert listing["Deployment"]["DeploymentId"] == dep
    by_id = {s["ResourceId"]: s for s in listing["Secrets"]}
    assert by_id["db"]["ARN"] == arn_a
    assert by_id["db"]["Name"] == "app/db-password"
    assert by_id["db"]["StagingLabels"] == {"AWSCURRENT": current_a, "Label1": label_vid}
    assert by_id["cert"]["StagingLabels"] == {"AWSCURRENT": current_b}
    assert {v["Type"] for v in by_id["cert"]["Versions"]} == {"SecretBinary"}


def test_store_file_is_private_and_holds_no_plaintext(env: Env) -> None:
    """The store is 0600 in a 0700 directory and no value appears in any file of the state dir."""
    arn, _, raw_value = env.create_secret("plain/check")
    dep = env.operator.deploy([secret_resource("r1", arn)])
    env.operator.wait_status(dep, "Success")
    assert stat.S_IMODE(env.store_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(env.state_dir.stat().st_mode) == 0o700
    assert isinstance(raw_value, str)
    for path in iter_files(env.state_dir):
        assert raw_value.encode() not in path.read_bytes(), path


def test_redeploy_removes_secrets_no_longer_in_the_group(env: Env) -> None:
    """Secrets dropped from the group are gone from the store after the next deployment."""
    arn_a, _, _ = env.create_secret("keep")
    arn_b, _, _ = env.create_secret("drop")
    first = env.operator.deploy([secret_resource("a", arn_a), secret_resource("b", arn_b)])
    env.operator.wait_status(first, "Success")
    assert {s["ResourceId"] for s in env.listing()["Secrets"]} == {"a", "b"}
    second = env.operator.deploy([secret_resource("a", arn_a)])
    env.operator.wait_status(second, "Success")
    assert {s["ResourceId"] for s in env.listing()["Secrets"]} == {"a"}


def test_reset_deployment_empties_the_store(env: Env) -> None:
    """A ResetDeployment leaves an empty store behind."""
    arn, _, _ = env.create_secret("to-reset")
    first = env.operator.deploy([secret_resource("a", arn)])
    env.operator.wait_status(first, "Success")
    reset = env.operator.deploy(deployment_type="ResetDeployment")
    assert env.operator.wait_status(reset, "Success")["DeploymentType"] == "ResetDeployment"
    assert env.listing()["Secrets"] == []


def test_deleted_secret_fails_and_keeps_the_previous_store_byte_for_byte(env: Env) -> None:
    """A secret deleted in Secrets Manager fails the deployment with its ARN; nothing changes."""
    arn, _, _ = env.create_secret("soon-gone")
    first = env.operator.deploy([secret_resource("a", arn)])
    env.operator.wait_status(first, "Success")
    before = env.store_path.read_bytes()
    env.sm.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    second = env.operator.deploy([secret_resource("a", arn)])
    failed = env.operator.final_status(second)
    assert failed["DeploymentStatus"] == "Failure"
    assert arn in failed["ErrorMessage"]
    assert "can't be found" in failed["ErrorMessage"]
    assert env.store_path.read_bytes() == before
    assert env.listing()["Deployment"]["DeploymentId"] == first


def test_missing_staging_label_fails_naming_label_and_secret(env: Env) -> None:
    """A label no version carries fails the deployment and says which label of which secret."""
    arn, _, _ = env.create_secret("labelled")
    dep = env.operator.deploy([secret_resource("a", arn, ["NoSuchLabel"])])
    failed = env.operator.final_status(dep)
    assert failed["DeploymentStatus"] == "Failure"
    assert "NoSuchLabel" in failed["ErrorMessage"]
    assert arn in failed["ErrorMessage"]
    assert not env.store_path.exists()


def test_bad_documents_are_rejected_and_the_core_keeps_running(env: Env) -> None:
    """Garbage is logged, an invalid document with an id gets a Failure, and later ones work."""
    env.operator.publish_raw(b"\xff not json")
    env.core.wait_for_event("deploy.rejected")
    bad_id = str(uuid.uuid4())
    bad = {
        "DeploymentId": bad_id,
        "DeploymentType": "NewDeployment",
        "GroupId": "g",
        "GroupVersionId": "v",
        "CreatedAt": next_created_at(),
        "Group": {"Resources": [secret_resource("a", "arn:aws:secretsmanager:nope")]},
    }
    env.operator.publish_raw(json.dumps(bad))
    failed = env.operator.final_status(bad_id)
    assert failed["DeploymentStatus"] == "Failure"
    assert "Resources[0]" in failed["ErrorMessage"]
    arn, _, _ = env.create_secret("after-garbage")
    good = env.operator.deploy([secret_resource("a", arn)])
    env.operator.wait_status(good, "Success")


def test_redelivered_deployment_is_not_fetched_again(env: Env) -> None:
    """The same DeploymentId again gets its final status republished, with no second fetch."""
    arn, _, _ = env.create_secret("once")
    dep = env.operator.deploy([secret_resource("a", arn)])
    env.operator.wait_status(dep, "Success")
    env.operator.seen.clear()
    env.operator.deploy([secret_resource("a", arn)], deployment_id=dep)
    env.core.wait_for_event("deploy.duplicate", deployment_id=dep)
    assert env.operator.final_status(dep)["DeploymentStatus"] == "Success"
    assert env.core.count("fetch.started") == 1
    assert env.core.count("deploy.started") == 1


def test_survives_a_broker_restart_and_deploys_afterwards(env: Env) -> None:
    """The core reconnects and resubscribes when the broker comes back, then deploys normally."""
    env.operator.close()
    env.broker.stop()
    env.core.wait_for_event("mqtt.disconnected")
    env.broker.start()
    env.core.wait_for_event("mqtt.connected", after=1, timeout=30)
    env.operator.connect()
    arn, _, _ = env.create_secret("after-restart")
    dep = env.operator.deploy([secret_resource("a", arn)])
    env.operator.wait_status(dep, "Success")


def test_deployment_published_while_core_is_offline_is_applied_when_it_returns(env: Env) -> None:
    """QoS 1 and a persistent session: a deployment sent while the core is down is not lost."""
    arn, _, _ = env.create_secret("queued")
    assert env.core.stop() == 0
    dep = env.operator.deploy([secret_resource("a", arn)])
    env.core.start()
    assert env.operator.final_status(dep)["DeploymentStatus"] == "Success"


def test_offline_restart_loads_every_secret(env: Env, tmp_path: Path) -> None:
    """With no broker and no Secrets Manager reachable, a restarted core has its whole store."""
    arn_a, _, _ = env.create_secret("offline-a")
    arn_b, _, _ = env.create_secret("offline-b", binary=True)
    dep = env.operator.deploy([secret_resource("a", arn_a), secret_resource("b", arn_b)])
    env.operator.wait_status(dep, "Success")
    assert env.core.stop() == 0
    dead = f"http://127.0.0.1:{free_port()}"
    text = env.config.read_text()
    text = text.replace(env.broker.url, f"mqtt://127.0.0.1:{free_port()}").replace(
        env.moto.url, dead
    )
    env.config.write_text(text)
    offline = CoreProcess(config=env.config, log_path=tmp_path / "offline.log")
    offline.start()
    try:
        loaded = offline.wait_for_event("core.store_loaded")
        assert loaded["secrets"] == 2
        assert loaded["deployment_id"] == dep
        offline.wait_for_event("mqtt.disconnected")
        assert {s["ResourceId"] for s in env.listing()["Secrets"]} == {"a", "b"}
    finally:
        assert offline.stop() == 0
    env.cli_output.append(offline.log_text())


def test_sigint_stops_the_core_cleanly(env: Env) -> None:
    """SIGINT ends `edge run` with exit status 0 and a core.stopped event."""
    assert env.core.stop(signal.SIGINT) == 0
    assert env.core.count("core.stopped") == 1


def test_damaged_store_stops_the_core_with_one_clear_error(env: Env) -> None:
    """A tampered store is reported at start and left exactly as it was."""
    arn, _, _ = env.create_secret("tamper")
    dep = env.operator.deploy([secret_resource("a", arn)])
    env.operator.wait_status(dep, "Success")
    assert env.core.stop() == 0
    data = bytearray(env.store_path.read_bytes())
    data[-5] ^= 0x01
    env.store_path.write_bytes(bytes(data))
    result = edge_cli("run", "--config", str(env.config), timeout=30)
    env.cli_output.append(result.stdout + result.stderr)
    assert result.returncode == 2
    assert "can't be read" in result.stderr
    assert "Traceback" not in result.stderr
    assert env.store_path.read_bytes() == bytes(data)


def unreachable_config(tmp_path: Path) -> Path:
    """A config whose broker and Secrets Manager are never reached (for init and start checks)."""
    dead = free_port()
    return write_config(
        tmp_path / "c.toml",
        thing_name="t",
        mqtt_url=f"mqtt://127.0.0.1:{dead}",
        endpoint_url=f"http://127.0.0.1:{dead}",
    )


def test_init_creates_private_state_and_keeps_an_existing_key(tmp_path: Path) -> None:
    """`edge init` makes a 0700 state dir and a 0600 key once; a second run keeps the key."""
    config = unreachable_config(tmp_path)
    first = edge_cli("init", "--config", str(config))
    assert first.returncode == 0, first.stderr
    key = tmp_path / "state" / "core.key"
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in key.read_bytes()
    before = key.read_bytes()
    second = edge_cli("init", "--config", str(config))
    assert second.returncode == 0
    assert key.read_bytes() == before


def test_init_with_rsa_key(tmp_path: Path) -> None:
    """`edge init --key-type rsa` creates an RSA core key the core can seal a store with."""
    config = unreachable_config(tmp_path)
    result = edge_cli("init", "--config", str(config), "--key-type", "rsa", "--rsa-bits", "2048")
    assert result.returncode == 0, result.stderr
    assert "RSA" in result.stdout
    listing = edge_cli("secrets", "list", "--config", str(config), "--json")
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout)["Secrets"] == []


def test_run_without_init_says_how_to_fix(tmp_path: Path) -> None:
    """`edge run` before `edge init` fails with a message naming the command to run."""
    config = unreachable_config(tmp_path)
    result = edge_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "edge init" in result.stderr


def test_loose_state_dir_is_refused(tmp_path: Path) -> None:
    """A state directory others can enter stops the core with the chmod that fixes it."""
    config = unreachable_config(tmp_path)
    assert edge_cli("init", "--config", str(config)).returncode == 0
    os.chmod(tmp_path / "state", 0o755)  # noqa: S103 - the point of the test
    result = edge_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "chmod 0700" in result.stderr
