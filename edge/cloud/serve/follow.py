# SPDX-License-Identifier: Apache-2.0
"""Follow every core's status topic while the service runs, recording each transition.

`edge cloud` commands read a deployment's retained status report when asked; the service
instead follows `{prefix}/things/+/deployments/status` on its one connection (`Following` in
`edge.cloud.publisher`) and records each report as it arrives (with the same parser and the
same forward-only rule, `edge.cloud.status`), so `GetDeploymentStatus` and `ListDeployments`
answer from a database that is always current, and the log shows each deployment starting and
finishing. On every (re)connection the broker sends the retained report of each thing, which
catches up with what happened while it was away.

Replicas share one database, and a report is recorded once however many of them see it: the
forward-only rule runs under the database's write lock, so the second copy of a report (from
another replica, or from both subscriptions during a catch-up) moves nothing and adds no event.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from structlog.typing import FilteringBoundLogger

from edge.cloud.db import Database
from edge.cloud.errors import CloudDatabaseError
from edge.cloud.publish import Received
from edge.cloud.publisher import Following
from edge.cloud.serve.dbthread import DatabaseThread
from edge.cloud.status import (
    FAILURE,
    IN_PROGRESS,
    SUCCESS,
    StatusReport,
    parse_status,
    record_many,
)
from edge.config import MqttSettings

#: Reports recorded in one transaction at most.
INGEST_BATCH: Final = 500
#: With fewer reports than this waiting, the follower waits `INGEST_LINGER_SECONDS` for more
#: before recording: a transaction has a fixed cost (the lock, three round trips) of several
#: reports' worth, and a rollout's reports come in a stream.
INGEST_GATHER: Final = 50
INGEST_LINGER_SECONDS: Final = 0.02
_EVENTS: Final = {
    IN_PROGRESS: "cloud.deployment.started",
    SUCCESS: "cloud.deployment.succeeded",
    FAILURE: "cloud.deployment.failed",
}


@dataclass
class Health:
    """What the health endpoint reports about the broker link."""

    connected: asyncio.Event

    @property
    def mqtt_connected(self) -> bool:
        """Whether the replica's connection is up."""
        return self.connected.is_set()


def status_filter(settings: MqttSettings) -> str:
    """The topic filter that matches every thing's status topic."""
    return settings.status_topic("+")


def following(settings: MqttSettings, shared_group: str | None) -> Following:
    """What a replica's connection follows: every status topic, shared or not."""
    return Following(status_filter(settings), shared_group)


def thing_of(topic: str, settings: MqttSettings) -> str | None:
    """The thing name of a status topic (None if the topic is not one)."""
    head, _, tail = settings.status_topic("\0").partition("\0")
    if not (topic.startswith(head) and topic.endswith(tail)):
        return None
    thing = topic[len(head) : len(topic) - len(tail)]
    return thing if thing and "/" not in thing else None


async def follow_statuses(
    settings: MqttSettings,
    received: asyncio.Queue[Received],
    db: DatabaseThread,
    *,
    log: FilteringBoundLogger,
    on_ingest: Callable[[str, str], None] = lambda _status, _updated_at: None,
) -> None:
    """Record the status reports the replica's connection receives, until cancelled.

    `on_ingest` hears each report recorded, its status and UpdatedAt (the service's metrics).

    Reports that arrived together are recorded in one transaction: a fleet reporting at once
    costs a few database round trips per batch, not per report. A report that arrives alone
    waits `INGEST_LINGER_SECONDS` for the ones behind it.
    """
    while True:
        batch = [await received.get()]
        if received.qsize() < INGEST_GATHER:
            await asyncio.sleep(INGEST_LINGER_SECONDS)
        while len(batch) < INGEST_BATCH and not received.empty():
            batch.append(received.get_nowait())
        reports = [
            (thing, report)
            for message in batch
            if (thing := thing_of(message.topic, settings)) is not None
            and (report := parse_status(message.payload)) is not None
        ]
        if not reports:
            continue
        try:
            rows = await db.call(functools.partial(_record, reports=reports))
        except CloudDatabaseError as exc:
            # The reports stay retained on the broker: the next connection reads them again,
            # and so does `edge.cloud.serve.reconcile` while the deployments are unfinished.
            log.warning("cloud.status.not_recorded", reports=len(reports), error=str(exc))
            continue
        for row in rows:
            on_ingest(row["status"], row["updated_at"])
            _log_transition(log, row, row["thing_name"])


def _record(db: Database, *, reports: list[tuple[str, StatusReport]]) -> list[dict[str, Any]]:
    with db.write() as conn:
        return record_many(conn, reports)


def _log_transition(log: FilteringBoundLogger, row: Mapping[str, Any], thing: str) -> None:
    fields = {
        "deployment_id": row["id"],
        "group_id": row["group_id"],
        "thing": thing,
        "updated_at": row["updated_at"],
    }
    if row["status"] == FAILURE:
        log.warning(_EVENTS[FAILURE], error_message=row["error_message"], **fields)
    else:
        log.info(_EVENTS[row["status"]], **fields)
