# SPDX-License-Identifier: Apache-2.0
"""A batch of bulk records' deployments, created at once: one read, one build pass, one write.

A bulk deployment creates its deployments a batch at a time (as many as its rollout allows now,
up to `runner.START_BATCH`), and what `create-deployment` does once per deployment is done once
per batch here:

1. **Read**, in one transaction: which reserved ids already have a deployment (a runner taken
   over after a SIGKILL creates its batch again under the same ids), the groups, their
   versions, every definition version those name and their functions' published code: a few
   `WHERE … IN` queries for the lot.
2. **Build**, outside any transaction: each document through one `DocumentBuilder`, which
   validates, fills in and serialises a group that many group versions share once, then each
   document signed for its core.
3. **Write**, in one transaction: the deployments with their first events and their outbox
   rows, one statement per table. An id found recorded meanwhile is left out.

A record that can't be deployed (no such group or version, a definition that doesn't validate,
a function without code) fails alone, with its error, and the others go on; an error of the
database fails the whole batch, which the runner tries again. Functions with no published
package are fetched from AWS Lambda between the read and the build, as `create-deployment`
fetches them.

The database work goes through `run` (`DatabaseThread.call` in a replica), so the event loop
never waits on it; the Lambda fetch awaits on the loop, with `db`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.cloud import outbox
from edge.cloud.build import DocumentBuilder, Header, code_of, resolve_refs, uncoded
from edge.cloud.bulk.runner import Deployed
from edge.cloud.bulk.sqlstore import Run
from edge.cloud.bulk.store import Reserved
from edge.cloud.config import CloudConfig
from edge.cloud.db import Connection, Database
from edge.cloud.deployments import check_deployment_type, insert_new, new_row
from edge.cloud.errors import (
    ArtifactError,
    CloudUsageError,
    DefinitionInvalidError,
    LambdaCodeError,
    NotFoundError,
)
from edge.cloud.groups import ResolvedGroup, group_version_row, latest_version_id
from edge.cloud.ids import precise_timestamp
from edge.cloud.lambdacode import fetch_functions
from edge.cloud.status import BUILDING
from edge.signing import seal

#: Errors that make one record undeployable, and leave the rest of its batch alone.
_RECORD_ERRORS: Final = (CloudUsageError, NotFoundError, DefinitionInvalidError, LambdaCodeError)
_DEPLOYMENTS: Final = "SELECT id FROM deployments WHERE id IN :values"
_GROUPS: Final = "SELECT id FROM groups WHERE id IN :values"


@dataclass(slots=True)
class _Plan:
    """What the read found: per record, its group resolved, or why it can't be deployed."""

    #: Lines whose id has a deployment already.
    recorded: list[int] = field(default_factory=list)
    resolved: list[tuple[Reserved, dict[str, str], ResolvedGroup]] = field(default_factory=list)
    failed: list[tuple[Reserved, Exception]] = field(default_factory=list)
    #: Published code by function ARN, for the functions the resolved groups name.
    code: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Function ARNs with no Code and no package: for AWS Lambda.
    wanted: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BatchDeployer:
    """Creates a batch of reserved records' deployments (see the module docstring).

    A `runner.Deploy`: `await deployer(reserved)`.
    """

    config: CloudConfig
    #: For the Lambda fetch, on the event loop's thread.
    db: Database
    signing_key: Ed25519PrivateKey
    #: Wakes the process's outbox drain once deployments are queued.
    drain: Callable[[], None]
    #: Runs the database work (`DatabaseThread.call`, or `sqlstore.inline(db)`).
    run: Run

    async def __call__(self, reserved: Sequence[Reserved]) -> Deployed:
        """Create the records' deployments, queued in the outbox; what became of each."""
        plan = await self.run(lambda db: _read(db, reserved))
        fetched, missing = await _fetch(self.config, self.db, plan.wanted)
        deployed, queued = await self.run(
            lambda db: _write(
                db, self.config, self.signing_key, plan, fetched=fetched, missing=missing
            )
        )
        if queued:
            self.drain()
        return deployed


def _read(db: Database, records: Sequence[Reserved]) -> _Plan:
    plan = _Plan()
    with db.read() as conn:
        recorded = _found(conn, _DEPLOYMENTS, (r.deployment_id for r in records))
        plan.recorded = [r.line for r in records if r.deployment_id in recorded]
        todo = [r for r in records if r.deployment_id not in recorded]
        if not todo:
            return plan
        groups = _found(conn, _GROUPS, (r.group_id for r in todo))
        versions = {
            (row["group_id"], row["id"]): json.loads(row["body"])
            for row in conn.execute(
                "SELECT group_id, id, body FROM group_versions WHERE id IN :ids",
                {"ids": sorted({r.group_version_id for r in todo})},
            )
        }
        known = _definition_versions(conn, versions.values())
        for record in todo:
            try:
                check_deployment_type(record.deployment_type)
                if record.group_id not in groups:
                    latest_version_id(conn, record.group_id)  # raises NotFoundError
                refs = versions.get((record.group_id, record.group_version_id))
                if refs is None:  # the version is not this group's: NotFoundError, as one says it
                    row = group_version_row(conn, record.group_id, record.group_version_id)
                    refs = json.loads(row["body"])
                resolved = resolve_refs(record.group_version_id, refs, conn, known)
            except _RECORD_ERRORS as exc:
                plan.failed.append((record, exc))
                continue
            plan.resolved.append((record, refs, resolved))
        functions = _functions(r for _, _, r in plan.resolved)
        arns = sorted(set(uncoded(functions, lambda _: None)))
        if arns:
            plan.code = {
                row["function_arn"]: code_of(row)
                for row in conn.execute(
                    "SELECT function_arn, handler, uri, sha256 FROM function_code"
                    " WHERE function_arn IN :arns",
                    {"arns": arns},
                )
            }
        plan.wanted = sorted(set(uncoded(functions, plan.code.get)))
    return plan


def _found(conn: Connection, select: str, values: Iterable[str]) -> set[str]:
    """Which of `values` the query `select` (an `id` column, `IN :values`) finds."""
    wanted = sorted(set(values))
    if not wanted:
        return set()
    return {str(row["id"]) for row in conn.execute(select, {"values": wanted})}


def _definition_versions(
    conn: Connection, bodies: Iterable[object]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every definition version the group versions name: `{arn: (kind segment, body)}`."""
    arns = sorted(
        {
            arn
            for refs in bodies
            if isinstance(refs, dict)
            for arn in refs.values()
            if isinstance(arn, str)
        }
    )
    if not arns:
        return {}
    rows = conn.execute(
        "SELECT v.arn AS arn, d.kind AS kind, v.body AS body FROM definition_versions AS v"
        " JOIN definitions AS d ON d.id = v.definition_id WHERE v.arn IN :arns",
        {"arns": arns},
    )
    return {str(row["arn"]): (str(row["kind"]), json.loads(row["body"])) for row in rows}


def _functions(groups: Iterable[ResolvedGroup]) -> list[Any]:
    """The functions of the groups, each distinct list once."""
    seen: set[int] = set()
    functions: list[Any] = []
    for resolved in groups:
        listed = resolved.group["Functions"]
        if id(listed) not in seen:
            seen.add(id(listed))
            functions.extend(listed)
    return functions


async def _fetch(
    config: CloudConfig, db: Database, arns: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, Exception]]:
    """Functions from AWS Lambda, each on its own: (what was fetched, why the others weren't)."""
    fetched: dict[str, dict[str, Any]] = {}
    missing: dict[str, Exception] = {}
    for arn in arns:
        try:
            fetched |= await fetch_functions(config, db, [arn])
        except (LambdaCodeError, CloudUsageError, ArtifactError) as exc:
            missing[arn] = exc
    return fetched, missing


def _write(
    db: Database,
    config: CloudConfig,
    signing_key: Ed25519PrivateKey,
    plan: _Plan,
    *,
    fetched: dict[str, dict[str, Any]],
    missing: dict[str, Exception],
) -> tuple[Deployed, bool]:
    """Build, sign and record the resolved records; (what became of each, whether any queued)."""

    def code(arn: str) -> dict[str, Any] | None:
        return plan.code.get(arn) or fetched.get(arn)

    builder = DocumentBuilder(code)
    failed = list(plan.failed)
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    topics: list[str] = []
    for record, refs, resolved in plan.resolved:
        lacking = [a for a in uncoded(resolved.group["Functions"], code) if a in missing]
        if lacking:
            failed.append((record, missing[lacking[0]]))
            continue
        header = Header(
            record.deployment_id,
            record.deployment_type,
            record.group_id,
            record.group_version_id,
            precise_timestamp(),
        )
        try:
            built = builder.build(refs, resolved, header)
        except DefinitionInvalidError as exc:
            failed.append((record, exc))
            continue
        rows.append(
            new_row(
                config,
                deployment_id=record.deployment_id,
                group_id=record.group_id,
                built=built,
                deployment_type=record.deployment_type,
                created_at=header.created_at,
                envelope=seal(built.document, signing_key=signing_key, thing_name=built.thing_name),
                status=BUILDING,
            )
        )
        lines.append(record.line)
        topics.append(config.mqtt.deployments_topic(built.thing_name))
    queued = False
    if rows:
        with db.write() as conn:
            # Recorded since the read: by this batch's previous attempt, whose commit was
            # answered with an error, or by a runner that held the lease before this one.
            again = _found(conn, _DEPLOYMENTS, (row["id"] for row in rows))
            fresh = [
                (row, topic)
                for row, topic in zip(rows, topics, strict=True)
                if row["id"] not in again
            ]
            insert_new(conn, [row for row, _ in fresh])
            outbox.enqueue_many(conn, [(row["id"], topic) for row, topic in fresh])
            queued = bool(fresh)
    return Deployed(created=[*plan.recorded, *lines], failed=failed), queued
