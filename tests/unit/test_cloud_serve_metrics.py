"""The replica's counters (publish events, status ingest lag) and its database gauges."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge.cloud.config import Pacing
from edge.cloud.db import Database
from edge.cloud.outbox import enqueue
from edge.cloud.publisher import ACKNOWLEDGED, SENT, Publisher
from edge.cloud.serve.dbthread import DatabaseThread
from edge.cloud.serve.metrics import LAG_BUCKETS, ServeCollector, ServeCounts
from edge.log import get_logger
from edge.settings import MqttSettings

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def report(status: str, updated: datetime | str) -> tuple[str, str]:
    at = updated if isinstance(updated, str) else updated.isoformat().replace("+00:00", "Z")
    return status, at


def test_publisher_events_count_sends_and_acknowledgements() -> None:
    counts = ServeCounts()
    for event in (SENT, SENT, ACKNOWLEDGED, "something else"):
        counts.publisher_event(event)
    assert (counts.published, counts.acknowledged) == (2, 1)


def test_ingest_lag_is_measured_from_the_reports_own_timestamp() -> None:
    counts = ServeCounts(clock=lambda: NOW)
    counts.status_ingested(*report("InProgress", NOW - timedelta(seconds=0.2)))
    counts.status_ingested(*report("Success", NOW - timedelta(seconds=7)))
    # A core whose clock runs ahead: no negative lag.
    counts.status_ingested(*report("Success", NOW + timedelta(seconds=30)))
    # A timestamp that doesn't parse is counted as a status, without a lag.
    counts.status_ingested(*report("Failure", "yesterday"))
    assert dict(counts.statuses) == {"InProgress": 1, "Success": 2, "Failure": 1}
    assert counts.lag.count == 3
    assert abs(counts.lag.sum - 7.2) < 1e-6
    cumulative = dict(zip(LAG_BUCKETS, counts.lag.buckets, strict=True))
    assert (cumulative[0.05], cumulative[0.25], cumulative[5.0], cumulative[10.0]) == (1, 2, 2, 3)


def scrape_collector(tmp_path: Path) -> dict[str, float]:
    """One refresh and collect of a collector on a SQLite control plane with a bulk deployment."""

    async def main() -> dict[str, float]:
        async with DatabaseThread(lambda: Database.open(tmp_path / "cloud.db")) as db:
            await db.call(_running_bulk)
            with Database.open(tmp_path / "cloud.db") as loop_db:
                publisher = Publisher(
                    MqttSettings(url="mqtt://127.0.0.1:1", host="127.0.0.1", port=1, tls=False),
                    Pacing(),
                )
                collector = ServeCollector(ServeCounts(), publisher, db, loop_db, get_logger("t"))
                await collector.refresh()
                return {
                    s.name + repr(sorted(s.labels.items())): s.value
                    for family in collector.collect()
                    for s in family.samples
                }

    return asyncio.run(main())


def _running_bulk(db: Database) -> None:
    with db.write() as conn:
        conn.execute(
            "INSERT INTO bulk_deployments (id, arn, created_at, input_uri, execution_role_arn,"
            " state, tags, retry_attempts, lines_loaded, error_details) VALUES ('b', 'arn:b',"
            " '2026-01-01T00:00:00.000Z', 's3://b/k', 'arn:role', 'Running', '{}', 0, 0, '[]')"
        )
        conn.execute(
            "INSERT INTO groups (id, arn, created_at, updated_at) VALUES ('g', 'arn:g', 't', 't')"
        )
        conn.execute(
            "INSERT INTO deployments (id, group_id, group_version_id, arn, deployment_type,"
            " thing_name, created_at, status, updated_at, envelope) VALUES ('d', 'g', 'v',"
            " 'arn:d', 'NewDeployment', 'thing', 't', 'Building', 't', :envelope)",
            {"envelope": b"sealed"},
        )
        enqueue(conn, "d", "edge/things/thing/deployments")


def test_database_gauges_are_read_at_scrape_time(tmp_path: Path) -> None:
    samples = scrape_collector(tmp_path)
    assert samples["edge_cloud_bulk_deployments[('state', 'Running')]"] == 1
    assert samples["edge_cloud_bulk_deployments[('state', 'Completed')]"] == 0
    assert samples["edge_cloud_outbox_depth[]"] == 1
