# SPDX-License-Identifier: Apache-2.0
"""A full or read-only state directory while a real deployment rotates the store.

Where this process may mount (root with CAP_SYS_ADMIN, as in CI), the faults are real: the
core's state directory is a tiny tmpfs, filled until it answers ENOSPC, or remounted read-only.
Elsewhere the core runs in this process and the same errors are raised from the function every
state file write goes through; the test id says which way ran ([real-tmpfs] or [mocked-oserror]).
Either way the deployment is a real one, over MQTT, with secrets from moto (through the latency
proxy, which holds the fetch long enough to break the disk in the middle of a rotation).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.proxy_thread import ProxyThread, proxy_thread
from edge.fixtures.core import secret_resource
from edge.fixtures.services import Mosquitto, MotoServer
from tests.support.disk import DiskFaults, disk_faults, fault_path
from tests.support.env import Env
from tests.support.faults import (
    deploy_and_wait,
    fetch_table,
    read_through_ipc,
    reader_function,
    rotate,
    running_core,
    served,
)

pytestmark = pytest.mark.network

#: Decided once, at collection, so that the test ids show it.
FAULT_PATH = fault_path()
_IDS = {"mount": "real-tmpfs", "mock": "mocked-oserror"}


@pytest.fixture(params=[FAULT_PATH], ids=_IDS.get)
def faults(request: pytest.FixtureRequest) -> Iterator[DiskFaults]:
    """Disk faults for the state directory; unmounted after the core stops, whatever happened."""
    with disk_faults(request.param) as f:
        request.node.user_properties.append(("disk_fault_path", f.kind))
        yield f


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[ProxyThread]:
    """The latency proxy in front of this test's moto, without delay until a test sets one."""
    with proxy_thread(moto.url) as p:
        yield p


@pytest.fixture
def core_env(
    tmp_path: Path,
    broker: Mosquitto,
    moto: MotoServer,
    sm: Any,
    *,
    proxy: ProxyThread,
    faults: DiskFaults,
) -> Iterator[Env]:
    """A running core whose state directory the faults act on."""
    with running_core(
        tmp_path,
        broker=broker,
        moto=moto,
        sm=sm,
        endpoint_url=proxy.url,
        fetch=fetch_table(),
        before_init=faults.prepare,
        make_core=faults.core,
    ) as env:
        yield env


#: What a user reads in the message for each fault: the system's own words for the errno.
PROBLEMS = {"fill": os.strerror(errno.ENOSPC), "read_only": os.strerror(errno.EROFS)}


@pytest.mark.parametrize("when", ["before-delivery", "mid-rotation"])
@pytest.mark.parametrize("fault", ["fill", "read_only"], ids=["disk-full", "read-only"])
def test_unwritable_state_dir_fails_the_deployment_and_keeps_serving_the_old_store(
    core_env: Env, faults: DiskFaults, proxy: ProxyThread, fault: str, when: str
) -> None:
    """The rotation fails with the path and the cause; the old store stays, byte for byte.

    "before-delivery" breaks the disk before the document arrives, so even the core's inbox
    can't take it; "mid-rotation" breaks it while the secrets are being fetched, after the
    document was written down and before the new store is.
    """
    env = core_env
    arn, old_version, old_value = env.create_secret("disk/db")
    resources = [secret_resource("db", arn)]
    functions = [reader_function(env.root / "app.zip", ["db"])]
    first = deploy_and_wait(env, resources, functions=functions)
    assert first["DeploymentStatus"] == "Success", first
    new_version, new_value = rotate(env, arn)
    before = env.store_path.read_bytes()

    try:
        if when == "mid-rotation":
            proxy.do(lambda p: p.inject(status=None, delay=1.0, count=None))
            second = env.operator.deploy(
                resources, functions=functions, deployment_type="Redeployment"
            )
            env.core.wait_for_event("fetch.started", after=1)
            getattr(faults, fault)()
        else:
            getattr(faults, fault)()
            second = env.operator.deploy(
                resources, functions=functions, deployment_type="Redeployment"
            )
        failed = env.operator.final_status(second)
        assert failed["DeploymentStatus"] == "Failure", failed
        message = failed["ErrorMessage"]
        assert str(env.store_path) in message
        assert PROBLEMS[fault] in message
        assert "previous store is unchanged" in message
        assert env.store_path.read_bytes() == before
        assert served(env) == (first["DeploymentId"], {"db": {"AWSCURRENT": old_version}})
        assert read_through_ipc(env, "disk/db")["SecretString"] == old_value
    finally:
        faults.clear()
        proxy.do(lambda p: p.clear_faults())

    again = deploy_and_wait(env, resources, functions=functions, deployment_type="Redeployment")
    assert again["DeploymentStatus"] == "Success", again
    assert served(env) == (again["DeploymentId"], {"db": {"AWSCURRENT": new_version}})
    assert read_through_ipc(env, "disk/db")["SecretString"] == new_value
