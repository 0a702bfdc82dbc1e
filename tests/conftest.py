"""Shared fixtures: real Mosquitto and moto servers, started once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from edge.fixtures.core import OUTPUT_WATCHERS
from edge.fixtures.services import (
    AWS_TEST_ENV,
    TEST_REGION,
    Mosquitto,
    MotoServer,
    run_mosquitto,
    run_moto,
)
from tests.support.leaks import LEAKS, LeakCheckPlugin
from tests.support.postgres import new_schema, server_url, session_database


def pytest_configure(config: pytest.Config) -> None:
    """Check the whole session's output for secret values at its end."""
    config.pluginmanager.register(LeakCheckPlugin(LEAKS), "edge-leak-check")
    OUTPUT_WATCHERS.append(LEAKS.add_output)


def _register_sent_secret(params: dict[str, Any], **_: Any) -> None:
    """Every value a test sends to Secrets Manager becomes a value the leak check looks for."""
    secret_id = str(params.get("Name") or params.get("SecretId") or "unnamed secret")
    for key in ("SecretString", "SecretBinary"):
        value = params.get(key)
        if isinstance(value, str | bytes) and value:
            LEAKS.add_secret(value, secret_id)


@pytest.fixture(scope="session", autouse=True)
def _leak_check(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Scan the session's temporary files; learn every secret value sent through boto3."""
    LEAKS.add_root(tmp_path_factory.getbasetemp())
    boto3.setup_default_session()
    assert boto3.DEFAULT_SESSION is not None
    boto3.DEFAULT_SESSION.events.register(
        "before-parameter-build.secrets-manager", _register_sent_secret
    )


@pytest.fixture(autouse=True)
def _aws_test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point every botocore chain at fake credentials, never at a developer's real ones."""
    for key, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """Moto's Secrets Manager (and S3) in server mode on a free loopback port."""
    saved = {k: os.environ.get(k) for k in AWS_TEST_ENV}
    os.environ.update(AWS_TEST_ENV)
    try:
        with run_moto(tmp_path_factory.mktemp("moto") / "moto.log") as server:
            yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A PostgreSQL database of this session's (this xdist worker's) own, dropped at its end."""
    with session_database(server_url()) as url:
        yield url


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """An empty schema of this test's own in the session's database, as a database URL."""
    return new_schema(postgres_database)


@pytest.fixture
def cloud_database(request: pytest.FixtureRequest) -> str:
    """`[cloud] database` for this test's control plane: PostgreSQL, or SQLite when asked.

    Control-plane tests run on PostgreSQL: an empty schema of the test's own. The embedded
    paths (the CLI without a server) and a smoke set run on SQLite, a file beside the config:
    a module says so with `CLOUD_ENGINE = "sqlite"`, a test with
    `@pytest.mark.parametrize("cloud_database", ["sqlite", "postgresql"], indirect=True)`.
    """
    engine = getattr(request, "param", getattr(request.module, "CLOUD_ENGINE", "postgresql"))
    if engine == "sqlite":
        return "cloud/edge-cloud.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """The session's moto server, emptied for this test."""
    moto_server.reset()
    return moto_server


@pytest.fixture
def sm(moto: MotoServer):
    """A boto3 Secrets Manager client on the test's moto server, to arrange secrets."""
    return boto3.client("secretsmanager", region_name=TEST_REGION, endpoint_url=moto.url)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto broker of this test's own, on a free loopback port."""
    with run_mosquitto(tmp_path / "mosquitto") as b:
        yield b
