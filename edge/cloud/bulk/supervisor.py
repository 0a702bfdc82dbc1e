# SPDX-License-Identifier: Apache-2.0
"""Each replica's bulk supervisor: it runs every bulk deployment that no live replica runs.

Every `interval` seconds (or at once when `wake` is called, after this replica started one)
it asks the store for orphans (bulk deployments not ended whose lease is free or expired) and
starts a runner for each it isn't running already. Replicas race for an orphan harmlessly: the
lease goes to one, and the others' runners return at once. So a bulk deployment started through
any replica is run by one of them, and taken over by another when its runner's replica dies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self

import structlog
from structlog.typing import FilteringBoundLogger

from edge.cloud.bulk.runner import BulkRunner
from edge.cloud.bulk.store import BulkStore
from edge.cloud.errors import CloudDatabaseError

#: Seconds between looks for orphans: a dead replica's bulk deployment resumes within its
#: lease plus this.
ADOPT_EVERY_SECONDS: Final = 5.0


class BulkSupervisor:
    """Adopts and runs orphaned bulk deployments; an async context manager owning its tasks."""

    def __init__(
        self,
        *,
        store: BulkStore,
        runner: Callable[[str], BulkRunner],
        interval: float = ADOPT_EVERY_SECONDS,
        log: FilteringBoundLogger | None = None,
    ) -> None:
        """Make a supervisor; it starts looking on entering.

        Args:
            store: The bulk deployments.
            runner: Makes this replica's runner for a bulk deployment id.
            interval: Seconds between looks for orphans.
            log: Where runner failures are logged.
        """
        self._store = store
        self._runner = runner
        self._interval = interval
        self._log = log or structlog.get_logger()
        self._running: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        """Start looking for bulk deployments to run."""
        self._task = asyncio.create_task(self._supervise(), name="bulk-supervisor")
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop: cancel the runners, which give their leases up for another replica."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def wake(self) -> None:
        """Look for bulk deployments to run now rather than at the next interval."""
        self._wake.set()

    @property
    def running(self) -> frozenset[str]:
        """The bulk deployments this replica's runners are driving."""
        return frozenset(self._running)

    async def _supervise(self) -> None:
        async with asyncio.TaskGroup() as group:
            while True:
                try:
                    orphans = await self._store.orphans()
                except CloudDatabaseError as exc:
                    self._log.warning("cloud.bulk.adopt_failed", error=str(exc))
                    orphans = []
                for bulk_id in orphans:
                    if bulk_id not in self._running:
                        self._running.add(bulk_id)
                        group.create_task(self._run(bulk_id), name=f"bulk-runner-{bulk_id}")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._wake.wait()
                self._wake.clear()

    async def _run(self, bulk_id: str) -> None:
        try:
            await self._runner(bulk_id).run()
        except Exception:  # noqa: BLE001 - one bulk deployment's fault must not stop the others
            # Its lease runs out and it is adopted again (here or elsewhere) at a later look.
            self._log.exception("cloud.bulk.runner_failed", bulk_deployment_id=bulk_id)
        finally:
            self._running.discard(bulk_id)
