"""Fixtures for integration tests: a configured, running core and an operator."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.fixtures.core import CoreProcess, Operator, edge_cli, write_config
from edge.fixtures.services import Mosquitto, MotoServer, free_port
from tests.support.env import Env, running_env
from tests.support.softhsm import Token, softhsm_token


@pytest.fixture
def env(tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any) -> Iterator[Env]:
    """A core process (initialised, running, subscribed) and an operator on the test's broker."""
    with running_env(tmp_path, broker, moto, sm) as e:
        yield e


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    """The session's one SoftHSM2 token: SoftHSM reads its config once per process.

    Each test module that needs keys generates its own there, under labels of its own.
    """
    with softhsm_token(tmp_path_factory.mktemp("softhsm")) as token:
        yield token


@pytest.fixture
def metered(tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any) -> Iterator[Env]:
    """A core with `[metrics] listen` on a free loopback port (`env.root / "metrics.url"`)."""
    port = free_port()
    thing = f"core-{uuid.uuid4().hex[:8]}"
    config = write_config(
        tmp_path / "core.toml",
        thing_name=thing,
        mqtt_url=broker.url,
        endpoint_url=moto.url,
        extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
    )
    assert edge_cli("init", "--config", str(config)).returncode == 0
    core = CoreProcess(config=config, log_path=tmp_path / "core.log")
    operator = Operator(port=broker.port, prefix="edge", thing=thing)
    env = Env(
        root=tmp_path, broker=broker, moto=moto, sm=sm, config=config, core=core, operator=operator
    )
    (tmp_path / "metrics.url").write_text(f"http://127.0.0.1:{port}/metrics")
    core.start()
    core.wait_for_event("metrics.listening")
    core.wait_for_event("mqtt.connected")
    operator.connect()
    yield env
    operator.close()
    core.stop()
