"""The Prometheus endpoint of a real core: deployments, fetches, IPC requests, workers."""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.fixtures.core import CoreProcess, Operator, edge_cli, secret_resource, write_config
from edge.fixtures.services import Mosquitto, MotoServer, free_port
from tests.support.env import Env
from tests.support.functions import build_package, function, invoke

pytestmark = pytest.mark.network


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


def scrape(env: Env) -> dict[str, float]:
    """Read /metrics; return every sample as {'name{labels}': value}."""
    url = (env.root / "metrics.url").read_text()
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback, ours
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    env.core.log_path.parent.joinpath("metrics.txt").write_text(text)  # scanned for leaks
    return samples


def value(samples: dict[str, float], pattern: str) -> float:
    """Sum of the samples whose 'name{labels}' matches `pattern`."""
    return sum(v for k, v in samples.items() if re.fullmatch(pattern, k))


def test_metrics_follow_deployments_reads_and_workers(metered: Env, tmp_path: Path) -> None:
    """After a deployment and some reads, each family says so; no value is ever exposed."""
    env = metered
    before = scrape(env)
    assert value(before, r"edge_deployment_reports_total.*") == 0
    assert value(before, r"edge_workers_running") == 0

    path, digest = build_package(tmp_path / "app.zip")
    package = {"Uri": path.as_uri(), "Sha256": digest}
    arn, _, secret_value = env.create_secret("metrics/db")
    reader = function("reader", "app.function_handler", package, policies=["db"], pinned=True)
    dep = env.operator.deploy([secret_resource("db", arn)], functions=[reader])
    env.operator.wait_status(dep, "Success")
    for _ in range(5):
        assert invoke(env, "reader", {"SecretId": "metrics/db"})["SecretString"] == secret_value
    assert invoke(env, "reader", {"SecretId": "metrics/none"})["error"] == "SecretsManagerError"

    after = scrape(env)
    assert value(after, r'edge_deployment_reports_total\{status="Success"\}') == 1
    assert value(after, r"edge_store_rotations_total") == 1
    assert value(after, r"edge_secret_fetch_calls_total\{.*\}") >= 1
    assert value(after, r"edge_secret_fetch_seconds_count") == 1
    assert value(after, r"edge_store_age_seconds") < 120
    reads = r'edge_ipc_requests_total\{op="secretsmanager.get_secret_value_v1",result="%s"\}'
    assert value(after, reads % "ok") == 5
    assert value(after, reads % "404") == 1
    latency = r'edge_ipc_request_duration_seconds_count\{op="secretsmanager.get_secret_value_v1"\}'
    assert value(after, latency) == 6
    assert value(after, r'edge_ipc_request_duration_seconds_bucket\{.*le="\+Inf".*\}') >= 6
    assert value(after, r"edge_workers_running") == 1
    assert value(after, r"edge_worker_restarts_total\{.*\}") == 0
    assert value(after, r"edge_secret_reads_stale_total") == 0
    text = (env.core.log_path.parent / "metrics.txt").read_text()
    assert str(secret_value) not in text


def test_a_restarted_core_counts_its_republished_status_apart(metered: Env) -> None:
    """The latest status sent again at start is a repeat, not a new Success report."""
    env = metered
    arn, _, _ = env.create_secret("metrics/restart")
    dep = env.operator.deploy([secret_resource("r", arn)])
    env.operator.wait_status(dep, "Success")
    assert value(scrape(env), r'edge_deployment_reports_total\{status="Success"\}') == 1
    assert value(scrape(env), r"edge_deployment_reports_repeated_total.*") == 0

    started = env.core.count("metrics.listening")
    env.core.stop()
    env.core.start()
    env.core.wait_for_event("metrics.listening", after=started)
    deadline = time.monotonic() + 20
    samples = scrape(env)
    while not value(samples, r"edge_deployment_reports_repeated_total.*"):
        assert time.monotonic() < deadline, "the core sent no status again at start"
        time.sleep(0.1)
        samples = scrape(env)
    assert value(samples, r'edge_deployment_reports_repeated_total\{status="Success"\}') == 1
    assert value(samples, r"edge_deployment_reports_total.*") == 0


def test_a_bad_listen_address_is_a_config_error(tmp_path: Path) -> None:
    """`[metrics] listen` must be host:port; the error names the key."""
    config = write_config(
        tmp_path / "core.toml",
        thing_name="t",
        mqtt_url="mqtt://127.0.0.1:1",
        endpoint_url="http://127.0.0.1:1",
        extra='\n[metrics]\nlisten = "9464"\n',
    )
    result = edge_cli("secrets", "list", "--config", str(config))
    assert result.returncode == 2
    assert "metrics.listen" in result.stderr
    assert "host:port" in result.stderr
