# SPDX-License-Identifier: Apache-2.0
"""Prometheus metrics of an `edge cloud serve` replica: `http://{[cloud] metrics_listen}/metrics`.

The parts keep plain counters through hooks of a line each: the publisher reports each message
it sends and each acknowledgement (`ServeCounts.publisher_event`), the status follower each
report it records (`ServeCounts.status_ingested`, with the lag from the report's own
`UpdatedAt` to its recording). What lives in the database is read when Prometheus scrapes,
in the service's database thread: bulk deployments by state, and the outbox's depth (rows
waiting for a broker's acknowledgement, `edge.cloud.outbox.depth`). The connection pools are
read as they are. Metrics carry states and pool names,
never an id or a value.

prometheus_client renders the exposition format and aiohttp serves it (`edge.metrics`'s
server), on the service's event loop. prometheus_client is imported only when `[cloud]
metrics_listen` is set.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from structlog.typing import FilteringBoundLogger

from edge.cloud import outbox
from edge.cloud.bulk.state import BulkState
from edge.cloud.db import Database
from edge.cloud.errors import CloudDatabaseError
from edge.cloud.publisher import ACKNOWLEDGED, SENT
from edge.errors import ConfigError
from edge.metrics import Histogram

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from edge.cloud.publisher import Publisher
    from edge.cloud.serve.dbthread import DatabaseThread

#: Upper bounds (seconds) of the status ingest lag: from a core on the LAN to one whose
#: report waited on the broker while the service was away.
LAG_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


class ServeCounts:
    """The replica's counters, fed by the publisher's and the status follower's hooks."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self.published = 0
        self.acknowledged = 0
        self.statuses: collections.Counter[str] = collections.Counter()
        self.lag = Histogram(LAG_BUCKETS)

    def publisher_event(self, event: str) -> None:
        """Count a message sent (`SENT`) or acknowledged by the broker (`ACKNOWLEDGED`)."""
        if event == SENT:
            self.published += 1
        elif event == ACKNOWLEDGED:
            self.acknowledged += 1

    def status_ingested(self, status: str, updated_at: str) -> None:
        """Count one recorded status report, and how long after its `UpdatedAt` it was."""
        self.statuses[status] += 1
        try:
            updated = datetime.fromisoformat(updated_at)
        except ValueError:
            return
        if updated.tzinfo is None:
            updated = updated.replace(tzinfo=UTC)
        # A core's clock ahead of ours would make it negative: that is no lag.
        self.lag.observe(max((self._clock() - updated).total_seconds(), 0.0))


class ServeCollector:
    """Reads the replica's counters at scrape time (a prometheus_client custom collector)."""

    def __init__(
        self,
        counts: ServeCounts,
        publisher: Publisher,
        db: DatabaseThread,
        loop_db: Database,
        log: FilteringBoundLogger,
    ) -> None:
        #: Where a failed database read is reported, and the server's own lines.
        self.log = log
        self._counts = counts
        self._publisher = publisher
        self._db = db
        self._loop_db = loop_db
        self._read: _DatabaseReading = _DatabaseReading({}, 0, None)

    async def refresh(self) -> None:
        """Read what lives in the database (before each scrape); keep the last on failure."""
        try:
            self._read = await self._db.call(_read_database)
        except CloudDatabaseError as exc:
            self.log.warning("cloud.metrics.database_unavailable", error=str(exc))

    def collect(self) -> Iterable[Metric]:
        """Yield every metric family, built from the counters and the last database read."""
        from prometheus_client.core import (  # noqa: PLC0415 - metrics_listen only
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        counts, read = self._counts, self._read
        yield CounterMetricFamily(
            "edge_cloud_publishes", "Messages sent to the broker (QoS 1)", value=counts.published
        )
        yield CounterMetricFamily(
            "edge_cloud_publish_acks",
            "Messages the broker acknowledged (PUBACK)",
            value=counts.acknowledged,
        )
        yield GaugeMetricFamily(
            "edge_cloud_publisher_queued",
            "Messages waiting in the publisher for their turn (paced by [mqtt] publish_rate)",
            value=self._publisher.queued,
        )
        yield GaugeMetricFamily(
            "edge_cloud_outbox_depth",
            "Deployments in the outbox, waiting for the broker's acknowledgement (all replicas')",
            value=read.outbox_depth,
        )
        statuses = CounterMetricFamily(
            "edge_cloud_statuses_ingested",
            "Status reports from cores recorded by this replica, by status",
            labels=["status"],
        )
        for status, n in sorted(counts.statuses.items()):
            statuses.add_metric([status], n)
        yield statuses
        yield counts.lag.family(
            "edge_cloud_status_ingest_lag_seconds",
            "From a status report's UpdatedAt (the core's clock) to its recording",
        )
        bulk = GaugeMetricFamily(
            "edge_cloud_bulk_deployments",
            "Bulk deployments by state (all replicas'), as of the last scrape",
            labels=["state"],
        )
        for state in BulkState:
            bulk.add_metric([state.value], read.bulk_states.get(state.value, 0))
        yield bulk
        yield from self._pools()

    def _pools(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415 - metrics_listen only

        families = [
            GaugeMetricFamily(f"edge_cloud_db_pool_{name}", doc, labels=["pool"])
            for name, doc in (
                ("size", "Connections the pool keeps"),
                ("checked_out", "Connections in use"),
                ("overflow", "Connections open beyond the pool's size"),
            )
        ]
        # "requests": the API's and the status follower's thread; "loop": the bulk runner's.
        pools = (("requests", self._read.requests_pool), ("loop", self._loop_db.pool_use()))
        for name, use in pools:
            if use is not None:
                for family, value in zip(families, use, strict=True):
                    family.add_metric([name], value)
        yield from families


@dataclass(frozen=True, slots=True)
class _DatabaseReading:
    """What a scrape read from the database."""

    bulk_states: dict[str, int]
    outbox_depth: int
    requests_pool: tuple[int, int, int] | None


def _read_database(db: Database) -> _DatabaseReading:
    with db.read() as conn:
        rows = conn.execute("SELECT state, count(*) AS n FROM bulk_deployments GROUP BY state")
        states = {str(r["state"]): int(r["n"]) for r in rows}
    return _DatabaseReading(states, outbox.depth(db), db.pool_use())


@contextlib.asynccontextmanager
async def metrics_server(
    listen: tuple[str, int] | None, collector: ServeCollector, *, config_path: str
) -> AsyncIterator[None]:
    """Serve `collector` on `listen` while the block runs; nothing when `listen` is None.

    Raises:
        ConfigError: The address can't be listened on.
    """
    if listen is None:
        yield
        return
    from edge.metrics import MetricsServer  # noqa: PLC0415 - metrics_listen only

    server = MetricsServer(listen, collector, logger=collector.log, before_scrape=collector.refresh)
    try:
        await server.__aenter__()
    except OSError as exc:
        raise ConfigError(
            config_path,
            f"can't listen on {listen[0]}:{listen[1]}: {exc.strerror or exc}",
            key="cloud.metrics_listen",
        ) from None
    try:
        yield
    finally:
        await server.__aexit__(None, None, None)
