# SPDX-License-Identifier: Apache-2.0
"""Store what the V1 API answered: each group with the definitions it needs in one transaction.

Rows keep V1's ids, version ids, ARNs and timestamps, so every stored ARN resolves exactly as
it did in AWS. Each group is planned and written inside one `Database.write()` transaction (the
plan reads the rows it compares with under the write lock, so a concurrent command can't slip
in between), definitions before the group versions that name them: an interrupted import
leaves whole groups behind, each of them resolvable. `--dry-run` runs the very same
transaction and rolls it back.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from edge.cloud.db import Connection, Database
from edge.cloud.errors import CloudUsageError, DefinitionInvalidError, NotFoundError
from edge.cloud.groups import resolve_group, validate_group
from edge.cloud.v1import.plan import GroupPlan, Stored, plan_group
from edge.cloud.v1import.reader import V1Account, V1Group, definition_named


class _DryRun(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a dry run's transaction to roll it back; carries the plan out."""

    def __init__(self, plan: GroupPlan) -> None:
        super().__init__()
        self.plan = plan


@dataclass(slots=True)
class ImportReport:
    """The outcome: each group's plan, the totals, the API calls made."""

    dry_run: bool
    calls: int
    groups: list[GroupPlan] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def conflicts(self) -> bool:
        """Whether some group was not written because an id is stored with other content."""
        return any(plan.conflicts for plan in self.groups)


def import_account(
    db: Database,
    account: V1Account,
    *,
    dry_run: bool,
    progress: Callable[[str, int, int], None],
) -> ImportReport:
    """Plan and store (or, dry, only plan) every group read from the account."""
    report = ImportReport(dry_run=dry_run, calls=account.calls)
    claimed: set[tuple[str, str]] = set()
    for index, group in enumerate(account.groups, 1):
        plan = _import_group(db, account, group, claimed, dry_run=dry_run)
        report.groups.append(plan)
        if not plan.conflicts:
            report.counts.update(plan.counts)
            claimed.update(plan.named)
        progress("groups stored" if not dry_run else "groups planned", index, len(account.groups))
    return report


def _import_group(
    db: Database,
    account: V1Account,
    group: V1Group,
    claimed: set[tuple[str, str]],
    *,
    dry_run: bool,
) -> GroupPlan:
    try:
        with db.write() as conn:
            return _plan_and_apply(conn, account, group, claimed, dry_run=dry_run)
    except _DryRun as dry:
        return dry.plan


def _plan_and_apply(
    conn: Connection,
    account: V1Account,
    group: V1Group,
    claimed: set[tuple[str, str]],
    *,
    dry_run: bool,
) -> GroupPlan:
    plan = plan_group(account, group, load_stored(conn, account, group), claimed)
    if not plan.conflicts:
        _apply(conn, plan)
        _note_undeployable(conn, plan)
    if dry_run:
        # Everything above ran against the real tables; raising undoes it all.
        raise _DryRun(plan)
    return plan


def load_stored(conn: Connection, account: V1Account, group: V1Group) -> Stored:
    """The rows stored under the ids importing `group` touches."""
    definition_ids: set[str] = set()
    version_ids: set[str] = set()
    functions: set[str] = set()
    for version in group.versions:
        for key, ref in (version.get("Definition") or {}).items():
            definition = definition_named(account, key, ref)
            if definition is None:
                continue
            definition_ids.add(definition.info["Id"])
            for v in definition.versions:
                version_ids.add(v["Version"])
                for fn in (v.get("Definition") or {}).get("Functions") or []:
                    if isinstance(fn, dict) and isinstance(fn.get("FunctionArn"), str):
                        functions.add(fn["FunctionArn"])
    gid = group.info["Id"]
    group_version_ids = [v["Version"] for v in group.versions]
    return Stored(
        definitions={
            r["id"]: (r["kind"], r["arn"])
            for r in _rows(conn, "SELECT id, kind, arn FROM definitions", "id", definition_ids)
        },
        definition_versions={
            r["id"]: (r["definition_id"], r["arn"], json.loads(r["body"]))
            for r in _rows(
                conn,
                "SELECT id, definition_id, arn, body FROM definition_versions",
                "id",
                version_ids,
            )
        },
        groups={r["id"]: r["arn"] for r in _rows(conn, "SELECT id, arn FROM groups", "id", [gid])},
        group_versions={
            r["id"]: (r["group_id"], r["arn"], json.loads(r["body"]))
            for r in _rows(
                conn, "SELECT id, group_id, arn, body FROM group_versions", "id", group_version_ids
            )
        },
        published=frozenset(
            r["function_arn"]
            for r in _rows(
                conn, "SELECT function_arn FROM function_code", "function_arn", functions
            )
        ),
    )


def _rows(conn: Connection, select: str, column: str, values: Iterable[str]) -> list[Any]:
    """`select` WHERE `column` IN values, in chunks below SQLite's limit on parameters."""
    wanted = sorted(set(values))
    rows: list[Any] = []
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        rows.extend(conn.execute(f"{select} WHERE {column} IN :chunk", {"chunk": chunk}).fetchall())
    return rows


def _apply(conn: Connection, plan: GroupPlan) -> None:
    """Insert the plan's rows: definitions and their versions first, then the group's."""
    for definition in plan.definitions:
        info = definition.info
        did = info["Id"]
        if definition.new:
            conn.execute(
                "INSERT INTO definitions (id, kind, name, arn, created_at, updated_at)"
                " VALUES (:id, :kind, :name, :arn, :created_at, :updated_at)",
                {
                    "id": did,
                    "kind": definition.kind.segment,
                    "name": info.get("Name"),
                    "arn": info["Arn"],
                    **_times(info),
                },
            )
        for version in definition.versions:
            conn.execute(
                "INSERT INTO definition_versions (id, definition_id, seq, arn, created_at, body)"
                " VALUES (:id, :parent, (SELECT coalesce(max(seq), 0) + 1 FROM definition_versions"
                " WHERE definition_id = :parent), :arn, :created_at, :body)",
                {
                    "id": version["Version"],
                    "parent": did,
                    "arn": version["Arn"],
                    "created_at": version["CreationTimestamp"],
                    "body": json.dumps(version.get("Definition") or {}),
                },
            )
        _set_latest(conn, "definitions", "definition_versions", "definition_id", info)
    gid = plan.info["Id"]
    if plan.new_group:
        conn.execute(
            "INSERT INTO groups (id, name, arn, created_at, updated_at)"
            " VALUES (:id, :name, :arn, :created_at, :updated_at)",
            {
                "id": gid,
                "name": plan.info.get("Name"),
                "arn": plan.info["Arn"],
                **_times(plan.info),
            },
        )
    for copy in plan.versions:
        version = copy.version
        if copy.complete:
            conn.execute(
                "UPDATE group_versions SET body = :body WHERE id = :id",
                {"body": json.dumps(copy.refs), "id": version["Version"]},
            )
            continue
        conn.execute(
            "INSERT INTO group_versions (id, group_id, seq, arn, created_at, body)"
            " VALUES (:id, :parent, (SELECT coalesce(max(seq), 0) + 1 FROM group_versions"
            " WHERE group_id = :parent), :arn, :created_at, :body)",
            {
                "id": version["Version"],
                "parent": gid,
                "arn": version["Arn"],
                "created_at": version["CreationTimestamp"],
                "body": json.dumps(copy.refs),
            },
        )
    if plan.new_group or plan.versions:
        _set_latest(conn, "groups", "group_versions", "group_id", plan.info)


def _times(info: dict[str, Any]) -> dict[str, str]:
    created = str(info["CreationTimestamp"])
    return {"created_at": created, "updated_at": str(info.get("LastUpdatedTimestamp") or created)}


def _set_latest(
    conn: Connection, table: str, versions: str, parent: str, info: dict[str, Any]
) -> None:
    """Point the row at V1's LatestVersion (or, if that isn't stored, its newest version)."""
    ident = info["Id"]
    row = conn.execute(
        f"SELECT id FROM {versions} WHERE {parent} = :parent"  # noqa: S608 - fixed names
        " ORDER BY (id = :latest) DESC, seq DESC LIMIT 1",
        {"parent": ident, "latest": info.get("LatestVersion") or ""},
    ).fetchone()
    conn.execute(
        f"UPDATE {table} SET latest_version_id = :latest, updated_at = :updated_at"  # noqa: S608
        " WHERE id = :id",
        {
            "latest": None if row is None else row["id"],
            "updated_at": _times(info)["updated_at"],
            "id": ident,
        },
    )


def _note_undeployable(conn: Connection, plan: GroupPlan) -> None:
    """Check each copied group version as create-group-version would; note why one fails."""
    for copy in plan.versions:
        try:
            validate_group(resolve_group(conn, copy.refs))
        except NotFoundError:
            continue  # a definition gone from the account: the plan noted it already
        except (DefinitionInvalidError, CloudUsageError) as exc:
            plan.note(f"version {copy.version['Version']}: can't be deployed as it is: {exc}")
