# SPDX-License-Identifier: Apache-2.0
"""The runner: one asyncio task driving one bulk deployment from its input file to its end.

It holds the bulk deployment's lease (`BulkStore.acquire`, renewed as it goes) and:

1. **Initializing**: reads the input file into records, a batch at a time, resuming after the
   lines already stored when it takes over from a replica that died mid-file;
2. **Running**: asks the rollout policy how many groups may start, reserves that many records
   (each gets its DeploymentId *before* anything is published), deploys them as one batch, and
   stores what became of them; between batches it looks at the cores' reported outcomes
   for the abort rule, and at the state for a stop request;
3. ends `Completed` once every record is processed, `Stopped` on a stop request or the abort
   rule (with the reason in ErrorMessage), `Failed` if the input file can't be read.

A runner that finds its lease taken (`LeaseLostError`, or a renewal refused) returns at
once without writing anything more: the replica that took the lease carries on.

Deploying is a callable, `deploy(reserved)`, given a whole batch of reserved records at once:
it must create each deployment under its record's `deployment_id`, treat an id that already
exists as done, and answer which lines now have their deployment and which records failed, with
the error. An error raised for the whole batch counts as every record's. Errors are sorted by
`retryable`: records that met a retryable one (the database or broker briefly away) are tried
again with backoff, up to `max_attempts` times as AWS does ("retries a group deployment up to
five times"), and counted in RetryAttempts; any other error (no such group or version, a
definition that doesn't validate) makes the record invalid, with the error as its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import structlog
from structlog.typing import FilteringBoundLogger

from edge.cloud.bulk.input import Entry, entries, parse_location, read_chunks
from edge.cloud.bulk.records import BulkDeployment
from edge.cloud.bulk.rollout import RolloutPolicy
from edge.cloud.bulk.state import BulkEvent, BulkState
from edge.cloud.bulk.store import BulkStore, LeaseLostError, Outcomes, Reserved
from edge.cloud.config import BULK_LEASE_SECONDS
from edge.cloud.errors import BrokerError, BulkInputError, CloudDatabaseError
from edge.config import AwsSettings

#: Records read from the input file per store call.
LOAD_BATCH: Final = 1000
#: Records reserved per store call at most: one transaction each way per batch.
START_BATCH: Final = 200
#: Attempts per record before a retryable error makes it invalid (AWS's "up to five times").
MAX_ATTEMPTS: Final = 5
#: Seconds between looks at the state and the outcomes while nothing may start.
POLL_SECONDS: Final = 0.5


@dataclass(frozen=True, slots=True)
class Deployed:
    """What a deployer made of a batch of reserved records."""

    #: Lines whose deployment now exists (created now, or found created already).
    created: Sequence[int] = ()
    #: Records whose deployment was not created, with why.
    failed: Sequence[tuple[Reserved, Exception]] = ()


Deploy = Callable[[Sequence[Reserved]], Awaitable[Deployed]]
ReadInput = Callable[[BulkDeployment, int], AsyncIterator[Entry]]


def input_reader(aws: AwsSettings) -> ReadInput:
    """Read a bulk deployment's own input file: the object it started with, or its local path."""

    def read(bulk: BulkDeployment, start_after: int) -> AsyncIterator[Entry]:
        location = parse_location(bulk.input_uri, allow_local=True)
        return entries(read_chunks(location, aws, etag=bulk.input_etag), start_after=start_after)

    return read


def retryable(exc: Exception) -> bool:
    """Whether a deployment error may pass if tried again (the broker or database was away)."""
    return isinstance(exc, BrokerError | CloudDatabaseError | OSError | TimeoutError)


@dataclass(slots=True)
class BulkRunner:
    """Runs one bulk deployment as `owner` (see the module docstring)."""

    store: BulkStore
    bulk_id: str
    owner: str
    deploy: Deploy
    #: `read(bulk, start_after)`: the input file's entries after line `start_after`.
    read: ReadInput
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    lease_seconds: float = BULK_LEASE_SECONDS
    poll_seconds: float = POLL_SECONDS
    batch: int = START_BATCH
    max_attempts: int = MAX_ATTEMPTS
    retry_base_seconds: float = 1.0
    is_retryable: Callable[[Exception], bool] = retryable
    log: FilteringBoundLogger = field(default_factory=structlog.get_logger)
    _renewed: float = 0.0

    async def run(self) -> BulkState | None:
        """Drive the bulk deployment to its end; its final state.

        Returns:
            The state it ended in, or None if it is not this runner's to finish: another
            replica holds its lease, or took the lease over while this one ran.

        Raises:
            CloudDatabaseError: The store can't be reached; the lease runs out and this
                replica, or another, adopts the bulk deployment later.
        """
        bulk = await self.store.acquire(self.bulk_id, self.owner, self.lease_seconds)
        if bulk is None:
            return None
        self._renewed = self.clock()
        log = self.log.bind(bulk_deployment_id=self.bulk_id, owner=self.owner)
        try:
            state = await self._drive(bulk)
        except LeaseLostError:
            log.warning("cloud.bulk.lease_lost")
            return None
        except asyncio.CancelledError:
            # Shutting down: give the lease up so that another replica carries on at once
            # rather than after it expires. Shielded, so the cancellation can't cut it short.
            with contextlib.suppress(CloudDatabaseError):
                await asyncio.shield(self.store.release(self.bulk_id, self.owner))
            raise
        log.info("cloud.bulk.ended", state=state.value)
        await self.store.release(self.bulk_id, self.owner)
        return state

    async def _drive(self, bulk: BulkDeployment) -> BulkState:
        if bulk.state is BulkState.INITIALIZING:
            try:
                stopped = await self._load(bulk)
            except BulkInputError as exc:
                return await self._move(BulkEvent.FAIL, str(exc))
            if stopped:
                return await self._move(BulkEvent.HALTED)
            await self._move(BulkEvent.LOADED)
        return await self._start_all(RolloutPolicy(bulk.rollout))

    async def _load(self, bulk: BulkDeployment) -> bool:
        """Read the input file into records; True if a stop request came first."""
        batch: list[Entry] = []
        async for entry in self.read(bulk, bulk.lines_loaded):
            batch.append(entry)
            if len(batch) >= LOAD_BATCH:
                await self.store.load(self.bulk_id, self.owner, batch, batch[-1].line)
                batch = []
                if await self._stop_requested():
                    return True
        if batch:
            await self.store.load(self.bulk_id, self.owner, batch, batch[-1].line)
        return await self._stop_requested()

    async def _start_all(self, policy: RolloutPolicy) -> BulkState:
        while True:
            if await self._stop_requested():
                return await self._move(BulkEvent.HALTED)
            tally = await self.store.tally(self.bulk_id)
            reason = policy.should_abort(tally.counts)
            if reason is not None:
                self.log.warning(
                    "cloud.bulk.aborted", bulk_deployment_id=self.bulk_id, reason=reason
                )
                return await self._move(BulkEvent.ABORT, reason)
            if tally.to_start == 0:
                return await self._move(BulkEvent.FINISHED)
            wanted = min(self.batch, tally.to_start)
            release = policy.next_release(self.clock(), tally.counts, wanted)
            reserved = []
            if release.count > 0:
                reserved = await self.store.reserve(self.bulk_id, self.owner, release.count)
                outcomes = await self._deploy_batch(reserved)
                await self.store.record(self.bulk_id, self.owner, outcomes)
            # Also when the store gave fewer than the tally promised: never spin without time.
            if release.count < wanted or not reserved:
                wait = self.poll_seconds if release.wait is None else release.wait
                await self.sleep(min(max(wait, 0.0), self.poll_seconds))

    async def _deploy_batch(self, reserved: list[Reserved]) -> Outcomes:
        """Deploy reserved records as one batch, retrying those that may pass; what became of each.

        Retries can outlast a lease, so each attempt renews it when due; a lease found lost (or
        a store that can't renew it) stops the batch. What it created stays STARTED: the new
        holder creates it again under the same ids, which the deployer takes as done.
        """
        created: list[int] = []
        invalid: list[tuple[int, str]] = []
        retries = 0
        todo: Sequence[Reserved] = reserved
        attempt = 0
        while todo:
            attempt += 1
            try:
                await self._heartbeat()
            except CloudDatabaseError:
                raise LeaseLostError(self.bulk_id, self.owner) from None
            try:
                result = await self.deploy(todo)
            except Exception as exc:  # noqa: BLE001 - sorted below; the runner must go on
                result = Deployed(failed=[(record, exc) for record in todo])
            created.extend(result.created)
            again: list[tuple[Reserved, Exception]] = []
            for record, error in result.failed:
                if not self.is_retryable(error):
                    invalid.append((record.line, str(error)))
                elif attempt >= self.max_attempts:
                    invalid.append((record.line, f"gave up after {attempt} attempts: {error}"))
                else:
                    again.append((record, error))
            retries += len(again)
            todo = [record for record, _ in again]
            if again:
                # One line per attempt, not per record: a database blip fails a whole batch.
                self.log.warning(
                    "cloud.bulk.deploy_retry",
                    bulk_deployment_id=self.bulk_id,
                    lines=[record.line for record in todo],
                    attempt=attempt,
                    error=str(again[0][1]),
                )
                await self.sleep(self.retry_base_seconds * 2 ** (attempt - 1))
        return Outcomes(created=sorted(created), invalid=sorted(invalid), retries=retries)

    async def _stop_requested(self) -> bool:
        await self._heartbeat()
        bulk = await self.store.get(self.bulk_id)
        return bulk.state is BulkState.STOPPING

    async def _heartbeat(self) -> None:
        """Renew the lease once a third of it has passed (cheap to call often)."""
        now = self.clock()
        if now - self._renewed < self.lease_seconds / 3:
            return
        if not await self.store.renew(self.bulk_id, self.owner, self.lease_seconds):
            raise LeaseLostError(self.bulk_id, self.owner)
        self._renewed = now

    async def _move(self, event: BulkEvent, message: str | None = None) -> BulkState:
        return await self.store.transition(self.bulk_id, self.owner, event, message)
