"""What a deployment may bring in: code sources, payload sizes, replays, files the core trusts.

A real `edge run` process, a real Mosquitto and moto's Secrets Manager, as in test_core.py.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.envelope import MAX_ENVELOPE_BYTES
from edge.fixtures.core import (
    edge_cli,
    iter_files,
    next_created_at,
    secret_resource,
    write_config,
)
from edge.fixtures.services import Mosquitto, MotoServer, free_port
from edge.mqtt.limit import MAX_PACKET_BYTES
from tests.support.env import Env, running_env
from tests.support.functions import build_package, function, read_secret

pytestmark = pytest.mark.network


@pytest.fixture
def code_env(tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any) -> Iterator[Env]:
    """A running core whose `[workers] local_code_dirs` are `code/` and, on purpose, `state/`."""
    (tmp_path / "code").mkdir()
    dirs = (tmp_path / "code", tmp_path / "state")
    with running_env(tmp_path, broker, moto, sm, local_code_dirs=dirs) as env:
        yield env


def code_files(env: Env) -> list[str]:
    """Every file name under the core's code directory (`functions/`)."""
    return sorted(p.name for p in iter_files(env.root / "functions"))


def deploy_code(env: Env, code: dict[str, Any], name: str = "reader") -> dict[str, Any]:
    """Deploy one function with this Code; return its final status."""
    dep = env.operator.deploy(functions=[function(name, "app.function_handler", code)])
    return env.operator.final_status(dep)


def test_file_code_comes_only_from_local_code_dirs_and_never_from_hidden_paths(
    code_env: Env,
) -> None:
    """Outside local_code_dirs, in the state dir, or through a link: refused; in code/: runs."""
    env, root = code_env, code_env.root
    (root / "outside").mkdir()
    outside, _ = build_package(root / "outside" / "app.zip")
    failed = deploy_code(env, {"Uri": outside.as_uri()})
    assert failed["DeploymentStatus"] == "Failure"
    assert "[workers] local_code_dirs" in failed["ErrorMessage"]

    # The state dir is under a local_code_dirs entry here, and still refused.
    failed = deploy_code(env, {"Uri": env.state_dir.as_uri()})
    assert failed["DeploymentStatus"] == "Failure"
    assert "hides from functions" in failed["ErrorMessage"]

    # A link inside an allowed tree, to the state dir: the copy stops at it.
    tree = root / "code" / "tree"
    tree.mkdir()
    (tree / "app.py").write_text("def function_handler(event, context):\n    return event\n")
    (tree / "state").symlink_to(env.state_dir)
    failed = deploy_code(env, {"Uri": tree.as_uri()})
    assert failed["DeploymentStatus"] == "Failure"
    assert "state is a symbolic link" in failed["ErrorMessage"]

    assert "core.key" not in code_files(env)
    assert not env.store_path.exists()

    arn, _, value = env.create_secret("intake/db")
    inside, digest = build_package(root / "code" / "app.zip")
    code = {"Uri": inside.as_uri(), "Sha256": digest}
    reader = function("reader", "app.function_handler", code, policies=["db"])
    dep = env.operator.deploy([secret_resource("db", arn)], functions=[reader])
    env.operator.wait_status(dep, "Success")
    assert read_secret(env, "reader", "intake/db")["SecretString"] == value
    assert "core.key" not in code_files(env)


def test_an_oversized_payload_never_reaches_the_disk(env: Env) -> None:
    """Too big for a packet, or for an envelope: dropped before the inbox; the core goes on."""
    inbox = env.state_dir / "inbox"
    before = inbox.stat()
    # Far past the packet limit: read past, never buffered whole.
    env.operator.publish_raw(b"{" + b" " * (4 * MAX_PACKET_BYTES) + b"}")
    dropped = env.core.wait_for_event("mqtt.packet_too_large")
    assert dropped["size"] > 4 * MAX_PACKET_BYTES
    # Within the packet limit, past the envelope limit: checked before the inbox.
    env.operator.publish_raw(b"{" + b" " * (MAX_ENVELOPE_BYTES + 10) + b"}")
    env.core.wait_for_event("deploy.payload_too_large")
    # Checked on disk: no file was created (nor created and removed) in the inbox.
    after = inbox.stat()
    assert (after.st_mtime_ns, after.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns)
    assert list(inbox.iterdir()) == []
    assert env.core.count("deploy.rejected") == 0

    arn, _, _ = env.create_secret("after/flood")
    good = env.operator.deploy([secret_resource("a", arn)])
    env.operator.wait_status(good, "Success")


def document(deployment_id: str, created_at: str, arn: str) -> str:
    """A deployment document with one secret resource."""
    return json.dumps(
        {
            "DeploymentId": deployment_id,
            "DeploymentType": "NewDeployment",
            "GroupId": "group-1",
            "GroupVersionId": uuid.uuid4().hex,
            "CreatedAt": created_at,
            "Group": {"Resources": [secret_resource("a", arn)]},
        }
    )


def test_another_deployment_at_the_applied_created_at_is_a_replay(env: Env) -> None:
    """Another DeploymentId with the applied CreatedAt fails; the same id is answered again."""
    arn, _, _ = env.create_secret("replay/db")
    created_at = next_created_at()
    first, other = str(uuid.uuid4()), str(uuid.uuid4())
    env.operator.publish_raw(document(first, created_at, arn))
    env.operator.wait_status(first, "Success")
    env.operator.publish_raw(document(other, created_at, arn))
    refused = env.operator.final_status(other)
    assert refused["DeploymentStatus"] == "Failure"
    assert f"the same instant as deployment {first}" in refused["ErrorMessage"]
    env.operator.publish_raw(document(first, created_at, arn))
    env.core.wait_for_event("deploy.duplicate", deployment_id=first)
    assert env.listing()["Deployment"]["DeploymentId"] == first


def test_a_store_that_is_a_symbolic_link_is_refused_at_start(env: Env) -> None:
    """A link at the store's path stops the core with what to do; the link is left alone."""
    arn, _, _ = env.create_secret("link/db")
    dep = env.operator.deploy([secret_resource("a", arn)])
    env.operator.wait_status(dep, "Success")
    assert env.core.stop() == 0
    moved = env.root / "elsewhere.store"
    env.store_path.rename(moved)
    env.store_path.symlink_to(moved)
    result = edge_cli("run", "--config", str(env.config), timeout=30)
    env.cli_output.append(result.stdout + result.stderr)
    assert result.returncode == 2
    assert "is a symbolic link" in result.stderr
    assert "Traceback" not in result.stderr
    assert env.store_path.is_symlink()


def test_a_config_others_can_write_is_refused_at_start(tmp_path: Path) -> None:
    """A group-writable config stops `edge run` with the file, its mode and the chmod."""
    dead = free_port()
    config = write_config(
        tmp_path / "c.toml",
        thing_name="t",
        mqtt_url=f"mqtt://127.0.0.1:{dead}",
        endpoint_url=f"http://127.0.0.1:{dead}",
    )
    assert edge_cli("init", "--config", str(config)).returncode == 0
    os.chmod(config, 0o664)
    result = edge_cli("run", "--config", str(config), timeout=30)
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "0664" in result.stderr
    assert f"chmod 0644 {config}" in result.stderr
