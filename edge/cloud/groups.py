# SPDX-License-Identifier: Apache-2.0
"""Groups and group versions: which definition versions make up what a core runs.

A group version names one version of each kind of definition by ARN. Before one is stored,
the whole group is assembled from those versions and validated with the group model
(`edge.model.parse_group`, the very code the core runs on every deployment), plus the one rule
the model can't judge because it doesn't know the group's functions by ARN: a subscription
naming a function that is not in the group. Connectors are checked against the manifests of the
built-in connectors (`edge.model.connectors`), as the core checks them. A group version that
is stored can be deployed.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from edge.cloud.definitions import (
    KINDS,
    Kind,
    check_cores,
    check_subscriptions,
    definition_info,
    resolve_version,
    version_info,
    with_tags,
)
from edge.cloud.errors import CloudUsageError, DefinitionInvalidError, NotFoundError
from edge.cloud.ids import Arns, creation_timestamp, new_id, parse_version_arn, timestamp
from edge.cloud.names import check_name
from edge.cloud.status import FAILURE
from edge.cloud.tags import check_tags, drop_tags, put_tags
from edge.errors import DeploymentInvalidError
from edge.model import DeploymentType, parse_group
from edge.model.connectors import check_connectors
from edge.model.fields import quoted

if TYPE_CHECKING:
    # Annotations only: `edge cloud`'s parser reads this module, and importing the database
    # code (SQLAlchemy, a few tenths of a second) would slow `--help` and a mistyped argument.
    from edge.cloud.db import Connection, Database, Row

#: The group version keys, in the order the AWS CLI documents them, with their kinds.
GROUP_VERSION_KEYS: Final = {kind.group_key: kind for kind in KINDS.values()}
#: The four lists of the group a deployment carries, as the core parses it.
GROUP_LISTS: Final = ("Resources", "Functions", "Connectors", "Subscriptions")
_HINT: Final = "`edge cloud list-groups` lists them"
#: The deployment type that takes a group off its core; only then may the group be deleted.
RESET_DEPLOYMENT: Final = "ResetDeployment"
#: The types create-deployment takes, as AWS's model lists them; resets are reset-deployments.
DEPLOYMENT_TYPES: Final = (DeploymentType.NEW.value, DeploymentType.REDEPLOY.value)


@dataclass(frozen=True, slots=True)
class ResolvedGroup:
    """A group version with its definition versions looked up."""

    #: `{"Resources", "Functions", "Connectors", "Subscriptions"}` (and "Devices", "Loggers"
    #: when the version names them), as a deployment carries it.
    group: dict[str, list[Any]]
    #: The core's thing name (None: the group version names no core definition version).
    thing_name: str | None


def option_name(key: str) -> str:
    """The CLI option of a group version key: ResourceDefinitionVersionArn -> --resource-…-arn."""
    noun = key.removesuffix("DefinitionVersionArn").lower()
    return f"--{noun}-definition-version-arn"


def check_refs(refs: object) -> dict[str, str]:
    """Check the shape of a group version (`--initial-version`, or the options), return it.

    Raises:
        CloudUsageError: Not an object of known keys with string values.
    """
    if not isinstance(refs, dict):
        raise CloudUsageError("group version", "must be a JSON object of definition version ARNs")
    for key, value in refs.items():
        if key not in GROUP_VERSION_KEYS:
            known = ", ".join(GROUP_VERSION_KEYS)
            raise CloudUsageError(key, f"is not a key of a group version ({known})")
        if not isinstance(value, str) or not value:
            raise CloudUsageError(key, "must be an ARN string")
    return dict(refs)


def resolve_group(conn: Connection, refs: dict[str, str]) -> ResolvedGroup:
    """Look up every version a group version names and assemble the group.

    Raises:
        CloudUsageError: An ARN is not a definition version ARN of the right kind.
        NotFoundError: An ARN names no stored version.
    """
    return assemble_group(refs, functools.partial(resolve_version, conn))


def assemble_group(
    refs: dict[str, str], lookup: Callable[[Kind, str], dict[str, Any]]
) -> ResolvedGroup:
    """Assemble the group a group version names, each version's body from `lookup(kind, arn)`.

    Raises:
        CloudUsageError: An ARN is not a definition version ARN of the right kind.
        NotFoundError: `lookup` found no stored version.
    """
    group: dict[str, list[Any]] = {name: [] for name in GROUP_LISTS}
    thing_name: str | None = None
    for key, arn in refs.items():
        kind = GROUP_VERSION_KEYS[key]
        parsed = parse_version_arn(arn)
        if parsed is None or parsed.kind != kind.segment:
            raise CloudUsageError(
                option_name(key), f"{quoted(arn)} is not a {kind.label} version ARN"
            )
        items = lookup(kind, arn).get(kind.list_key, [])
        if kind.segment == "cores":
            thing_name = check_cores(items)
        else:
            group[kind.list_key] = items
    return ResolvedGroup(group=group, thing_name=thing_name)


def resolve_core(conn: Connection, refs: dict[str, str]) -> str | None:
    """The thing name of a group version's core, looking up its core definition version only.

    Raises:
        NotFoundError: The core definition version is gone.
    """
    key = KINDS["core"].group_key
    if key not in refs:
        return None
    return resolve_group(conn, {key: refs[key]}).thing_name


def validate_group(resolved: ResolvedGroup) -> None:
    """Validate a whole group with the group model and the subscription rule.

    Raises:
        DefinitionInvalidError: A rule is broken; the message names the offending entry.
    """
    try:
        parsed = parse_group(resolved.group)
        # Each connector against its built-in manifest: the check the core runs on arrival.
        check_connectors(parsed)
    except DeploymentInvalidError as exc:
        raise DefinitionInvalidError("group version", exc.problem) from None
    check_subscriptions(
        resolved.group["Subscriptions"],
        function_arns={fn.function_arn for fn in parsed.functions},
        connector_arns={c.connector_arn for c in parsed.connectors},
        what="group version",
    )


def _group_row(conn: Connection, group_id: str) -> Row:
    row: Row | None = conn.execute(
        "SELECT * FROM groups WHERE id = :id", {"id": group_id}
    ).fetchone()
    if row is None:
        raise NotFoundError("group", group_id, _HINT)
    return row


def group_version_row(conn: Connection, group_id: str, version_id: str) -> Row:
    """Return a stored group version (with `parent_id`), or raise NotFoundError."""
    row: Row | None = conn.execute(
        "SELECT *, group_id AS parent_id FROM group_versions WHERE group_id = :group_id AND id ="
        " :id",
        {"group_id": group_id, "id": version_id},
    ).fetchone()
    if row is None:
        raise NotFoundError(
            "group version",
            version_id,
            f"`edge cloud list-group-versions --group-id {group_id}` lists its versions",
        )
    return row


def last_deployment(conn: Connection, group_id: str) -> Row | None:
    """The group's most recent deployment (None: never deployed)."""
    row: Row | None = conn.execute(
        "SELECT * FROM deployments WHERE group_id = :group_id ORDER BY created_at DESC, id DESC"
        " LIMIT 1",
        {"group_id": group_id},
    ).fetchone()
    return row


def latest_version_id(conn: Connection, group_id: str) -> str | None:
    """The id of a group's latest version (None if it has none)."""
    latest: str | None = _group_row(conn, group_id)["latest_version_id"]
    return latest


def _insert_version(conn: Connection, arns: Arns, group_id: str, refs: dict[str, str]) -> Row:
    """Validate and add a group version (inside a write transaction); make it the latest."""
    validate_group(resolve_group(conn, refs))
    seq = conn.execute(
        "SELECT coalesce(max(seq), 0) + 1 FROM group_versions WHERE group_id = :group_id",
        {"group_id": group_id},
    ).scalar()
    version_id, now = new_id(), timestamp()
    conn.execute(
        "INSERT INTO group_versions (id, group_id, seq, arn, created_at, body)"
        " VALUES (:id, :group_id, :seq, :arn, :created_at, :body)",
        {
            "id": version_id,
            "group_id": group_id,
            "seq": seq,
            "arn": arns.group_version(group_id, version_id),
            "created_at": now,
            "body": json.dumps(refs),
        },
    )
    conn.execute(
        "UPDATE groups SET latest_version_id = :latest_version_id, updated_at = :updated_at WHERE"
        " id = :id",
        {"latest_version_id": version_id, "updated_at": now, "id": group_id},
    )
    return group_version_row(conn, group_id, version_id)


def create_group(
    db: Database, arns: Arns, *, name: str, initial: object | None, tags: object | None = None
) -> dict[str, Any]:
    """create-group: a new group, with its first version if `initial` is given."""
    check_name("--name", name)
    checked_tags = None if tags is None else check_tags(tags, "--tags")
    refs = None if initial is None else check_refs(initial)
    group_id, now = new_id(), creation_timestamp()
    with db.write() as conn:
        conn.execute(
            "INSERT INTO groups (id, name, arn, created_at, updated_at) VALUES (:id, :name, :arn,"
            " :created_at, :updated_at)",
            {
                "id": group_id,
                "name": name,
                "arn": arns.group(group_id),
                "created_at": now,
                "updated_at": now,
            },
        )
        if refs is not None:
            _insert_version(conn, arns, group_id, refs)
        if checked_tags:
            put_tags(conn, arns.group(group_id), checked_tags)
        return definition_info(_group_row(conn, group_id))


def create_group_version(
    db: Database, arns: Arns, group_id: str, refs: dict[str, str]
) -> dict[str, Any]:
    """create-group-version: validate the whole group, then store the version."""
    checked = check_refs(refs)
    with db.write() as conn:
        _group_row(conn, group_id)
        return version_info(_insert_version(conn, arns, group_id, checked))


def get_group(db: Database, group_id: str) -> dict[str, Any]:
    """get-group, with its `tags` (when it has any)."""
    with db.read() as conn:
        return with_tags(conn, definition_info(_group_row(conn, group_id)))


def update_group(db: Database, group_id: str, name: str | None) -> None:
    """update-group: rename a group (its versions and deployments stay).

    Raises:
        CloudUsageError: No name: a group always has one, as create-group requires.
    """
    if name is None:
        raise CloudUsageError("--name", "is required: a group always has a name")
    check_name("--name", name)
    with db.write() as conn:
        _group_row(conn, group_id)
        conn.execute(
            "UPDATE groups SET name = :name, updated_at = :updated_at WHERE id = :id",
            {"name": name, "updated_at": timestamp(), "id": group_id},
        )


def delete_group(db: Database, group_id: str) -> None:
    """delete-group: the group, its versions and deployments, as AWS deletes them.

    Raises:
        CloudUsageError: The group's latest deployment is not a reset (or is a reset that
            failed): a core still runs the group, and deleting it would leave nothing that can
            take it back.
        NotFoundError: No such group.
    """
    with db.write() as conn:
        row = _group_row(conn, group_id)
        last = last_deployment(conn, group_id)
        if last is not None and (
            last["deployment_type"] != RESET_DEPLOYMENT or last["status"] == FAILURE
        ):
            reset = last["deployment_type"] == RESET_DEPLOYMENT
            what = "deployed; its last reset failed" if reset else "deployed"
            raise CloudUsageError(
                "--group-id",
                f"group {group_id} is {what} (deployment {last['id']}, a "
                f"{last['deployment_type']}, {last['status']}); reset it first with "
                f"`reset-deployments --group-id {group_id}` (`--force` if its core can't be "
                f"reached), then delete it",
            )
        conn.execute("DELETE FROM deployments WHERE group_id = :group_id", {"group_id": group_id})
        conn.execute("DELETE FROM groups WHERE id = :id", {"id": group_id})
        drop_tags(conn, row["arn"])


def get_group_version(db: Database, group_id: str, version_id: str) -> dict[str, Any]:
    """get-group-version, with its Definition (the definition version ARNs)."""
    with db.read() as conn:
        _group_row(conn, group_id)
        return version_info(group_version_row(conn, group_id, version_id), with_definition=True)


def list_groups(db: Database) -> dict[str, Any]:
    """list-groups, oldest first."""
    with db.read() as conn:
        rows = conn.execute("SELECT * FROM groups ORDER BY created_at, id").fetchall()
    return {"Groups": [definition_info(r) for r in rows]}


def list_group_versions(db: Database, group_id: str) -> dict[str, Any]:
    """list-group-versions, newest first."""
    with db.read() as conn:
        _group_row(conn, group_id)
        rows = conn.execute(
            "SELECT *, group_id AS parent_id FROM group_versions WHERE group_id = :group_id"
            " ORDER BY seq DESC",
            {"group_id": group_id},
        ).fetchall()
    return {"Versions": [version_info(r) for r in rows]}
