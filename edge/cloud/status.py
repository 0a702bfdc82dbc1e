# SPDX-License-Identifier: Apache-2.0
"""Deployment status: what cores report, recorded as transitions in the control plane's database.

A deployment starts as `Building` (created and published, not yet acknowledged). Cores report
`InProgress`, then `Success` or `Failure`, on their status topic, *retained*, so the control
plane needs no daemon: `create-deployment --wait` follows the reports live, and
`get-deployment-status` of an unfinished deployment reads the retained report. Every transition
seen is recorded (the deployment's row, plus one `deployment_events` row per transition).

Status documents come from the network, so they are parsed defensively: bounded, typed, only
recorded for a deployment this control plane made *for the thing whose topic it came on*, and
never moved backwards (a late `InProgress` can't undo a `Success`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from edge.cloud.ids import timestamp

if TYPE_CHECKING:
    # Annotations only: `edge cloud`'s parser reads the states here (through the groups), and
    # neither the database code (SQLAlchemy) nor the MQTT client (aiomqtt, structlog) is for
    # commands that don't use them.
    from edge.cloud.db import Connection, Database, Row
    from edge.cloud.publish import CloudMqtt

BUILDING: Final = "Building"
IN_PROGRESS: Final = "InProgress"
SUCCESS: Final = "Success"
FAILURE: Final = "Failure"
FINAL: Final = frozenset({SUCCESS, FAILURE})
#: Order of the states; a report is recorded only if it moves a deployment forward.
_RANK: Final = {BUILDING: 0, IN_PROGRESS: 1, SUCCESS: 2, FAILURE: 2}
#: A status document is a few hundred bytes; anything far bigger is not one.
MAX_STATUS_BYTES: Final = 64 * 1024
#: ErrorDetails entries kept: the core sends one.
MAX_ERROR_DETAILS = 10
#: Longest ErrorMessage kept; the core's messages are one line of at most a few hundred chars.
MAX_ERROR_LENGTH: Final = 4096
#: How long `get-deployment-status` waits for the retained status of an unfinished deployment.
#: The broker sends a retained message right after the subscription, so this is only reached
#: when the topic has none.
PEEK_SECONDS: Final = 2.0

#: The columns of a deployment a recorded transition reads and returns (not its envelope:
#: kilobytes that recording a status needn't read).
RECORDED_COLUMNS: Final = (
    "id",
    "group_id",
    "thing_name",
    "deployment_type",
    "status",
    "error_message",
    "error_details",
    "updated_at",
)
_SELECT_RECORDED: Final = (
    f"SELECT {', '.join(RECORDED_COLUMNS)}, (SELECT max(seq) FROM deployment_events AS e"  # noqa: S608 - constants
    " WHERE e.deployment_id = deployments.id) AS last_seq FROM deployments WHERE id IN :ids"
)
_UPDATED: Final = ("id", "status", "error_message", "error_details", "updated_at")
_INSERT_EVENT: Final = (
    "INSERT INTO deployment_events"
    " (deployment_id, seq, status, error_message, updated_at, recorded_at)"
    " VALUES (:deployment_id, :seq, :status, :error_message, :updated_at, :recorded_at)"
)

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class StatusReport:
    """A validated status document from a core."""

    deployment_id: str
    status: str
    updated_at: str
    error_message: str | None = None
    #: `[{DetailedErrorCode, DetailedErrorMessage}]` as the core sent them, or None.
    error_details: list[dict[str, str]] | None = None


def parse_status(payload: bytes) -> StatusReport | None:
    """Parse a status document; None if it isn't one (ignored, never an error)."""
    if len(payload) > MAX_STATUS_BYTES:
        return None
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    dep_id, status, updated = (
        doc.get(k) for k in ("DeploymentId", "DeploymentStatus", "UpdatedAt")
    )
    error = doc.get("ErrorMessage")
    if not (isinstance(dep_id, str) and isinstance(updated, str) and status in _RANK):
        return None
    if status == BUILDING or (error is not None and not isinstance(error, str)):
        return None
    return StatusReport(
        deployment_id=dep_id,
        status=status,
        updated_at=_printable(updated)[:64],
        error_message=None if error is None else _printable(error)[:MAX_ERROR_LENGTH],
        error_details=_error_details(doc.get("ErrorDetails")),
    )


def _error_details(value: object) -> list[dict[str, str]] | None:
    """The report's ErrorDetails, each field a printable string; anything else is dropped."""
    if not isinstance(value, list) or not value:
        return None
    details = []
    for entry in value[:MAX_ERROR_DETAILS]:
        if not isinstance(entry, dict):
            return None
        kept = {
            key: _printable(text)[:MAX_ERROR_LENGTH]
            for key in ("DetailedErrorCode", "DetailedErrorMessage")
            if isinstance(text := entry.get(key), str)
        }
        if kept:
            details.append(kept)
    return details or None


def _printable(text: str) -> str:
    """Replace control characters: the text is printed on operators' terminals."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in text)


def record(conn: Connection, thing_name: str, report: StatusReport) -> Row | None:
    """Record one report (inside a write transaction) if it moves its deployment forward.

    Args:
        conn: The connection, in a write transaction.
        thing_name: The thing whose status topic the report came on.
        report: The report.

    Returns:
        The deployment's updated row, or None if nothing was recorded (unknown deployment,
        another thing's deployment, or not a step forward).
    """
    if not record_many(conn, [(thing_name, report)]):
        return None
    return conn.execute(
        "SELECT * FROM deployments WHERE id = :id", {"id": report.deployment_id}
    ).fetchone()


def record_many(
    conn: Connection, reports: Sequence[tuple[str, StatusReport]]
) -> list[dict[str, Any]]:
    """Record reports (inside one write transaction), each that moves its deployment forward.

    The reports are taken in their order, as if recorded one by one: a batch holding a
    deployment's `InProgress` and its `Success` records both, a report repeated (by the
    broker, or seen by two subscriptions) is recorded once, and a report that doesn't move
    its deployment forward, or names another thing's deployment, is ignored. The cost is a
    fixed handful of statements per batch, not per report.

    Args:
        conn: The connection, in a write transaction (holding the control plane's write lock,
            so that no other writer moves these deployments meanwhile).
        reports: (thing name whose status topic it came on, report), in arrival order.

    Returns:
        A row (`RECORDED_COLUMNS`) per transition recorded, in order: the deployment as that
        transition left it.
    """
    ids = sorted({report.deployment_id for _, report in reports})
    if not ids:
        return []
    current: dict[str, dict[str, Any]] = {}
    seqs: dict[str, int] = {}
    for found in conn.execute(_SELECT_RECORDED, {"ids": ids}):
        fields = dict(found)
        seqs[fields["id"]] = int(fields.pop("last_seq") or 0)
        current[fields["id"]] = fields
    transitions: list[dict[str, Any]] = []
    for thing_name, report in reports:
        row = current.get(report.deployment_id)
        if row is None or row["thing_name"] != thing_name:
            continue
        if _RANK[report.status] <= _RANK.get(row["status"], 0):
            continue
        row = {
            **row,
            "status": report.status,
            "error_message": report.error_message,
            "error_details": None
            if report.error_details is None
            else json.dumps(report.error_details),
            "updated_at": report.updated_at,
        }
        current[report.deployment_id] = row
        transitions.append(row)
    if not transitions:
        return []
    # executemany: psycopg pipelines the rows in one round trip, and the statement stays one
    # (a multi-row VALUES would be a new statement, parsed and compiled, per batch size).
    conn.executemany(
        "UPDATE deployments SET status = :status, error_message = :error_message,"
        " error_details = :error_details, updated_at = :updated_at WHERE id = :id",
        [
            {key: current[i][key] for key in _UPDATED}
            for i in sorted({r["id"] for r in transitions})
        ],
    )
    recorded_at = timestamp()
    events = []
    for row in transitions:
        seqs[row["id"]] += 1
        events.append(
            {
                "deployment_id": row["id"],
                "seq": seqs[row["id"]],
                "status": row["status"],
                "error_message": row["error_message"],
                "updated_at": row["updated_at"],
                "recorded_at": recorded_at,
            }
        )
    conn.executemany(_INSERT_EVENT, events)
    return transitions


def add_event(
    conn: Connection, deployment_id: str, status: str, updated_at: str, error: str | None
) -> None:
    """Append a transition to a deployment's history."""
    seq = conn.execute(
        "SELECT coalesce(max(seq), 0) + 1 FROM deployment_events"
        " WHERE deployment_id = :deployment_id",
        {"deployment_id": deployment_id},
    ).scalar()
    conn.execute(
        _INSERT_EVENT,
        {
            "deployment_id": deployment_id,
            "seq": seq,
            "status": status,
            "error_message": error,
            "updated_at": updated_at,
            "recorded_at": timestamp(),
        },
    )


def status_output(row: Row | Mapping[str, Any]) -> dict[str, Any]:
    """get-deployment-status's answer, with AWS's key names."""
    out: dict[str, Any] = {
        "DeploymentStatus": row["status"],
        "DeploymentType": row["deployment_type"],
        "UpdatedAt": row["updated_at"],
    }
    if row["error_message"]:
        out["ErrorMessage"] = row["error_message"]
    if row["error_details"]:
        out["ErrorDetails"] = json.loads(row["error_details"])
    return out


async def follow(
    mqtt: CloudMqtt,
    db: Database,
    *,
    deployment_id: str,
    thing_name: str,
    deadline: float,
    on_change: Progress | None = None,
) -> Row | None:
    """Record reports from an already-subscribed status topic until the deployment is final.

    Reports about other deployments of this thing (the retained one of an earlier deployment,
    say) are recorded too, and otherwise ignored.

    Args:
        mqtt: A connection subscribed to the thing's status topic.
        db: The database to record in.
        deployment_id: The deployment to wait for.
        thing_name: The thing whose topic is subscribed.
        deadline: Event loop time to stop at.
        on_change: Called with the status output after each recorded transition of the
            deployment.

    Returns:
        The deployment's final row, or None if the deadline passed first.
    """
    while (message := await mqtt.next_message(deadline=deadline)) is not None:
        report = parse_status(message.payload)
        if report is None:
            continue
        with db.write() as conn:
            row = record(conn, thing_name, report)
        if row is None or report.deployment_id != deployment_id:
            continue
        if on_change is not None:
            on_change(status_output(row))
        if row["status"] in FINAL:
            return row
    return None


async def peek_retained(
    mqtt: CloudMqtt, db: Database, *, thing_name: str, topic: str, deadline: float
) -> None:
    """Subscribe to a status topic and record the retained report there, if any."""
    await mqtt.subscribe(topic)
    while (message := await mqtt.next_message(deadline=deadline)) is not None:
        report = parse_status(message.payload)
        if report is not None:
            with db.write() as conn:
                record(conn, thing_name, report)
        if message.retained:
            # The broker keeps one retained message per topic: there is nothing more to read.
            return
