# SPDX-License-Identifier: Apache-2.0
"""What a bulk deployment stores: the bulk deployment itself and one result per input line.

Plain frozen dataclasses, with no storage behind them: the store (`edge.cloud.bulk.store`)
reads and writes them, the API (`edge.cloud.bulk.api`) turns them into botocore's shapes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from edge.cloud.bulk.rollout import RolloutSettings
from edge.cloud.bulk.state import BulkState


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """One entry of ErrorDetails, as the Greengrass model's ErrorDetail."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class BulkDeployment:
    """One bulk deployment: its request, its rollout, and where it stands."""

    id: str
    arn: str
    #: ISO-8601 UTC with microseconds (`edge.cloud.ids.precise_timestamp`).
    created_at: str
    input_uri: str
    execution_role_arn: str
    #: The input object's ETag at the start (None for a local file): the file every runner reads.
    input_etag: str | None = None
    state: BulkState = BulkState.INITIALIZING
    tags: dict[str, str] = field(default_factory=dict)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    #: Records started or counted invalid so far (RecordsProcessed).
    records_processed: int = 0
    #: Lines that are not records, and records AWS would refuse (InvalidInputRecords).
    invalid_input_records: int = 0
    #: Deployment attempts that met a retryable error (RetryAttempts).
    retry_attempts: int = 0
    #: Lines of the input file read into records so far; a runner taking over skips them.
    lines_loaded: int = 0
    error_message: str | None = None
    error_details: tuple[ErrorDetail, ...] = ()


class RecordState(enum.StrEnum):
    """Where one input record is on its way to a deployment."""

    #: Read from the input file, not started.
    PENDING = "Pending"
    #: A DeploymentId is reserved for it: from here on it is never given another.
    STARTED = "Started"
    #: Its deployment exists (recorded, and published or queued for publishing).
    CREATED = "Created"
    #: Never deployed: not a record, or refused (no such group or version).
    INVALID = "Invalid"


@dataclass(frozen=True, slots=True)
class BulkDeploymentResult:
    """One line of a bulk deployment, for ListBulkDeploymentDetailedReports."""

    line: int
    state: RecordState
    group_id: str | None = None
    group_version_id: str | None = None
    deployment_type: str | None = None
    deployment_id: str | None = None
    #: When the deployment was created (precise timestamp); None before.
    created_at: str | None = None
    #: The deployment's status as its core reported it (Building, InProgress, Success,
    #: Failure); None for a record never deployed.
    deployment_status: str | None = None
    error_message: str | None = None
    error_details: tuple[ErrorDetail, ...] = ()
