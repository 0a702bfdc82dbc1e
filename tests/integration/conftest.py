"""Fixtures for integration tests: a configured, running core and an operator."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.core import CoreProcess, Operator, edge_cli, write_config
from tests.support.env import Env
from tests.support.services import Mosquitto, MotoServer


@pytest.fixture
def env(tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any) -> Iterator[Env]:
    """A core process (initialised, running, subscribed) and an operator on the test's broker."""
    thing = f"core-{uuid.uuid4().hex[:8]}"
    config = write_config(
        tmp_path / "core.toml", thing_name=thing, mqtt_url=broker.url, endpoint_url=moto.url
    )
    init = edge_cli("init", "--config", str(config))
    assert init.returncode == 0, init.stderr
    core = CoreProcess(config=config, log_path=tmp_path / "core.log")
    operator = Operator(port=broker.port, prefix="edge", thing=thing)
    e = Env(
        root=tmp_path, broker=broker, moto=moto, sm=sm, config=config, core=core, operator=operator
    )
    core.start()
    core.wait_for_event("mqtt.connected")
    operator.connect()
    yield e
    operator.close()
    if core.proc is not None:
        core.stop()
    # The rule every feature keeps: no secret value in any log or CLI output, ever.
    output = e.all_output()
    for value in e.values:
        assert value not in output, "a secret value leaked into the logs"
