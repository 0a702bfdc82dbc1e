# SPDX-License-Identifier: Apache-2.0
"""A running core for fault tests: its own [fetch] settings, endpoint and state directory."""

from __future__ import annotations

import contextlib
import json
import queue
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge.fixtures.core import CoreProcess, Operator, edge_cli, write_config
from edge.fixtures.services import Mosquitto, MotoServer
from tests.support.disk import InProcessCore
from tests.support.env import Env
from tests.support.functions import code_of, function, read_secret

#: The [fetch] table `write_config` writes, which fault tests replace with their own.
_DEFAULT_FETCH = "[fetch]\ndeadline_seconds = 30\n"


def fetch_table(*, deadline_seconds: float = 15, max_attempts: int = 3) -> str:
    """A [fetch] table with small retry settings, so that fault tests stay fast."""
    return (
        f"[fetch]\ndeadline_seconds = {deadline_seconds}\nmax_attempts = {max_attempts}\n"
        "concurrency = 4\n"
    )


@contextlib.contextmanager
def running_core(
    root: Path,
    *,
    broker: Mosquitto,
    moto: MotoServer,
    sm: Any,
    endpoint_url: str,
    fetch: str,
    before_init: Callable[[Path], None] | None = None,
    make_core: Callable[[Path, Path], CoreProcess] | None = None,
) -> Iterator[Env]:
    """Initialise and start `edge run` with the given endpoint and [fetch] table.

    `before_init(state_dir)` runs before `edge init`, e.g. to mount a filesystem there;
    `make_core(config, log_path)` builds the core (default: an `edge run` process). On the
    way out the core is stopped and every log line, CLI output and status document it produced
    is checked for every secret value the test created.
    """
    thing = f"core-{uuid.uuid4().hex[:8]}"
    config = write_config(
        root / "core.toml", thing_name=thing, mqtt_url=broker.url, endpoint_url=endpoint_url
    )
    text = config.read_text()
    assert _DEFAULT_FETCH in text, "write_config changed its [fetch] table"
    config.write_text(text.replace(_DEFAULT_FETCH, fetch))
    if before_init is not None:
        before_init(root / "state")
    init = edge_cli("init", "--config", str(config))
    assert init.returncode == 0, init.stderr
    core = (make_core or _core_process)(config, root / "core.log")
    operator = Operator(port=broker.port, prefix="edge", thing=thing)
    env = Env(
        root=root, broker=broker, moto=moto, sm=sm, config=config, core=core, operator=operator
    )
    core.start()
    try:
        core.wait_for_event("mqtt.connected")
        operator.connect()
        yield env
    finally:
        operator.close()
        if isinstance(core, InProcessCore) or core.proc is not None:
            core.stop()
    with contextlib.suppress(queue.Empty):
        while True:
            operator.seen.append(operator.statuses.get_nowait())
    output = env.all_output() + json.dumps(operator.seen)
    for value in env.values:
        assert value not in output, "a secret value leaked into a log, CLI output or status"


def _core_process(config: Path, log_path: Path) -> CoreProcess:
    return CoreProcess(config=config, log_path=log_path)


def reader_function(
    code_zip: Path, resource_ids: list[str], name: str = "reader"
) -> dict[str, Any]:
    """A V1 function (tests/integration/functions/app.py) that reads the secrets it may."""
    return function(name, "app.function_handler", code_of(code_zip), policies=resource_ids)


def read_through_ipc(env: Env, secret_id: str, name: str = "reader") -> dict[str, Any]:
    """Have the reader function ask the core for a secret (greengrasssdk over the IPC socket)."""
    return read_secret(env, name, secret_id)


def rotate(env: Env, arn: str) -> tuple[str, str]:
    """Put a new AWSCURRENT version in Secrets Manager; return (VersionId, value)."""
    value = f"rotated-{secrets.token_urlsafe(18)}"
    env.values.append(value)
    return env.sm.put_secret_value(SecretId=arn, SecretString=value)["VersionId"], value


def deploy_and_wait(env: Env, resources: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """Publish a deployment and return its final status document."""
    return env.operator.final_status(env.operator.deploy(resources, **kwargs))


def served(env: Env) -> tuple[str, dict[str, dict[str, str]]]:
    """`edge secrets list`: the DeploymentId, and resource id -> staging label -> VersionId."""
    listing = env.listing()
    labels = {s["ResourceId"]: s["StagingLabels"] for s in listing["Secrets"]}
    return listing["Deployment"]["DeploymentId"], labels
