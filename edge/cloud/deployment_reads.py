# SPDX-License-Identifier: Apache-2.0
"""What the control plane says of deployments it made: one's status and note, a group's list.

The writing side (building, signing, recording and publishing) is `edge.cloud.deployments`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from edge.cloud.config import CloudConfig
from edge.cloud.db import Connection, Database, Row
from edge.cloud.errors import BrokerError, NotFoundError
from edge.cloud.groups import latest_version_id
from edge.cloud.ids import milliseconds
from edge.cloud.status import FINAL, PEEK_SECONDS, peek_retained, status_output

# The MQTT client (aiomqtt, structlog) is imported when a deployment still open is asked about
# (PLC0415 below): listing deployments, and the status of a finished one, read the database only.


def deployment_row(conn: Connection, group_id: str, deployment_id: str) -> Row:
    """A group's deployment's row.

    Raises:
        NotFoundError: The group has no deployment with that id.
    """
    row: Row | None = conn.execute(
        "SELECT * FROM deployments WHERE id = :id AND group_id = :group_id",
        {"id": deployment_id, "group_id": group_id},
    ).fetchone()
    if row is None:
        raise NotFoundError(
            "deployment",
            deployment_id,
            f"`edge cloud list-deployments --group-id {group_id}` lists the group's deployments",
        )
    return row


async def get_deployment_status(
    config: CloudConfig,
    db: Database,
    group_id: str,
    deployment_id: str,
    *,
    on_broker_error: Callable[[BrokerError], None] | None = None,
) -> dict[str, Any]:
    """get-deployment-status: the recorded status, refreshed from the retained report if open.

    A broker that can't be reached is reported through `on_broker_error` and the recorded
    status is answered anyway.
    """
    with db.read() as conn:
        row = deployment_row(conn, group_id, deployment_id)
    if row["status"] not in FINAL:
        from edge.cloud.publish import CloudMqtt  # noqa: PLC0415 - see the imports

        thing = row["thing_name"]
        try:
            async with CloudMqtt(config.mqtt) as client:
                await peek_retained(
                    client,
                    db,
                    thing_name=thing,
                    topic=config.mqtt.status_topic(thing),
                    deadline=asyncio.get_running_loop().time() + PEEK_SECONDS,
                )
        except BrokerError as exc:
            if on_broker_error is not None:
                on_broker_error(exc)
        with db.read() as conn:
            row = deployment_row(conn, group_id, deployment_id)
    return status_output(row)


def deployment_note(db: Database, group_id: str, deployment_id: str) -> str | None:
    """What the core ignores of a deployment's group (edge's own, not in AWS's answer)."""
    with db.read() as conn:
        note: str | None = deployment_row(conn, group_id, deployment_id)["note"]
    return note


def recorded_status(db: Database, group_id: str, deployment_id: str) -> dict[str, Any]:
    """get-deployment-status from the database alone, as `edge cloud serve` answers it.

    The service follows every core's status topic and records each report as it arrives, so
    its database is current without reading the retained report again.
    """
    with db.read() as conn:
        return status_output(deployment_row(conn, group_id, deployment_id))


def list_deployments(db: Database, group_id: str) -> dict[str, Any]:
    """list-deployments: the group's deployments, newest first."""
    with db.read() as conn:
        latest_version_id(conn, group_id)  # raises NotFoundError for an unknown group
        rows = conn.execute(
            "SELECT d.*, g.arn AS group_arn FROM deployments AS d JOIN groups AS g"
            " ON g.id = d.group_id WHERE d.group_id = :group_id ORDER BY d.created_at DESC, d.id"
            " DESC",
            {"group_id": group_id},
        ).fetchall()
    return {
        "Deployments": [
            {
                "CreatedAt": milliseconds(r["created_at"]),
                "DeploymentArn": r["arn"],
                "DeploymentId": r["id"],
                "DeploymentType": r["deployment_type"],
                "GroupArn": r["group_arn"],
            }
            for r in rows
        ]
    }
