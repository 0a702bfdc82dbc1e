# SPDX-License-Identifier: Apache-2.0
"""Incremental fetch and rotation-aware refresh on a real core, broker and moto (via a proxy)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.proxy_thread import ProxyThread, proxy_thread
from edge.fixtures.core import CoreProcess, Operator, edge_cli, secret_resource, write_config
from edge.fixtures.services import Mosquitto, MotoServer
from tests.integration.test_workers import function, invoke
from tests.support.env import Env
from tests.support.functions import build_package
from tests.support.leaks import LEAKS

pytestmark = pytest.mark.network

VALUE_CALLS = ("GetSecretValue", "BatchGetSecretValue")


class World(Env):
    """A test's Env whose core reaches moto through a counting proxy."""

    proxy: ProxyThread

    def value_calls(self) -> int:
        """GetSecretValue and BatchGetSecretValue requests the proxy saw so far."""
        seen = self.proxy.requests()
        return sum(seen.get(op, 0) for op in VALUE_CALLS)

    def rotate(self, arn: str) -> tuple[str, str]:
        """Rotate as a rotation Lambda does: AWSPENDING, then move AWSCURRENT to it."""
        value = f"rotated-{uuid.uuid4().hex}"
        self.values.append(value)
        LEAKS.add_secret(value, f"{arn} (rotated)")
        old = self.sm.describe_secret(SecretId=arn)["VersionIdsToStages"]
        current = next(v for v, stages in old.items() if "AWSCURRENT" in stages)
        new = self.sm.put_secret_value(
            SecretId=arn, SecretString=value, VersionStages=["AWSPENDING"]
        )["VersionId"]
        self.sm.update_secret_version_stage(
            SecretId=arn,
            VersionStage="AWSCURRENT",
            MoveToVersionId=new,
            RemoveFromVersionId=current,
        )
        return new, value


def start_world(
    tmp_path: Path,
    *,
    broker: Mosquitto,
    moto: MotoServer,
    sm: Any,
    proxy: ProxyThread,
    refresh: str,
) -> World:
    """Initialise and start a core whose endpoint is the proxy, with a [refresh] table."""
    thing = f"core-{uuid.uuid4().hex[:8]}"
    config = write_config(
        tmp_path / "core.toml",
        thing_name=thing,
        mqtt_url=broker.url,
        endpoint_url=proxy.url,
        extra=f"[refresh]\n{refresh}\n",
    )
    init = edge_cli("init", "--config", str(config))
    assert init.returncode == 0, init.stderr
    core = CoreProcess(config=config, log_path=tmp_path / "core.log")
    world = World(
        root=tmp_path,
        broker=broker,
        moto=moto,
        sm=sm,
        config=config,
        core=core,
        operator=Operator(port=broker.port, prefix="edge", thing=thing),
    )
    world.proxy = proxy
    core.start()
    core.wait_for_event("mqtt.connected")
    world.operator.connect()
    return world


@pytest.fixture
def make_world(tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any) -> Iterator[Any]:
    """Start a world with the given `[refresh]` body; stop it and check for leaks afterwards."""
    worlds: list[World] = []
    with proxy_thread(moto.url) as proxy:

        def make(refresh: str = "") -> World:
            world = start_world(
                tmp_path, broker=broker, moto=moto, sm=sm, proxy=proxy, refresh=refresh
            )
            worlds.append(world)
            return world

        yield make
        for world in worlds:
            world.operator.close()
            if world.core.proc is not None:
                world.core.stop()
            output = world.all_output()
            for value in world.values:
                assert value not in output, "a secret value leaked into the logs"


@pytest.fixture
def package(tmp_path: Path) -> dict[str, Any]:
    """The V1 test functions (app.py) as a Code object."""
    path, digest = build_package(tmp_path / "app.zip")
    return {"Uri": path.as_uri(), "Sha256": digest}


@pytest.fixture
def probe(tmp_path: Path) -> dict[str, Any]:
    """The probe functions (raw IPC calls with extra arguments) as a Code object."""
    path, digest = build_package(tmp_path / "probe.zip", ("probe.py",))
    return {"Uri": path.as_uri(), "Sha256": digest}


def test_unchanged_redeploy_fetches_no_value_and_a_rotation_only_the_new_one(make_world) -> None:
    """Redeploying the same group only describes; after a rotation only that version is got."""
    world = make_world()
    arns = [world.create_secret(f"inc/{i}")[0] for i in range(4)]
    world.add_labelled_version(arns[0], "Label1")
    resources = [secret_resource(f"r{i}", arn) for i, arn in enumerate(arns)]
    resources[0] = secret_resource("r0", arns[0], ["Label1"])
    first = world.operator.deploy(resources)
    world.operator.wait_status(first, "Success")
    assert world.value_calls() > 0

    world.proxy.do(lambda p: p.reset_counts())
    second = world.operator.deploy(resources, deployment_type="Redeployment")
    world.operator.wait_status(second, "Success")
    seen = world.proxy.requests()
    assert world.value_calls() == 0, seen
    assert seen.get("DescribeSecret") == 4
    assert {s["ResourceId"] for s in world.listing()["Secrets"]} == {"r0", "r1", "r2", "r3"}

    new_version, _ = world.rotate(arns[1])
    world.proxy.do(lambda p: p.reset_counts())
    third = world.operator.deploy(resources, deployment_type="Redeployment")
    world.operator.wait_status(third, "Success")
    assert world.value_calls() == 1
    by_id = {s["ResourceId"]: s for s in world.listing()["Secrets"]}
    assert by_id["r1"]["StagingLabels"]["AWSCURRENT"] == new_version


def test_deleted_secret_still_fails_an_incremental_redeploy(make_world) -> None:
    """A held secret marked for deletion fails the redeploy (DescribeSecret says so)."""
    world = make_world()
    arn, _, _ = world.create_secret("inc/doomed")
    first = world.operator.deploy([secret_resource("a", arn)])
    world.operator.wait_status(first, "Success")
    world.sm.delete_secret(SecretId=arn)
    second = world.operator.deploy([secret_resource("a", arn)], deployment_type="Redeployment")
    failed = world.operator.final_status(second)
    assert failed["DeploymentStatus"] == "Failure"
    assert arn in failed["ErrorMessage"]
    assert world.listing()["Deployment"]["DeploymentId"] == first


def test_describe_denied_falls_back_to_a_full_fetch(make_world) -> None:
    """Credentials without DescribeSecret still deploy: full fetch, one warning."""
    world = make_world()
    world.proxy.do(lambda p: p.refuse("DescribeSecret"))
    arn, _, _ = world.create_secret("inc/no-describe")
    for n in range(3):
        dep = world.operator.deploy([secret_resource("a", arn)], deployment_type="Redeployment")
        assert world.operator.final_status(dep)["DeploymentStatus"] == "Success", n
    assert world.value_calls() == 3
    assert world.core.count("fetch.describe.unavailable") == 1


def test_refresh_picks_up_a_rotation_without_a_redeploy(make_world, package) -> None:
    """Within two intervals a function reads the rotated value; the topic says what changed."""
    world = make_world("interval_seconds = 1")
    arn, old_version, old_value = world.create_secret("rot/db")
    other, _, _ = world.create_secret("rot/other")
    reader = function("reader", "app.function_handler", package, policies=["db"])
    dep = world.operator.deploy(
        [secret_resource("db", arn), secret_resource("other", other)], functions=[reader]
    )
    world.operator.wait_status(dep, "Success")
    assert invoke(world, "reader", {"SecretId": "rot/db"})["SecretString"] == old_value
    refreshed = world.operator.subscribe("edge/things/+/secrets/refreshed")
    started = world.core.count("worker.started")

    new_version, new_value = world.rotate(arn)
    rotated_at = time.monotonic()
    topic, message = refreshed.get(timeout=10)
    # Two jittered intervals, and slack for the fetch child each refresh starts (half a second
    # alone; seconds on a loaded 2-CPU machine). The 10 s wait above is what ends a core that
    # doesn't refresh by itself.
    assert time.monotonic() - rotated_at < 2 * 1.1 + 5.0
    unchanged = world.core.count("refresh.unchanged")  # the rotation's cycle is logged already
    assert topic == f"edge/things/{world.operator.thing}/secrets/refreshed"
    assert message["DeploymentId"] == dep
    assert message["Trigger"] == "interval"
    assert message["Changes"] == [
        {
            "ResourceId": "db",
            "ARN": arn,
            "Label": "AWSCURRENT",
            "OldVersionId": old_version,
            "NewVersionId": new_version,
        }
    ]
    assert new_value not in json.dumps(message)
    assert old_value not in json.dumps(message)

    answer = invoke(world, "reader", {"SecretId": "rot/db"})
    assert (answer["SecretString"], answer["VersionId"]) == (new_value, new_version)
    assert "AWSCURRENT" in answer["VersionStages"]
    listing = world.listing()
    assert listing["Deployment"]["DeploymentId"] == dep
    by_id = {s["ResourceId"]: s for s in listing["Secrets"]}
    assert by_id["db"]["StagingLabels"]["AWSCURRENT"] == new_version
    # Only the index changed: no worker was (re)started for the refresh.
    assert world.core.count("worker.started") == started
    # Nothing more moved: two more refresh cycles find nothing, and no further message came.
    world.core.wait_for_event("refresh.unchanged", after=unchanged + 1, timeout=15)
    assert world.core.count("refresh.rotated") == 1
    assert refreshed.empty(), refreshed.get_nowait()


def test_refresh_hint_refreshes_one_secret_and_is_rate_limited(make_world, probe) -> None:
    """`Refresh: true` gets the rotated value at once; a second hint within 30 s does not."""
    world = make_world()  # no interval: only hints refresh
    arn, _, old_value = world.create_secret("hint/db")
    fn = function("probe", "probe.secret_ids", probe, policies=["db"])
    dep = world.operator.deploy([secret_resource("db", arn)], functions=[fn])
    world.operator.wait_status(dep, "Success")

    def read(*, refresh: bool) -> str:
        attempt: dict[str, Any] = {"Raw": True, "SecretId": "hint/db"}
        if refresh:
            attempt["Refresh"] = True
        (result,) = invoke(world, "probe", {"attempts": [attempt]})
        assert result["ok"], result
        return str(result["answer"]["SecretString"])

    _, first_value = world.rotate(arn)
    assert read(refresh=False) == old_value
    world.proxy.do(lambda p: p.reset_counts())
    assert read(refresh=True) == first_value
    assert world.proxy.requests().get("DescribeSecret") == 1

    _, second_value = world.rotate(arn)
    assert read(refresh=True) == first_value  # within hint_min_interval_seconds: no check
    assert world.proxy.requests().get("DescribeSecret") == 1
    assert second_value != first_value
    world.core.wait_for_event("refresh.rotated")
