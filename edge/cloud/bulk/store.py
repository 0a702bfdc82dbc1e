# SPDX-License-Identifier: Apache-2.0
"""What a bulk deployment runner needs of storage: a small protocol, with its guarantees.

The runner (`edge.cloud.bulk.runner`) drives a bulk deployment through these calls only. The
database layer implements them on SQLite and PostgreSQL; `edge.cloud.bulk.memory` implements
them in memory. Each call is one transaction.

**Leases.** One replica at a time runs a bulk deployment: the one holding its lease. The lease
is taken with `acquire` and kept alive with `renew` (a heartbeat, a few times per lease
period); a replica that dies stops renewing, and once the lease expires any other replica may
acquire it and carry on from the stored records. Every write names its owner and is refused
with `LeaseLostError` when that owner no longer holds a live lease, so a replica that was
paused past its lease (a long GC, a frozen VM) can't write over its successor's work.

**Never twice.** A record goes PENDING → STARTED (a DeploymentId reserved for it, in one
transaction) → CREATED, or INVALID. The id is reserved *before* the deployment is created, so a
runner dying between the two leaves a STARTED record that its successor creates again under
the same id; the deployment code takes an existing id as already done. Records are keyed by
(bulk deployment id, line number), so loading the input file again adds nothing twice.

**Time.** Lease expiry is measured by the store's own clock (the database server's, for
replicas on several machines), never by the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edge.cloud.bulk.input import Entry
from edge.cloud.bulk.records import BulkDeployment, BulkDeploymentResult
from edge.cloud.bulk.rollout import Counts
from edge.cloud.bulk.state import BulkEvent, BulkState


class LeaseLostError(Exception):
    """A replica wrote to a bulk deployment whose lease another replica has taken over.

    Internal: the runner that gets it stops, and the replica holding the lease carries on.
    """

    def __init__(self, bulk_id: str, owner: str) -> None:
        self.bulk_id = bulk_id
        self.owner = owner
        super().__init__(
            f"bulk deployment {bulk_id}: {owner} no longer holds its lease (another replica "
            f"took it over after a missed heartbeat)"
        )


@dataclass(frozen=True, slots=True)
class Reserved:
    """A record with the DeploymentId reserved for it: what the runner deploys."""

    line: int
    group_id: str
    group_version_id: str
    deployment_type: str
    deployment_id: str


@dataclass(frozen=True, slots=True)
class Tally:
    """A bulk deployment's records by state, with the outcomes their cores reported."""

    pending: int = 0
    #: Reserved (STARTED) but not known to be created: a runner died between the two.
    unconfirmed: int = 0
    created: int = 0
    invalid: int = 0
    #: Of the created deployments, those whose core reported Success, and Failure.
    succeeded: int = 0
    failed: int = 0

    @property
    def counts(self) -> Counts:
        """What the rollout policy looks at."""
        return Counts(
            started=self.unconfirmed + self.created, succeeded=self.succeeded, failed=self.failed
        )

    @property
    def to_start(self) -> int:
        """Records a runner still has to deploy."""
        return self.pending + self.unconfirmed


@dataclass(frozen=True, slots=True)
class Outcomes:
    """What became of a batch of reserved records."""

    #: Lines whose deployment now exists.
    created: Sequence[int] = ()
    #: (line, reason) of records refused for good (no such group, version, ...).
    invalid: Sequence[tuple[int, str]] = ()
    #: Attempts that met a retryable error (RetryAttempts).
    retries: int = 0


class BulkStore(Protocol):
    """Storage of bulk deployments, as the runner and the API use it. One call, one transaction."""

    async def create(self, bulk: BulkDeployment) -> None:
        """Record a new bulk deployment (Initializing, no records yet)."""

    async def get(self, bulk_id: str) -> BulkDeployment:
        """The bulk deployment. Raises NotFoundError."""

    async def acquire(
        self, bulk_id: str, owner: str, lease_seconds: float
    ) -> BulkDeployment | None:
        """Take the lease if it is free, expired or already `owner`'s; the bulk deployment.

        Returns None when another owner holds a live lease, or the bulk deployment has ended.
        """

    async def renew(self, bulk_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend `owner`'s lease; False if it is no longer `owner`'s (stop at once)."""

    async def release(self, bulk_id: str, owner: str) -> None:
        """Give the lease up (the bulk deployment ended, or this replica is shutting down)."""

    async def orphans(self) -> list[str]:
        """Bulk deployments not ended whose lease is free or expired: for a replica to adopt."""

    async def load(self, bulk_id: str, owner: str, entries: Sequence[Entry], through: int) -> None:
        """Add records read from the input file and mark lines up to `through` read.

        Valid records are added PENDING, invalid lines INVALID with their reason (counted in
        InvalidInputRecords and RecordsProcessed); a line already stored is left as it is.
        Raises LeaseLostError.
        """

    async def reserve(self, bulk_id: str, owner: str, limit: int) -> list[Reserved]:
        """Up to `limit` records to deploy, in line order, each with its DeploymentId.

        STARTED records come first, with the id already reserved for them; then PENDING ones,
        moved to STARTED with a fresh id in this same transaction. Raises LeaseLostError.
        """

    async def record(self, bulk_id: str, owner: str, outcomes: Outcomes) -> None:
        """Store what became of reserved records. Raises LeaseLostError."""

    async def tally(self, bulk_id: str) -> Tally:
        """The records by state, and their deployments' reported outcomes."""

    async def transition(
        self, bulk_id: str, owner: str | None, event: BulkEvent, error_message: str | None = None
    ) -> BulkState:
        """Move the bulk deployment by the state table; the new state.

        `owner` None is the API (StopBulkDeployment), which holds no lease. Raises
        LeaseLostError (for an owner that lost its lease), IllegalBulkTransitionError.
        """

    async def results(
        self, bulk_id: str, after_line: int, limit: int
    ) -> list[BulkDeploymentResult]:
        """One page of the detailed report: lines after `after_line`, in order."""

    async def listing(self, after: int, limit: int) -> list[BulkDeployment]:
        """One page of bulk deployments, newest first, skipping the first `after`."""
