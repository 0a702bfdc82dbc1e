# SPDX-License-Identifier: Apache-2.0
"""A replica's outbox drain: publish what any replica queued (`edge.cloud.outbox`).

Woken by its own replica's inserts, and polling every `[cloud] outbox_poll_seconds` for rows
other replicas (or commands that died before their PUBACK) left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Final

from structlog.typing import FilteringBoundLogger

from edge.cloud import outbox
from edge.cloud.config import CloudConfig
from edge.cloud.errors import BrokerError, CloudDatabaseError
from edge.cloud.publisher import Publisher
from edge.cloud.serve.dbthread import DatabaseThread
from edge.cloud.serve.follow import following

#: Rows one claim takes at most: enough to keep the publisher's window full between claims.
CLAIM_BATCH: Final = 200


class Drain:
    """A replica's outbox drain: claim, publish through the replica's connection, mark sent."""

    def __init__(
        self,
        db: DatabaseThread,
        publisher: Publisher,
        *,
        lease_seconds: float,
        poll_seconds: float,
        log: FilteringBoundLogger,
    ) -> None:
        self._db = db
        self._publisher = publisher
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._log = log
        self._wake = asyncio.Event()
        #: Claimed rows whose PUBACK is awaited, so a poll doesn't claim them again.
        self._in_flight: set[str] = set()
        #: The publisher's acknowledgements awaited, withdrawn when the drain stops.
        self._awaited: set[asyncio.Future[None]] = set()
        #: Acknowledged by the broker, not yet removed from the outbox.
        self._acked: list[str] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Deployments published and marked sent by this replica, for logs and benchmarks.
        self.sent = 0

    def wake(self) -> None:
        """Look at the outbox now: this replica just queued something."""
        self._wake.set()

    async def run(self) -> None:
        """Drain until cancelled."""
        try:
            while True:
                self._wake.clear()
                claimed = await self._claim()
                for pending in claimed:
                    self._submit(pending)
                if len(claimed) < CLAIM_BATCH:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._poll):
                            await self._wake.wait()
                else:
                    # A full batch: more may wait; let the window drain a little first.
                    await asyncio.sleep(0)
        finally:
            # Withdraws what the publisher has not sent yet; the rows stay for a next claim.
            for acked in list(self._awaited):
                acked.cancel()
            if self._flusher is not None:
                self._flusher.cancel()
                await asyncio.gather(self._flusher, return_exceptions=True)

    async def _claim(self) -> list[outbox.Pending]:
        room = self._publisher.room
        if room <= 0:
            return []
        try:
            claimed = await self._db.call(
                lambda db: outbox.claim(db, limit=min(room, CLAIM_BATCH), lease_seconds=self._lease)
            )
        except CloudDatabaseError as exc:
            self._log.warning("cloud.outbox.unavailable", error=str(exc))
            return []
        fresh = [p for p in claimed if p.deployment_id not in self._in_flight]
        self._in_flight.update(p.deployment_id for p in fresh)
        return fresh

    def _submit(self, pending: outbox.Pending) -> None:
        """Hand a claimed row to the publisher; its PUBACK queues the row's removal."""
        try:
            # No deadline: the publisher resends across reconnects, and the lease hands the
            # row to another replica if this one takes too long.
            acked = self._publisher.submit(pending.topic, pending.envelope)
        except BrokerError as exc:
            self._not_sent(pending.deployment_id, exc)
            return
        self._awaited.add(acked)
        acked.add_done_callback(functools.partial(self._acknowledged, pending.deployment_id))

    def _acknowledged(self, deployment_id: str, acked: asyncio.Future[None]) -> None:
        self._awaited.discard(acked)
        if acked.cancelled():
            self._in_flight.discard(deployment_id)
            return
        if (exc := acked.exception()) is not None:
            self._not_sent(deployment_id, exc)
            return
        self._acked.append(deployment_id)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="cloud.outbox.flush")

    def _not_sent(self, deployment_id: str, exc: BaseException) -> None:
        # The row stays; it is claimed again when its lease ends.
        self._log.warning("cloud.outbox.not_sent", deployment_id=deployment_id, error=str(exc))
        self._in_flight.discard(deployment_id)

    async def _flush(self) -> None:
        """Remove acknowledged rows, those acknowledged together in one transaction."""
        while self._acked:
            ids, self._acked = self._acked, []
            try:
                await self._db.call(functools.partial(outbox.mark_sent, deployment_ids=ids))
            except CloudDatabaseError as exc:
                # The rows stay, and are published again once their lease ends: at least once.
                self._log.warning("cloud.outbox.not_marked", count=len(ids), error=str(exc))
                continue
            finally:
                self._in_flight.difference_update(ids)
            self.sent += len(ids)
            for deployment_id in ids:
                self._log.info("cloud.deployment.published", deployment_id=deployment_id)


def replica_publisher(
    config: CloudConfig,
    log: FilteringBoundLogger,
    *,
    observer: Callable[[str], None] | None = None,
) -> Publisher:
    """A process's one MQTT connection: it publishes what the drain claims and follows statuses."""
    return Publisher(
        config.mqtt,
        config.pacing,
        logger=log,
        following=following(config.mqtt, config.pacing.shared_group),
        observer=observer,
    )


def outbox_drain(
    config: CloudConfig, db: DatabaseThread, publisher: Publisher, log: FilteringBoundLogger
) -> Drain:
    """The process's outbox drain, with the lease and the poll `[cloud]` sets."""
    return Drain(
        db,
        publisher,
        lease_seconds=config.cloud.outbox_lease_seconds,
        poll_seconds=config.cloud.outbox_poll_seconds,
        log=log,
    )
