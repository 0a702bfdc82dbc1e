# SPDX-License-Identifier: Apache-2.0
"""Prometheus metrics of a running core, served at `http://{[metrics] listen}/metrics`.

Nothing here sits on the hot path: the parts keep the plain counters they need anyway (the IPC
server counts requests and their latencies, the fetcher its API calls, the worker manager its
restarts, the services the reads served from a stale store), and the collector below turns
them into metric families when Prometheus scrapes. Only deployment outcomes and fetch timings
are counted here, from the wrappers `edge.core.Core` puts around the status publisher and the
secret source. Metrics carry ids (function ARNs, operation names), never a value.

prometheus_client renders the exposition format; aiohttp serves it on the core's own event loop,
so no thread is added. Both are imported only when `[metrics] listen` is set (a `CoreCollector`
is built): together they hold about 13 MB that a core without metrics has no use for.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol, Self

from structlog.typing import FilteringBoundLogger

from edge.ipc.server import LATENCY_BOUNDS_SECONDS
from edge.log import get_logger

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client.core import Metric

    from edge.errors import SecretFetchError
    from edge.ipc.server import IpcServer
    from edge.model.group import SecretResource
    from edge.secrets.contents import LocalSecret, SecretVersion
    from edge.secrets.refresh import RefreshCounts
    from edge.secrets.source import Described, SecretSource
    from edge.secrets.storefile import StoreFile
    from edge.workers.manager import WorkerManager
    from edge.workers.services import CoreServices

#: Upper bounds (seconds) of the deployment fetch histogram: from a warm LAN to a slow uplink.
FETCH_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    """A histogram's plain counts, turned into a metric family at scrape time."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        #: Cumulative: a value counts in every bucket it fits.
        self.buckets = [0] * len(self.bounds)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one value."""
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.buckets[i] += 1

    def family(self, name: str, documentation: str) -> Metric:
        """The metric family, as prometheus_client renders it."""
        from prometheus_client.core import HistogramMetricFamily  # noqa: PLC0415 - [metrics] listen only

        buckets = [(repr(b), n) for b, n in zip(self.bounds, self.buckets, strict=True)]
        buckets.append(("+Inf", self.count))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum)


class DeploymentCounts:
    """Deployment outcomes and fetch timings, fed by the core's wrappers."""

    def __init__(self) -> None:
        #: New reports: each deployment's InProgress and outcome, once.
        self.by_status: collections.Counter[str] = collections.Counter()
        #: Statuses sent again for an outcome already reported: the latest one when the core
        #: starts, and a redelivered deployment's.
        self.repeated: collections.Counter[str] = collections.Counter()
        self.fetch_seconds = Histogram(FETCH_BUCKETS)
        self.fetch_failures = 0

    def status_published(self, payload: bytes, *, repeated: bool = False) -> str | None:
        """Count one status document (`{"DeploymentStatus": "InProgress"|"Success"|…, …}`).

        Args:
            payload: The document.
            repeated: It reports an outcome already reported (see `repeated`).

        Returns:
            The status it reports, or None for a document without one.
        """
        try:
            status = json.loads(payload).get("DeploymentStatus")
        except (ValueError, AttributeError):
            return None
        if not isinstance(status, str):
            return None
        (self.repeated if repeated else self.by_status)[status] += 1
        return status

    def fetch_timed(self, seconds: float, *, ok: bool) -> None:
        """Count one deployment's fetch and how long it took."""
        self.fetch_seconds.observe(seconds)
        if not ok:
            self.fetch_failures += 1


class TimedSource:
    """A secret source that reports each fetch's duration and outcome to `DeploymentCounts`."""

    def __init__(self, source: SecretSource, counts: DeploymentCounts) -> None:
        self._source = source
        self._counts = counts

    @property
    def calls(self) -> collections.Counter[str]:
        """The wrapped source's requests."""
        return self._source.calls

    @property
    def describe_available(self) -> bool:
        """Whether the wrapped source can describe."""
        return self._source.describe_available

    async def describe(
        self, arns: Sequence[str], *, pace: Callable[[], Awaitable[None]] | None = None
    ) -> tuple[dict[str, Described], dict[str, SecretFetchError]]:
        """Describe through the wrapped source, untimed."""
        return await self._source.describe(arns, pace=pace)

    async def fetch(
        self,
        resources: Sequence[SecretResource],
        *,
        held: Mapping[str, Mapping[str, SecretVersion]] | None = None,
        described: Mapping[str, Described] | None = None,
        pace: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, LocalSecret]:
        """Fetch through the wrapped source, timing it."""
        started = time.perf_counter()
        try:
            result = await self._source.fetch(resources, held=held, described=described, pace=pace)
        except BaseException:
            self._counts.fetch_timed(time.perf_counter() - started, ok=False)
            raise
        self._counts.fetch_timed(time.perf_counter() - started, ok=True)
        return result


class CoreCollector:
    """Reads the core's counters at scrape time (a prometheus_client custom collector)."""

    def __init__(
        self,
        *,
        counts: DeploymentCounts,
        source: SecretSource,
        ipc: IpcServer,
        manager: WorkerManager,
        services: CoreServices,
        store: StoreFile,
        refresh: RefreshCounts | None = None,
    ) -> None:
        self._refresh = refresh
        self._counts = counts
        self._source = source
        self._ipc = ipc
        self._manager = manager
        self._services = services
        self._store = store

    def collect(self) -> Iterable[Metric]:
        """Yield every metric family, built from the live counters."""
        yield from self._deployments()
        yield from self._refreshes()
        yield from self._ipc_metrics()
        yield from self._workers()

    def _deployments(self) -> Iterable[Metric]:
        from prometheus_client.core import (  # noqa: PLC0415 - [metrics] listen only
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        counts = self._counts
        deployments = CounterMetricFamily(
            "edge_deployment_reports",
            "Deployment status reports published, by status; each deployment's once",
            labels=["status"],
        )
        for status, n in sorted(counts.by_status.items()):
            deployments.add_metric([status], n)
        yield deployments
        repeated = CounterMetricFamily(
            "edge_deployment_reports_repeated",
            "Statuses published again for an outcome already reported, by status: the latest "
            "at every start, and a redelivered deployment's",
            labels=["status"],
        )
        for status, n in sorted(counts.repeated.items()):
            repeated.add_metric([status], n)
        yield repeated
        yield CounterMetricFamily(
            "edge_store_rotations", "Times the store was replaced", value=self._store.rotations
        )
        calls = CounterMetricFamily(
            "edge_secret_fetch_calls",
            "Secrets Manager HTTP requests, retries included, by API operation",
            labels=["operation"],
        )
        for operation, n in sorted(self._source.calls.items()):
            calls.add_metric([operation], n)
        yield calls
        yield counts.fetch_seconds.family(
            "edge_secret_fetch_seconds", "Time to fetch a deployment's secrets"
        )
        yield CounterMetricFamily(
            "edge_secret_fetch_failures",
            "Deployment fetches that failed",
            value=counts.fetch_failures,
        )
        try:
            age = time.time() - self._store.path.stat().st_mtime
        except FileNotFoundError:
            age = float("nan")
        yield GaugeMetricFamily(
            "edge_store_age_seconds", "Seconds since the store was last replaced", value=age
        )

    def _refreshes(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415 - [metrics] listen only

        refresh = self._refresh
        if refresh is None:
            return
        for name, doc, value in (
            ("checks", "Refresh checks of the deployed secrets' stages", refresh.checks),
            ("rotations", "Store rotations by a refresh (a label moved)", refresh.rotations),
            ("failures", "Refreshes (or single secret checks) that failed", refresh.failures),
            ("hints", "Refresh: true reads that triggered a refresh", refresh.hints),
            (
                "hints_limited",
                "Refresh: true reads answered without one (too soon)",
                refresh.hints_limited,
            ),
        ):
            yield CounterMetricFamily(f"edge_secret_refresh_{name}", doc, value=value)

    def _ipc_metrics(self) -> Iterable[Metric]:
        from prometheus_client.core import (  # noqa: PLC0415 - [metrics] listen only
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        ipc = self._ipc
        requests = CounterMetricFamily(
            "edge_ipc_requests",
            "IPC requests answered, by operation and result (ok or the error status)",
            labels=["op", "result"],
        )
        for (op, result), n in sorted(ipc.requests.items()):
            requests.add_metric([op, result], n)
        yield requests
        latency = HistogramMetricFamily(
            "edge_ipc_request_duration_seconds",
            "Time from a request's arrival to its answer being written, by operation",
            labels=["op"],
        )
        for op, histogram in sorted(ipc.latency.items()):
            cumulative, buckets = 0, []
            for bound, n in zip(LATENCY_BOUNDS_SECONDS, histogram.counts, strict=False):
                cumulative += n
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", histogram.count))
            latency.add_metric([op], buckets, histogram.total_ns / 1e9)
        yield latency
        connections = CounterMetricFamily(
            "edge_ipc_connections", "IPC connection events", labels=["event"]
        )
        for event, n in sorted(ipc.connections.items()):
            connections.add_metric([event], n)
        yield connections
        invalidations = self._services.invalidations
        yield GaugeMetricFamily(
            "edge_ipc_cache_watches",
            "Workers whose cache of answers is on (they hold a watch)",
            value=invalidations.watches,
        )
        yield CounterMetricFamily(
            "edge_ipc_cache_invalidations",
            "Changes pushed to the workers' caches (every commit of the live secrets)",
            value=invalidations.pushed,
        )
        yield CounterMetricFamily(
            "edge_ipc_cache_unacknowledged",
            "Workers killed because their cache did not acknowledge a change within 1 s",
            value=invalidations.unacknowledged,
        )
        yield CounterMetricFamily(
            "edge_secret_reads_stale",
            "Secret reads served from a store older than [metrics] stale_after_seconds",
            value=self._services.stale_reads,
        )

    def _workers(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415 - [metrics] listen only

        runners = self._manager.runners
        running = sum(
            1 for r in runners.values() if r.worker is not None and not r.worker.exited.is_set()
        )
        yield GaugeMetricFamily("edge_workers_running", "Worker processes alive", value=running)
        restarts = CounterMetricFamily(
            "edge_worker_restarts",
            "Restarts of pinned workers since their function was deployed",
            labels=["function_arn"],
        )
        for arn, runner in sorted(runners.items()):
            restarts.add_metric([arn], runner.restarts)
        yield restarts


class Collector(Protocol):
    """What `MetricsServer` serves: a prometheus_client custom collector."""

    def collect(self) -> Iterable[Metric]:
        """Yield every metric family."""
        ...


class MetricsServer:
    """Serves `/metrics` (and `/` with a pointer to it) for one collector; a context manager."""

    def __init__(
        self,
        listen: tuple[str, int],
        collector: Collector,
        *,
        logger: FilteringBoundLogger | None = None,
        before_scrape: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Serve `collector` on `listen`.

        `before_scrape` runs before each scrape, to read what the collector can't read
        synchronously (a database query).
        """
        from prometheus_client import CollectorRegistry  # noqa: PLC0415 - [metrics] listen only

        self._host, self._port = listen
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(collector)
        self._log = logger or get_logger("metrics")
        self._runner: web.AppRunner | None = None
        self._before_scrape = before_scrape

    async def __aenter__(self) -> Self:
        """Start listening."""
        from aiohttp import web  # noqa: PLC0415 - [metrics] listen only

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self._log.info("metrics.listening", url=f"http://{self._host}:{self._port}/metrics")
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop listening."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        from aiohttp import web  # noqa: PLC0415 - [metrics] listen only
        from prometheus_client import generate_latest  # noqa: PLC0415 - [metrics] listen only
        from prometheus_client.exposition import CONTENT_TYPE_LATEST  # noqa: PLC0415 - [metrics] listen only

        if self._before_scrape is not None:
            await self._before_scrape()
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
