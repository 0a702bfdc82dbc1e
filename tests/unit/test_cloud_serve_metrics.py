"""The replica's counters: publish events and status ingest lag."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edge.cloud.publisher import ACKNOWLEDGED, SENT
from edge.cloud.serve.metrics import LAG_BUCKETS, ServeCounts
from edge.cloud.status import StatusReport

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def report(status: str, updated: datetime | str) -> StatusReport:
    at = updated if isinstance(updated, str) else updated.isoformat().replace("+00:00", "Z")
    return StatusReport(deployment_id="d", status=status, updated_at=at)


def test_publisher_events_count_sends_and_acknowledgements() -> None:
    counts = ServeCounts()
    for event in (SENT, SENT, ACKNOWLEDGED, "something else"):
        counts.publisher_event(event)
    assert (counts.published, counts.acknowledged) == (2, 1)


def test_ingest_lag_is_measured_from_the_reports_own_timestamp() -> None:
    counts = ServeCounts(clock=lambda: NOW)
    counts.status_ingested(report("InProgress", NOW - timedelta(seconds=0.2)))
    counts.status_ingested(report("Success", NOW - timedelta(seconds=7)))
    # A core whose clock runs ahead: no negative lag.
    counts.status_ingested(report("Success", NOW + timedelta(seconds=30)))
    # A timestamp that doesn't parse is counted as a status, without a lag.
    counts.status_ingested(report("Failure", "yesterday"))
    assert dict(counts.statuses) == {"InProgress": 1, "Success": 2, "Failure": 1}
    assert counts.lag.count == 3
    assert abs(counts.lag.sum - 7.2) < 1e-6
    cumulative = dict(zip(LAG_BUCKETS, counts.lag.buckets, strict=True))
    assert (cumulative[0.05], cumulative[0.25], cumulative[5.0], cumulative[10.0]) == (1, 2, 2, 3)
