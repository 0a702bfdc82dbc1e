"""`[cloud] metrics_listen`: a real `edge cloud serve` scraped over HTTP while it deploys.

A bulk deployment to simulated cores on Mosquitto moves the publish, acknowledgement and
status ingest counters; the bulk deployment gauge shows it Completed; the pools are reported.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.fixtures.services import Mosquitto, MotoServer, free_port
from edge.fixtures.simulate import SimulatedFleet
from tests.integration.test_cloud_bulk import (
    ROLE,
    fleets,
    input_lines,
    make_groups,
    report,
    state_is,
    upload,
    wait_for,
)
from tests.integration.test_cloud_postgres import serve_on

pytestmark = pytest.mark.network

__all__ = ["fleets"]
CORES = 4


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the replica's /metrics: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def service(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, cloud_database: str
) -> Iterator[tuple[Any, Any, Path, int]]:
    port = free_port()
    service, client, config = serve_on(
        tmp_path, broker, moto, cloud_database, metrics_listen=f"127.0.0.1:{port}"
    )
    yield service, client, config, port
    assert service.stop() == 0
    assert "Traceback" not in service.log_text()


def test_a_scrape_shows_publishes_statuses_and_bulk_deployments_of_a_real_serve(
    service: tuple[Any, Any, Path, int], moto: MotoServer, fleets: list[SimulatedFleet]
) -> None:
    serve, client, config, port = service
    serve.wait_for_event("metrics.listening", url=f"http://127.0.0.1:{port}/metrics")
    before = scrape(port)
    assert before[("edge_cloud_publishes_total", ())] == 0
    assert before[("edge_cloud_bulk_deployments", (("state", "Completed"),))] == 0
    # The request pool has served the scrape's own query; the loop pool is there too.
    assert before[("edge_cloud_db_pool_size", (("pool", "requests"),))] >= 1
    assert ("edge_cloud_db_pool_checked_out", (("pool", "loop"),)) in before
    assert ("edge_cloud_db_pool_overflow", (("pool", "requests"),)) in before

    fleet = SimulatedFleet(config, ("--count", str(CORES), "--processes", "1"))
    fleets.append(fleet)
    fleet.start()
    groups = make_groups(client, CORES)
    uri = upload(moto, input_lines(groups))
    bulk_id = client.start_bulk_deployment(ExecutionRoleArn=ROLE, InputFileUri=uri)[
        "BulkDeploymentId"
    ]
    wait_for(state_is(client, bulk_id, "Completed"), "Completed")
    wait_for(
        lambda: [d["DeploymentStatus"] for d in report(client, bulk_id)] == ["Success"] * CORES,
        "Success from every core",
    )

    def moved() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        now = scrape(port)
        done = (
            now[("edge_cloud_publish_acks_total", ())] >= CORES
            and now[("edge_cloud_statuses_ingested_total", (("status", "Success"),))] == CORES
        )
        return now if done else None

    after = wait_for(moved, "the counters to move", timeout=30)
    assert after[("edge_cloud_publishes_total", ())] >= CORES
    assert after[("edge_cloud_publish_acks_total", ())] <= after[("edge_cloud_publishes_total", ())]
    ingested = sum(
        v for (name, _), v in after.items() if name == "edge_cloud_statuses_ingested_total"
    )
    # Every recorded report has its lag in the histogram, and the lags are of this run.
    assert after[("edge_cloud_status_ingest_lag_seconds_count", ())] == ingested
    assert after[("edge_cloud_status_ingest_lag_seconds_sum", ())] < ingested * 60
    assert after[("edge_cloud_bulk_deployments", (("state", "Completed"),))] == 1
    assert after[("edge_cloud_bulk_deployments", (("state", "Running"),))] == 0
    assert after[("edge_cloud_publisher_queued", ())] == 0
    assert after[("edge_cloud_outbox_depth", ())] == 0


def test_serve_without_metrics_listen_loads_no_prometheus_client() -> None:
    """The service's modules leave prometheus_client out until metrics_listen asks for it."""
    probe = (
        "import sys, edge.cloud.serve.service, edge.cloud.serve.metrics;"
        "print('prometheus_client' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
