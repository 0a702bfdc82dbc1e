# SPDX-License-Identifier: Apache-2.0
"""Deployments: resolve a group version into the core's document, sign it, publish it, track it.

The document is exactly what the core parses (`edge.model.parse_deployment`), and the builder
runs that very parser on it before signing, so a deployment the control plane sends is one the
core can read. Each function gets `FunctionConfiguration.Handler` and `.Code {Uri, Sha256}` from
its published package (`publish-function`), or else from AWS Lambda (`edge.cloud.lambdacode`),
unless its configuration already names its Code.

Deployment types, as in AWS:

* NewDeployment deploys `--group-version-id`, or the group's latest version.
* Redeployment repeats the deployment named by `--deployment-id`: the same group version,
  resolved and signed again under a *new* DeploymentId (as AWS gives a redeployment its own id),
  so the core fetches every secret again: the way to roll out a rotated secret.
* ResetDeployment (`reset-deployments`, never `create-deployment`, as in AWS) removes the group
  from its core; it carries no group, and is addressed to the core last deployed to.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.cloud import outbox
from edge.cloud.build import Built, build_document, functions_without_code
from edge.cloud.config import CloudConfig
from edge.cloud.db import Connection, Database, Row
from edge.cloud.deployment_reads import deployment_row
from edge.cloud.errors import BrokerError, CloudUsageError
from edge.cloud.groups import (
    DEPLOYMENT_TYPES,
    group_version_row,
    last_deployment,
    latest_version_id,
    resolve_core,
)
from edge.cloud.ids import Arns, new_id, precise_timestamp, timestamp
from edge.cloud.lambdacode import fetch_functions
from edge.cloud.publish import OPERATION_TIMEOUT_SECONDS, CloudMqtt
from edge.cloud.publisher import Publisher
from edge.cloud.status import (
    BUILDING,
    FAILURE,
    SUCCESS,
    Progress,
    add_event,
    follow,
)
from edge.model import DeploymentType, parse_deployment
from edge.signing import seal


@dataclass(frozen=True, slots=True)
class Request:
    """What create-deployment was asked for."""

    group_id: str
    deployment_type: str
    group_version_id: str | None = None
    redeploy_of: str | None = None


def _pick_version(conn: Connection, request: Request) -> tuple[str, str | None]:
    """Return (group version id, deployment redeployed) for a request.

    Raises:
        CloudUsageError: The options don't fit the deployment type.
        NotFoundError: The group, version or redeployed deployment does not exist.
    """
    latest = latest_version_id(conn, request.group_id)
    if request.deployment_type == DeploymentType.REDEPLOY.value:
        if request.redeploy_of is None:
            raise CloudUsageError(
                "--deployment-id", "is required for a Redeployment: the deployment to repeat"
            )
        previous = deployment_row(conn, request.group_id, request.redeploy_of)
        version: str = previous["group_version_id"]
        if request.group_version_id not in {None, version}:
            raise CloudUsageError(
                "--group-version-id",
                f"deployment {request.redeploy_of} deployed group version {version}; a "
                f"Redeployment repeats it (use a NewDeployment to deploy another version)",
            )
        return version, request.redeploy_of
    if request.redeploy_of is not None:
        raise CloudUsageError("--deployment-id", "is only for --deployment-type Redeployment")
    version_id = request.group_version_id or latest
    if version_id is None:
        raise CloudUsageError(
            "--group-version-id",
            f"group {request.group_id} has no version yet; run `edge cloud create-group-version`",
        )
    return version_id, None


async def create_deployment(
    config: CloudConfig,
    db: Database,
    signing_key: Ed25519PrivateKey,
    request: Request,
    *,
    wait_seconds: float | None = None,
    on_created: Callable[[dict[str, Any]], None] | None = None,
    on_change: Progress | None = None,
    on_note: Callable[[str], None] | None = None,
    publisher: Publisher | None = None,
    drain: Callable[[], None] | None = None,
) -> Row | None:
    """Build, sign, record and publish a deployment; with `wait_seconds`, follow it to the end.

    Args:
        config: The control plane's config.
        db: Its database.
        signing_key: The key to sign with.
        request: What to deploy.
        wait_seconds: Follow the core's reports for at most this long (None: don't).
        on_created: Called with `{DeploymentArn, DeploymentId}` once the broker has the document.
        on_change: Called with the status output after each transition while waiting.
        on_note: Called with what the core will ignore of the group (loggers, devices), if any.
        publisher: A long-lived connection to publish through (without `wait_seconds`);
            None: a connection of this call's own.
        drain: A replica's outbox drain to wake (without `wait_seconds`): the deployment is
            answered once it is in the outbox, and the drain publishes it; None: this call
            publishes it and waits for the broker's acknowledgement.

    Returns:
        With `wait_seconds`, the deployment's final row, or None if time ran out first.

    Raises:
        CloudUsageError, NotFoundError, DefinitionInvalidError: Nothing was published.
        BrokerError: The broker can't be reached (nothing recorded) or refused the publish
            (the deployment is recorded as a Failure saying so).
    """
    out, envelope = await _prepare(config, db, signing_key, request, deployment_id=new_id())
    return await _send(
        config,
        db,
        out,
        envelope,
        wait_seconds=wait_seconds,
        on_created=on_created,
        on_change=on_change,
        on_note=on_note,
        publisher=publisher,
        drain=drain,
    )


async def _prepare(
    config: CloudConfig,
    db: Database,
    signing_key: Ed25519PrivateKey,
    request: Request,
    *,
    deployment_id: str,
) -> tuple[_Outgoing, bytes]:
    """Resolve, build and sign a deployment: what `_send` records; nothing is written."""
    check_deployment_type(request.deployment_type)
    created_at = precise_timestamp()
    with db.read() as conn:
        version_id, redeploy_of = _pick_version(conn, request)
        reset = request.deployment_type == DeploymentType.RESET.value
        wanted = [] if reset else functions_without_code(conn, request.group_id, version_id)
    # Outside any transaction: Lambda and S3 take seconds, and writes must not wait on them.
    fetched = await fetch_functions(config, db, wanted)
    with db.read() as conn:
        built = build_document(
            conn,
            group_id=request.group_id,
            group_version_id=version_id,
            deployment_type=request.deployment_type,
            deployment_id=deployment_id,
            created_at=created_at,
            fetched=fetched,
        )
    out = _Outgoing(
        request.group_id, deployment_id, created_at, built, request.deployment_type, redeploy_of
    )
    return out, seal(built.document, signing_key=signing_key, thing_name=built.thing_name)


def check_deployment_type(kind: str) -> None:
    """Refuse a DeploymentType that create-deployment doesn't take (AWS's two).

    Raises:
        CloudUsageError: ResetDeployment (pointing at reset-deployments), or an unknown type.
    """
    if kind == DeploymentType.RESET.value:
        raise CloudUsageError(
            "--deployment-type",
            "ResetDeployment is not a type create-deployment takes (NewDeployment or "
            "Redeployment, as in AWS); reset a group with `reset-deployments --group-id ID` "
            "(`--force` records the reset even if the core can't be reached)",
        )
    if kind not in DEPLOYMENT_TYPES:
        raise CloudUsageError("--deployment-type", f"must be one of {', '.join(DEPLOYMENT_TYPES)}")


async def reset_deployments(
    config: CloudConfig,
    db: Database,
    signing_key: Ed25519PrivateKey,
    group_id: str,
    *,
    force: bool = False,
    wait_seconds: float | None = None,
    on_created: Callable[[dict[str, Any]], None] | None = None,
    on_change: Progress | None = None,
    publisher: Publisher | None = None,
    drain: Callable[[], None] | None = None,
) -> Row | None:
    """reset-deployments: send the group's core a ResetDeployment and record it.

    The core empties its store and stops its workers. It is addressed to the core the group
    was last deployed to (or, never deployed, the core of its latest version). With `force`,
    a broker that can't be reached doesn't stop the reset from being recorded: it is recorded
    as a `Success` whose ErrorMessage says the core was not reached, so the group can be
    deleted; the core keeps what it runs until it is deployed to again.

    Raises:
        CloudUsageError: The group has no core to reset (never deployed, no version).
        NotFoundError: No such group.
        BrokerError: The broker can't be reached (without `force`; nothing recorded).
    """
    deployment_id, created_at = new_id(), precise_timestamp()
    reset = DeploymentType.RESET.value
    with db.read() as conn:
        thing, version_id = _reset_target(conn, group_id)
        document = {
            "DeploymentId": deployment_id,
            "DeploymentType": reset,
            "GroupId": group_id,
            "GroupVersionId": version_id,
            "CreatedAt": created_at,
        }
    payload = json.dumps(document, separators=(",", ":")).encode("utf-8")
    parse_deployment(payload)
    built = Built(payload, thing, version_id)
    outgoing = _Outgoing(group_id, deployment_id, created_at, built, reset)
    envelope = seal(payload, signing_key=signing_key, thing_name=thing)
    try:
        return await _send(
            config,
            db,
            outgoing,
            envelope,
            wait_seconds=wait_seconds,
            on_created=on_created,
            on_change=on_change,
            publisher=publisher,
            drain=drain,
        )
    except BrokerError as exc:
        if not force or outgoing.recorded:
            raise
        note = f"reset recorded with Force; the core was not reached: {exc}"
        with db.write() as conn:
            _insert(conn, config, outgoing, envelope, status=SUCCESS, error_message=note)
        created = _created(config, outgoing)
        if on_created is not None:
            on_created(created)
        with db.read() as conn:
            return None if wait_seconds is None else deployment_row(conn, group_id, deployment_id)


def _reset_target(conn: Connection, group_id: str) -> tuple[str, str]:
    """The (thing name, group version id) a reset of this group is addressed to."""
    latest = latest_version_id(conn, group_id)
    last = last_deployment(conn, group_id)
    if last is not None:
        return str(last["thing_name"]), str(last["group_version_id"])
    if latest is None:
        raise CloudUsageError(
            "--group-id",
            f"group {group_id} has no version and was never deployed: no core to reset",
        )
    thing = resolve_core(conn, json.loads(group_version_row(conn, group_id, latest)["body"]))
    if thing is None:
        raise CloudUsageError(
            "--group-id", f"group {group_id}'s latest version names no core: no core to reset"
        )
    return thing, latest


@dataclass(slots=True)
class _Outgoing:
    """A signed deployment on its way: what its row records."""

    group_id: str
    deployment_id: str
    created_at: str
    built: Built
    deployment_type: str
    redeploy_of: str | None = None
    #: Whether its row is in the database.
    recorded: bool = False


def _insert(
    conn: Connection,
    config: CloudConfig,
    out: _Outgoing,
    envelope: bytes,
    *,
    status: str,
    error_message: str | None = None,
) -> None:
    """Record a deployment (inside a write transaction) with its first event."""
    row = new_row(
        config,
        deployment_id=out.deployment_id,
        group_id=out.group_id,
        built=out.built,
        deployment_type=out.deployment_type,
        created_at=out.created_at,
        envelope=envelope,
        status=status,
        redeploy_of=out.redeploy_of,
        error_message=error_message,
    )
    insert_new(conn, [row])
    out.recorded = True


def new_row(
    config: CloudConfig,
    *,
    deployment_id: str,
    group_id: str,
    built: Built,
    deployment_type: str,
    created_at: str,
    envelope: bytes,
    status: str,
    redeploy_of: str | None = None,
    error_message: str | None = None,
) -> dict[str, Any]:
    """A new deployment's row, for `insert_new`."""
    now = timestamp()
    return {
        "id": deployment_id,
        "group_id": group_id,
        "group_version_id": built.group_version_id,
        "arn": Arns(config.aws.region, config.cloud.account_id).deployment(group_id, deployment_id),
        "deployment_type": deployment_type,
        "redeployment_of": redeploy_of,
        "thing_name": built.thing_name,
        "created_at": created_at,
        "status": status,
        "error_message": error_message,
        "updated_at": now,
        "envelope": envelope,
        "note": built.note,
        "recorded_at": now,
    }


def insert_new(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Record new deployments (inside a write transaction), each with its first event.

    One statement per table for the lot: a bulk deployment records a batch at once.
    """
    conn.executemany(
        "INSERT INTO deployments (id, group_id, group_version_id, arn, deployment_type,"
        " redeployment_of, thing_name, created_at, status, error_message, updated_at, envelope,"
        " note) VALUES (:id, :group_id, :group_version_id, :arn, :deployment_type,"
        " :redeployment_of, :thing_name, :created_at, :status, :error_message, :updated_at,"
        " :envelope, :note)",
        rows,
    )
    # A new deployment's history starts at 1 (what `add_event` appends to).
    conn.executemany(
        "INSERT INTO deployment_events"
        " (deployment_id, seq, status, error_message, updated_at, recorded_at)"
        " VALUES (:id, 1, :status, :error_message, :updated_at, :recorded_at)",
        rows,
    )


def _details(code: str, message: str) -> str:
    """An ErrorDetails column value: one entry, as a core reports a failure."""
    return json.dumps([{"DetailedErrorCode": code, "DetailedErrorMessage": message}])


def _created(config: CloudConfig, out: _Outgoing) -> dict[str, Any]:
    arns = Arns(config.aws.region, config.cloud.account_id)
    return {
        "DeploymentArn": arns.deployment(out.group_id, out.deployment_id),
        "DeploymentId": out.deployment_id,
    }


async def _send(
    config: CloudConfig,
    db: Database,
    out: _Outgoing,
    envelope: bytes,
    *,
    wait_seconds: float | None,
    on_created: Callable[[dict[str, Any]], None] | None,
    on_change: Progress | None,
    on_note: Callable[[str], None] | None = None,
    publisher: Publisher | None = None,
    drain: Callable[[], None] | None = None,
) -> Row | None:
    """Record a signed deployment as Building with its outbox row, publish it, follow it if asked.

    With a `drain` (a replica), the outbox row is the promise: the answer goes out once it is
    committed, and the drain publishes it. Otherwise this call publishes it, claiming the row
    for as long as that takes, and removes it once the broker acknowledged it.
    """
    mqtt, thing = config.mqtt, out.built.thing_name
    topic = mqtt.deployments_topic(thing)
    if drain is not None and wait_seconds is None:
        with db.write() as conn:
            _insert(conn, config, out, envelope, status=BUILDING)
            outbox.enqueue(conn, out.deployment_id, topic)
        drain()
        _announce(config, out, on_created, on_note)
        return None
    async with contextlib.AsyncExitStack() as stack:
        publish: Callable[[str, bytes], Awaitable[None]]
        if publisher is None or wait_seconds is not None:
            client = await stack.enter_async_context(CloudMqtt(mqtt))
            publish = client.publish
        else:
            publish = functools.partial(publisher.publish, wait_seconds=OPERATION_TIMEOUT_SECONDS)
        if wait_seconds is not None:
            # Subscribed before publishing, so not even a fast core's first report is missed.
            await client.subscribe(mqtt.status_topic(thing))
        lease = int(time.time() + config.cloud.outbox_lease_seconds)
        with db.write() as conn:
            _insert(conn, config, out, envelope, status=BUILDING)
            outbox.enqueue(conn, out.deployment_id, topic, claimed_until=lease)
        try:
            await publish(topic, envelope)
        except BrokerError as exc:
            with db.write() as conn:
                message = f"not published: {exc}"
                conn.execute(
                    "UPDATE deployments SET status = :status, error_message = :error_message,"
                    " error_details = :error_details,"
                    " updated_at = :updated_at WHERE id = :id",
                    {
                        "status": FAILURE,
                        "error_message": message,
                        "error_details": _details("BrokerError", message),
                        "updated_at": timestamp(),
                        "id": out.deployment_id,
                    },
                )
                add_event(conn, out.deployment_id, FAILURE, timestamp(), message)
                # A deployment recorded as failed is not one for a replica to send later.
                conn.execute(
                    "DELETE FROM outbox WHERE deployment_id = :id", {"id": out.deployment_id}
                )
            raise
        outbox.mark_sent(db, [out.deployment_id])
        _announce(config, out, on_created, on_note)
        if wait_seconds is None:
            return None
        deadline = asyncio.get_running_loop().time() + wait_seconds
        return await follow(
            client,
            db,
            deployment_id=out.deployment_id,
            thing_name=thing,
            deadline=deadline,
            on_change=on_change,
        )


def _announce(
    config: CloudConfig,
    out: _Outgoing,
    on_created: Callable[[dict[str, Any]], None] | None,
    on_note: Callable[[str], None] | None,
) -> None:
    if on_created is not None:
        on_created(_created(config, out))
    if on_note is not None and out.built.note is not None:
        on_note(out.built.note)
