"""Fixtures for integration tests: a configured, running core and an operator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.fixtures.services import Mosquitto, MotoServer
from tests.support.env import Env, running_env


@pytest.fixture
def env(tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any) -> Iterator[Env]:
    """A core process (initialised, running, subscribed) and an operator on the test's broker."""
    with running_env(tmp_path, broker, moto, sm) as e:
        yield e
