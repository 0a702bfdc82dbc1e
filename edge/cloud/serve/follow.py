# SPDX-License-Identifier: Apache-2.0
"""Follow every core's status topic while the service runs, recording each transition.

`edge cloud` commands read a deployment's retained status report when asked; the service
instead subscribes once to `{prefix}/things/+/deployments/status` and records each report as it
arrives (with the same parser and the same forward-only rule, `edge.cloud.status`), so
`GetDeploymentStatus` and `ListDeployments` answer from a database that is always current, and
the log shows each deployment starting and finishing. On every (re)connection the broker sends
the retained report of each thing, which catches up with what happened while it was away.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from structlog.typing import FilteringBoundLogger

from edge.cloud.db import Database, Row
from edge.cloud.publish import CloudMqtt
from edge.cloud.serve.dbthread import DatabaseThread
from edge.cloud.status import FAILURE, IN_PROGRESS, SUCCESS, StatusReport, parse_status, record
from edge.config import MqttSettings
from edge.errors import BrokerError, CloudDatabaseError

#: First wait before reconnecting; doubled after each failure up to [mqtt]
#: reconnect_max_seconds, with jitter so a fleet of services doesn't reconnect in step.
FIRST_RETRY_SECONDS: Final = 0.5
#: How long one wait for a message lasts before it is simply waited for again.
_IDLE_SECONDS: Final = 3600.0
_EVENTS: Final = {
    IN_PROGRESS: "cloud.deployment.started",
    SUCCESS: "cloud.deployment.succeeded",
    FAILURE: "cloud.deployment.failed",
}


@dataclass
class Health:
    """What the health endpoint reports about the broker link."""

    mqtt_connected: bool = False


def status_filter(settings: MqttSettings) -> str:
    """The topic filter that matches every thing's status topic."""
    return settings.status_topic("+")


def thing_of(topic: str, settings: MqttSettings) -> str | None:
    """The thing name of a status topic (None if the topic is not one)."""
    head, _, tail = settings.status_topic("\0").partition("\0")
    if not (topic.startswith(head) and topic.endswith(tail)):
        return None
    thing = topic[len(head) : len(topic) - len(tail)]
    return thing if thing and "/" not in thing else None


async def follow_statuses(
    settings: MqttSettings,
    db: DatabaseThread,
    *,
    health: Health,
    log: FilteringBoundLogger,
    on_ingest: Callable[[StatusReport], None] = lambda _report: None,
) -> None:
    """Record status reports until cancelled, reconnecting to the broker whenever it goes away.

    `on_ingest` hears each report recorded (the service's metrics).
    """
    delay = FIRST_RETRY_SECONDS
    while True:
        problem = "the connection closed"
        try:
            async with CloudMqtt(settings, client_id_prefix="edge-cloud-serve") as mqtt:
                await mqtt.subscribe(status_filter(settings))
                health.mqtt_connected = True
                delay = FIRST_RETRY_SECONDS
                log.info("cloud.mqtt.connected", url=settings.url)
                await _record_reports(mqtt, settings, db, log, on_ingest)
        except BrokerError as exc:
            problem = exc.detail
        finally:
            health.mqtt_connected = False
        wait = delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
        log.warning("cloud.mqtt.unavailable", error=problem, retry_in_seconds=round(wait, 2))
        await asyncio.sleep(wait)
        delay = min(delay * 2, settings.reconnect_max_seconds)


async def _record_reports(
    mqtt: CloudMqtt,
    settings: MqttSettings,
    db: DatabaseThread,
    log: FilteringBoundLogger,
    on_ingest: Callable[[StatusReport], None],
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        message = await mqtt.next_message(deadline=loop.time() + _IDLE_SECONDS)
        if message is None:
            continue
        thing = thing_of(message.topic, settings)
        report = parse_status(message.payload)
        if thing is None or report is None:
            continue
        try:
            row = await db.call(functools.partial(_record, thing=thing, report=report))
        except CloudDatabaseError as exc:
            # The report stays retained on the broker; the next connection reads it again.
            log.warning("cloud.status.not_recorded", thing=thing, error=str(exc))
            continue
        if row is not None:
            on_ingest(report)
            _log_transition(log, row, thing)


def _record(db: Database, *, thing: str, report: StatusReport) -> Row | None:
    with db.write() as conn:
        return record(conn, thing, report)


def _log_transition(log: FilteringBoundLogger, row: Row, thing: str) -> None:
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
