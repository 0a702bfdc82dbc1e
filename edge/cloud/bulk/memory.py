# SPDX-License-Identifier: Apache-2.0
"""`BulkStore` in memory: the protocol's reference implementation, for tests and one process.

It keeps every guarantee of the protocol (leases measured by its own clock, writes fenced by
owner, records keyed by line, ids reserved before deployments) within one event loop: no
method awaits, so each call is atomic as a transaction would be. Cores' reports are given to
it with `report`, as the status follower records them in the database.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from edge.cloud.bulk.input import Entry, InputRecord
from edge.cloud.bulk.records import (
    BulkDeployment,
    BulkDeploymentResult,
    ErrorDetail,
    RecordState,
)
from edge.cloud.bulk.state import BulkEvent, BulkState, next_state
from edge.cloud.bulk.store import BulkStore, LeaseLostError, Outcomes, Reserved, Tally
from edge.cloud.errors import NotFoundError
from edge.cloud.ids import new_id, precise_timestamp

_SUCCESS, _FAILURE = "Success", "Failure"


class MemoryBulkStore:
    """Bulk deployments in memory (see the module docstring)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        ids: Callable[[], str] = new_id,
    ) -> None:
        self._clock = clock
        self._ids = ids
        self._bulks: dict[str, BulkDeployment] = {}
        self._lines: dict[str, dict[int, BulkDeploymentResult]] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._statuses: dict[str, tuple[str, str | None]] = {}

    # --- what the status follower and the tests do ----------------------------------------

    def report(self, deployment_id: str, status: str, error_message: str | None = None) -> None:
        """Record a core's report on one deployment (Building, InProgress, Success, Failure)."""
        self._statuses[deployment_id] = (status, error_message)

    def lease_owner(self, bulk_id: str) -> str | None:
        """Who holds the bulk deployment's live lease, if anyone."""
        lease = self._leases.get(bulk_id)
        return lease[0] if lease is not None and lease[1] > self._clock() else None

    # --- BulkStore -------------------------------------------------------------------------

    async def create(self, bulk: BulkDeployment) -> None:
        """Record a new bulk deployment."""
        self._bulks[bulk.id] = bulk
        self._lines[bulk.id] = {}

    async def get(self, bulk_id: str) -> BulkDeployment:
        """The bulk deployment, with its metrics counted from its lines."""
        bulk = self._bulk(bulk_id)
        lines = self._lines[bulk_id].values()
        invalid = sum(1 for x in lines if x.state is RecordState.INVALID)
        processed = sum(1 for x in lines if x.state is not RecordState.PENDING)
        return replace(bulk, invalid_input_records=invalid, records_processed=processed)

    async def acquire(
        self, bulk_id: str, owner: str, lease_seconds: float
    ) -> BulkDeployment | None:
        """Take the lease if free, expired or `owner`'s."""
        bulk = self._bulk(bulk_id)
        holder = self.lease_owner(bulk_id)
        if bulk.state.is_final or holder not in {None, owner}:
            return None
        self._leases[bulk_id] = (owner, self._clock() + lease_seconds)
        return await self.get(bulk_id)

    async def renew(self, bulk_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend `owner`'s live lease."""
        if self.lease_owner(bulk_id) != owner:
            return False
        self._leases[bulk_id] = (owner, self._clock() + lease_seconds)
        return True

    async def release(self, bulk_id: str, owner: str) -> None:
        """Give the lease up."""
        if self.lease_owner(bulk_id) == owner:
            del self._leases[bulk_id]

    async def orphans(self) -> list[str]:
        """Bulk deployments not ended with no live lease."""
        return [
            b.id
            for b in self._bulks.values()
            if not b.state.is_final and self.lease_owner(b.id) is None
        ]

    async def load(self, bulk_id: str, owner: str, entries: Sequence[Entry], through: int) -> None:
        """Add the records and invalid lines not stored yet."""
        self._hold(bulk_id, owner)
        lines = self._lines[bulk_id]
        for entry in entries:
            if entry.line in lines:
                continue
            if isinstance(entry, InputRecord):
                lines[entry.line] = BulkDeploymentResult(
                    entry.line,
                    RecordState.PENDING,
                    entry.group_id,
                    entry.group_version_id,
                    entry.deployment_type,
                )
            else:
                lines[entry.line] = BulkDeploymentResult(
                    entry.line, RecordState.INVALID, error_message=entry.reason
                )
        bulk = self._bulks[bulk_id]
        self._bulks[bulk_id] = replace(bulk, lines_loaded=max(bulk.lines_loaded, through))

    async def reserve(self, bulk_id: str, owner: str, limit: int) -> list[Reserved]:
        """STARTED records first, then PENDING ones given a fresh DeploymentId."""
        self._hold(bulk_id, owner)
        lines = self._lines[bulk_id]
        ordered = sorted(lines.values(), key=lambda x: x.line)
        chosen = [x for x in ordered if x.state is RecordState.STARTED][:limit]
        for x in ordered:
            if len(chosen) >= limit:
                break
            if x.state is RecordState.PENDING:
                lines[x.line] = replace(x, state=RecordState.STARTED, deployment_id=self._ids())
                chosen.append(lines[x.line])
        return [
            Reserved(
                x.line,
                str(x.group_id),
                str(x.group_version_id),
                str(x.deployment_type),
                str(x.deployment_id),
            )
            for x in chosen
        ]

    async def record(self, bulk_id: str, owner: str, outcomes: Outcomes) -> None:
        """Store what became of reserved records."""
        self._hold(bulk_id, owner)
        lines = self._lines[bulk_id]
        for number in outcomes.created:
            lines[number] = replace(
                lines[number], state=RecordState.CREATED, created_at=precise_timestamp()
            )
        for number, reason in outcomes.invalid:
            lines[number] = replace(
                lines[number], state=RecordState.INVALID, deployment_id=None, error_message=reason
            )
        bulk = self._bulks[bulk_id]
        self._bulks[bulk_id] = replace(bulk, retry_attempts=bulk.retry_attempts + outcomes.retries)

    async def tally(self, bulk_id: str) -> Tally:
        """The records by state, and their deployments' outcomes."""
        self._bulk(bulk_id)
        counts = dict.fromkeys(RecordState, 0)
        succeeded = failed = 0
        for x in self._lines[bulk_id].values():
            counts[x.state] += 1
            if x.state is RecordState.CREATED and x.deployment_id is not None:
                status = self._statuses.get(x.deployment_id, ("Building", None))[0]
                succeeded += status == _SUCCESS
                failed += status == _FAILURE
        return Tally(
            pending=counts[RecordState.PENDING],
            unconfirmed=counts[RecordState.STARTED],
            created=counts[RecordState.CREATED],
            invalid=counts[RecordState.INVALID],
            succeeded=succeeded,
            failed=failed,
        )

    async def transition(
        self, bulk_id: str, owner: str | None, event: BulkEvent, error_message: str | None = None
    ) -> BulkState:
        """Move the bulk deployment by the state table."""
        if owner is not None:
            self._hold(bulk_id, owner)
        bulk = self._bulk(bulk_id)
        state = next_state(bulk.state, event)
        message = error_message if error_message is not None else bulk.error_message
        details = bulk.error_details
        if error_message is not None:
            details = (*details, ErrorDetail(event.value, error_message))
        self._bulks[bulk_id] = replace(
            bulk, state=state, error_message=message, error_details=details
        )
        return state

    async def results(
        self, bulk_id: str, after_line: int, limit: int
    ) -> list[BulkDeploymentResult]:
        """Lines after `after_line`, in order."""
        self._bulk(bulk_id)
        rows = sorted(
            (x for x in self._lines[bulk_id].values() if x.line > after_line),
            key=lambda x: x.line,
        )[:limit]
        return [self._result(x) for x in rows]

    async def listing(self, after: int, limit: int) -> list[BulkDeployment]:
        """Newest first."""
        # Reversed first: among equal timestamps, the later created comes first too.
        newest = reversed(self._bulks.values())
        ordered = sorted(newest, key=lambda b: b.created_at, reverse=True)
        return [await self.get(b.id) for b in ordered[after : after + limit]]

    # --- helpers -----------------------------------------------------------------------------

    def _bulk(self, bulk_id: str) -> BulkDeployment:
        bulk = self._bulks.get(bulk_id)
        if bulk is None:
            raise NotFoundError(
                "bulk deployment", bulk_id, "`edge cloud list-bulk-deployments` lists them"
            )
        return bulk

    def _hold(self, bulk_id: str, owner: str) -> None:
        self._bulk(bulk_id)
        if self.lease_owner(bulk_id) != owner:
            raise LeaseLostError(bulk_id, owner)

    def _result(self, x: BulkDeploymentResult) -> BulkDeploymentResult:
        """The row with its deployment's reported status."""
        if x.state is not RecordState.CREATED or x.deployment_id is None:
            return x
        status, error = self._statuses.get(x.deployment_id, ("Building", None))
        return replace(x, deployment_status=status, error_message=error)


if TYPE_CHECKING:
    _IMPLEMENTS: type[BulkStore] = MemoryBulkStore
