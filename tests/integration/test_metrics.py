"""The Prometheus endpoint of a real core: deployments, fetches, IPC requests, workers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge.fixtures.core import edge_cli, secret_resource, write_config
from tests.support.env import Env
from tests.support.functions import build_package, function, invoke
from tests.support.metrics import scrape, value

pytestmark = pytest.mark.network


def test_metrics_follow_deployments_reads_and_workers(metered: Env, tmp_path: Path) -> None:
    """After a deployment and some reads, each family says so; no value is ever exposed."""
    env = metered
    before = scrape(env)
    assert value(before, r"edge_deployment_reports_total.*") == 0
    assert value(before, r"edge_workers_running") == 0

    path, digest = build_package(tmp_path / "app.zip")
    package = {"Uri": path.as_uri(), "Sha256": digest}
    arn, _, secret_value = env.create_secret("metrics/db")
    # Every read reaches the core (the worker's cache keeps repeats from it; tested with it).
    reader = function(
        "reader",
        "app.function_handler",
        package,
        policies=["db"],
        pinned=True,
        variables={"EDGE_ANSWER_CACHE": "off"},
    )
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
