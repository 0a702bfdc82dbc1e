"""Fixtures for integration tests: a configured, running core and an operator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.fixtures.services import Mosquitto, MotoServer
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
