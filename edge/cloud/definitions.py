# SPDX-License-Identifier: Apache-2.0
"""Versioned definitions: cores, resources, functions, connectors, subscriptions, devices, loggers.

A definition is a named container; each version of it is immutable and holds one list in the
Greengrass V1 shape (`{"Resources": [...]}`, `{"Functions": [...]}`, ...). The seven kinds behave
identically, so one set of functions serves all of them, parameterised by `Kind`.

A version is checked on its own when it is created, with the group model (`edge.model`): every
rule that can be judged from one list alone (shapes, ids, secret ARNs, a secret referenced
twice, permissions that aren't "ro" or "rw"). Rules that need the whole group, such as a function
policy naming a resource that isn't in it, are checked by `create-group-version`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from edge.cloud.errors import DefinitionInvalidError, NotFoundError
from edge.cloud.ids import Arns, creation_timestamp, new_id, thing_name_of, timestamp
from edge.cloud.names import check_name
from edge.cloud.tags import check_tags, drop_tags, put_tags, tags_of
from edge.errors import DeploymentInvalidError
from edge.model import parse_group
from edge.model.fields import ID_PATTERN, entry_label, quoted
from edge.model.group import RESOURCE_ID_SUFFIX
from edge.model.loggers import check_devices, check_loggers

if TYPE_CHECKING:
    # Annotations only: `edge cloud`'s parser reads this module, and importing the database
    # code (SQLAlchemy, a few tenths of a second) would slow `--help` and a mistyped argument.
    from edge.cloud.db import Connection, Database, Row

#: Subscription endpoints that are not ARNs: the cloud (the MQTT broker) and the local shadow
#: service. Everything else is an ARN: a function, a connector, or a device's thing.
SPECIAL_ENDPOINTS: Final = frozenset({"cloud", "GGShadowService"})
#: The keys of a core in a core definition version.
_CORE_KEYS: Final = frozenset({"Id", "ThingArn", "CertificateArn", "SyncShadow"})


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of definition and the names the AWS CLI and API use for it."""

    #: ARN path segment and database kind: "resources".
    segment: str
    #: In command names: create-{noun}-definition.
    noun: str
    #: The list a version holds: "Resources".
    list_key: str
    #: The group version key naming a version of this kind.
    group_key: str

    @property
    def label(self) -> str:
        """For messages: "resource definition"."""
        return f"{self.noun} definition"

    @property
    def list_option(self) -> str:
        """The CLI option that carries a new version's list: --resources."""
        return f"--{self.segment}"

    @property
    def list_hint(self) -> str:
        """How to see what exists, for not-found messages."""
        return f"`edge cloud list-{self.noun}-definitions` lists them"


KINDS: Final = {
    kind.noun: kind
    for kind in (
        Kind("cores", "core", "Cores", "CoreDefinitionVersionArn"),
        Kind("resources", "resource", "Resources", "ResourceDefinitionVersionArn"),
        Kind("functions", "function", "Functions", "FunctionDefinitionVersionArn"),
        Kind("connectors", "connector", "Connectors", "ConnectorDefinitionVersionArn"),
        Kind("subscriptions", "subscription", "Subscriptions", "SubscriptionDefinitionVersionArn"),
        # Stored and deployed; the core acts on a FileSystem logger of GreengrassSystem and
        # names the rest in a note (`edge.model.loggers`).
        Kind("devices", "device", "Devices", "DeviceDefinitionVersionArn"),
        Kind("loggers", "logger", "Loggers", "LoggerDefinitionVersionArn"),
    )
}
#: The kinds checked by `edge.model.loggers` rather than as part of a group.
_CHECKS: Final = {"devices": check_devices, "loggers": check_loggers}
#: Function definition versions may also carry V1's DefaultConfig; it is stored, not used.
_EXTRA_KEYS: Final = {"functions": frozenset({"DefaultConfig"})}


# --- validation --------------------------------------------------------------------------------


def validate_version(kind: Kind, body: object) -> dict[str, Any]:
    """Check a definition version on its own; return it as it will be stored.

    Args:
        kind: The kind of definition.
        body: The version: `{"<ListKey>": [...]}` (a missing list is empty).

    Raises:
        DefinitionInvalidError: A rule is broken; the message names the offending entry.
    """
    what = f"{kind.label} version"
    if not isinstance(body, dict):
        raise DefinitionInvalidError(what, f'must be a JSON object like {{"{kind.list_key}": []}}')
    allowed = {kind.list_key} | _EXTRA_KEYS.get(kind.segment, frozenset())
    for key in body:
        if key not in allowed:
            raise DefinitionInvalidError(
                what, f"{quoted(key)} is not a key of a {kind.label} version ({kind.list_key})"
            )
    items = body.get(kind.list_key, [])
    if not isinstance(items, list):
        raise DefinitionInvalidError(what, f"{kind.list_key} must be a JSON array")
    if kind.segment == "cores":
        check_cores(items)
    elif kind.segment in _CHECKS:
        try:
            _CHECKS[kind.segment](items)
        except DeploymentInvalidError as exc:
            raise DefinitionInvalidError(what, exc.problem) from None
    else:
        try:
            parse_group(_standalone_group(kind, items))
        except DeploymentInvalidError as exc:
            raise DefinitionInvalidError(what, exc.problem) from None
        if kind.segment == "subscriptions":
            check_subscriptions(items, function_arns=None, what=what)
    return {key: body[key] for key in body} | {kind.list_key: items}


def _standalone_group(kind: Kind, items: list[Any]) -> dict[str, Any]:
    """The group to check one list with: the list, plus stand-ins for resources it names.

    A function or connector version may name resources that live in another definition; here
    they are stood in for by placeholder (local volume) resources so that everything else about
    the entries can be checked. The real resources are checked by create-group-version.
    """
    group: dict[str, Any] = {kind.list_key: items}
    named: list[object] = []
    for item in items if kind.segment in {"functions", "connectors"} else []:
        if not isinstance(item, dict):
            continue
        if kind.segment == "functions":
            config = item.get("FunctionConfiguration")
            env = config.get("Environment") if isinstance(config, dict) else None
            policies = env.get("ResourceAccessPolicies") if isinstance(env, dict) else None
            if isinstance(policies, list):
                named.extend(p.get("ResourceId") for p in policies if isinstance(p, dict))
        else:
            params = item.get("Parameters")
            if isinstance(params, dict):
                named.extend(v for k, v in params.items() if k.endswith(RESOURCE_ID_SUFFIX))
    ids = dict.fromkeys(r for r in named if isinstance(r, str) and ID_PATTERN.fullmatch(r))
    if ids:
        group["Resources"] = [
            {"Id": rid, "Name": rid, "ResourceDataContainer": {"LocalVolumeResourceData": {}}}
            for rid in ids
        ]
    return group


def check_cores(items: list[Any]) -> str | None:
    """Check a core definition version's Cores; return the core's thing name (None if empty).

    Raises:
        DefinitionInvalidError: Not exactly one core, or a core field is wrong.
    """
    what = "core definition version"
    if len(items) != 1:
        raise DefinitionInvalidError(
            what, f"Cores must hold exactly one core (a group has one), not {len(items)}"
        )
    (core,) = items
    where = entry_label("Cores", 0, core)
    if not isinstance(core, dict):
        raise DefinitionInvalidError(what, f"{where} must be an object")
    for key in core:
        if key not in _CORE_KEYS:
            raise DefinitionInvalidError(what, f"{where}: {quoted(key)} is not a key of a core")
    ident = core.get("Id")
    if not isinstance(ident, str) or ID_PATTERN.fullmatch(ident) is None:
        raise DefinitionInvalidError(what, f'{where}: Id must be 1-128 of A-Z a-z 0-9 ":" "_" "-"')
    thing_arn = core.get("ThingArn")
    thing = thing_name_of(thing_arn) if isinstance(thing_arn, str) else None
    if thing is None:
        raise DefinitionInvalidError(
            what,
            f"{where}: ThingArn must be an AWS IoT thing ARN "
            f"(arn:aws:iot:REGION:ACCOUNT:thing/NAME), not {_shown(thing_arn)}",
        )
    cert = core.get("CertificateArn")
    if not isinstance(cert, str) or not cert.startswith("arn:"):
        raise DefinitionInvalidError(what, f"{where}: CertificateArn must be an ARN")
    if "SyncShadow" in core and not isinstance(core["SyncShadow"], bool):
        raise DefinitionInvalidError(what, f"{where}: SyncShadow must be true or false")
    return thing


def check_subscriptions(
    items: list[Any],
    *,
    function_arns: set[str] | None,
    what: str,
    connector_arns: set[str] | None = None,
) -> None:
    """Check each subscription's Source and Target names something that can exist.

    Args:
        items: The subscriptions (already shape-checked by the group model).
        function_arns: The group's function ARNs; None checks the form only.
        connector_arns: The group's connector ARNs; None skips the connector check.
        what: Names the object for messages ("group version").

    Raises:
        DefinitionInvalidError: An endpoint is neither "cloud", "GGShadowService" nor an ARN,
            or is a function ARN that is not a function of the group.
    """
    for index, item in enumerate(items):
        where = entry_label("Subscriptions", index, item)
        for key in ("Source", "Target"):
            value = item[key]
            if value in SPECIAL_ENDPOINTS:
                continue
            if not value.startswith("arn:"):
                raise DefinitionInvalidError(
                    what,
                    f'{where}: {key} {quoted(value)} must be "cloud", "GGShadowService" or the '
                    f"ARN of a function, connector or device",
                )
            if function_arns is not None and _is_lambda(value) and value not in function_arns:
                raise DefinitionInvalidError(
                    what, f"{where}: {key} {quoted(value)} names no function of the group"
                )
            if connector_arns is not None and _is_connector(value) and value not in connector_arns:
                raise DefinitionInvalidError(
                    what, f"{where}: {key} {quoted(value)} names no connector of the group"
                )


def _is_connector(arn: str) -> bool:
    return ":/connectors/" in arn


def _is_lambda(arn: str) -> bool:
    parts = arn.split(":")
    return len(parts) > 2 and parts[2] == "lambda"  # noqa: PLR2004 - arn:partition:service


def _shown(value: object) -> str:
    return quoted(value) if isinstance(value, str) else json.dumps(value)[:40]


# --- storage -------------------------------------------------------------------------------------


def definition_info(row: Row) -> dict[str, Any]:
    """A definition as AWS's Get/Create/List answers show it (absent fields left out)."""
    info: dict[str, Any] = {
        "Arn": row["arn"],
        "CreationTimestamp": row["created_at"],
        "Id": row["id"],
        "LastUpdatedTimestamp": row["updated_at"],
    }
    if row["latest_version_id"] is not None:
        info["LatestVersion"] = row["latest_version_id"]
        info["LatestVersionArn"] = f"{row['arn']}/versions/{row['latest_version_id']}"
    if row["name"] is not None:
        info["Name"] = row["name"]
    return info


def version_info(row: Row, *, with_definition: bool = False) -> dict[str, Any]:
    """A version as AWS shows it: Arn, CreationTimestamp, Id (of its parent), Version."""
    info: dict[str, Any] = {
        "Arn": row["arn"],
        "CreationTimestamp": row["created_at"],
        "Id": row["parent_id"],
        "Version": row["id"],
    }
    if with_definition:
        info["Definition"] = json.loads(row["body"])
    return info


def insert_version(
    conn: Connection, arns: Arns, kind: Kind, definition_id: str, body: dict[str, Any]
) -> Row:
    """Add a version to a definition (inside a write transaction) and make it the latest."""
    seq = conn.execute(
        "SELECT coalesce(max(seq), 0) + 1 FROM definition_versions"
        " WHERE definition_id = :definition_id",
        {"definition_id": definition_id},
    ).scalar()
    version_id, now = new_id(), timestamp()
    arn = arns.definition_version(kind.segment, definition_id, version_id)
    conn.execute(
        "INSERT INTO definition_versions (id, definition_id, seq, arn, created_at, body)"
        " VALUES (:id, :definition_id, :seq, :arn, :created_at, :body)",
        {
            "id": version_id,
            "definition_id": definition_id,
            "seq": seq,
            "arn": arn,
            "created_at": now,
            "body": json.dumps(body),
        },
    )
    conn.execute(
        "UPDATE definitions SET latest_version_id = :latest_version_id, updated_at = :updated_at"
        " WHERE id = :id",
        {"latest_version_id": version_id, "updated_at": now, "id": definition_id},
    )
    return _version_row(conn, kind, definition_id, version_id)


def _version_row(conn: Connection, kind: Kind, definition_id: str, version_id: str) -> Row:
    row: Row | None = conn.execute(
        "SELECT *, definition_id AS parent_id FROM definition_versions"
        " WHERE definition_id = :definition_id AND id = :id",
        {"definition_id": definition_id, "id": version_id},
    ).fetchone()
    if row is None:
        raise NotFoundError(
            f"{kind.label} version",
            version_id,
            f"`edge cloud list-{kind.noun}-definition-versions --{kind.noun}-definition-id "
            f"{definition_id}` lists its versions",
        )
    return row


def _definition_row(conn: Connection, kind: Kind, definition_id: str) -> Row:
    row: Row | None = conn.execute(
        "SELECT * FROM definitions WHERE id = :id AND kind = :kind",
        {"id": definition_id, "kind": kind.segment},
    ).fetchone()
    if row is None:
        raise NotFoundError(kind.label, definition_id, kind.list_hint)
    return row


def create_definition(
    db: Database,
    arns: Arns,
    kind: Kind,
    *,
    name: str | None,
    initial: object | None,
    tags: object | None = None,
) -> dict[str, Any]:
    """create-X-definition: a new definition, with its first version if `initial` is given."""
    check_name("--name", name)
    checked_tags = None if tags is None else check_tags(tags, "--tags")
    body = None if initial is None else validate_version(kind, initial)
    definition_id, now = new_id(), creation_timestamp()
    with db.write() as conn:
        conn.execute(
            "INSERT INTO definitions (id, kind, name, arn, created_at, updated_at)"
            " VALUES (:id, :kind, :name, :arn, :created_at, :updated_at)",
            {
                "id": definition_id,
                "kind": kind.segment,
                "name": name,
                "arn": arns.definition(kind.segment, definition_id),
                "created_at": now,
                "updated_at": now,
            },
        )
        if body is not None:
            insert_version(conn, arns, kind, definition_id, body)
        if checked_tags:
            put_tags(conn, arns.definition(kind.segment, definition_id), checked_tags)
        return definition_info(_definition_row(conn, kind, definition_id))


def create_version(
    db: Database, arns: Arns, kind: Kind, definition_id: str, body: object
) -> dict[str, Any]:
    """create-X-definition-version: a new immutable version of an existing definition."""
    checked = validate_version(kind, body)
    with db.write() as conn:
        _definition_row(conn, kind, definition_id)
        return version_info(insert_version(conn, arns, kind, definition_id, checked))


def get_definition(db: Database, kind: Kind, definition_id: str) -> dict[str, Any]:
    """get-X-definition, with its `tags` (when it has any)."""
    with db.read() as conn:
        return with_tags(conn, definition_info(_definition_row(conn, kind, definition_id)))


def get_version(db: Database, kind: Kind, definition_id: str, version_id: str) -> dict[str, Any]:
    """get-X-definition-version, with its Definition."""
    with db.read() as conn:
        _definition_row(conn, kind, definition_id)
        return version_info(
            _version_row(conn, kind, definition_id, version_id), with_definition=True
        )


def list_definitions(db: Database, kind: Kind) -> dict[str, Any]:
    """list-X-definitions, oldest first."""
    with db.read() as conn:
        rows = conn.execute(
            "SELECT * FROM definitions WHERE kind = :kind ORDER BY created_at, id",
            {"kind": kind.segment},
        ).fetchall()
    return {"Definitions": [definition_info(r) for r in rows]}


def list_versions(db: Database, kind: Kind, definition_id: str) -> dict[str, Any]:
    """list-X-definition-versions, newest first (as AWS lists them)."""
    with db.read() as conn:
        _definition_row(conn, kind, definition_id)
        rows = conn.execute(
            "SELECT *, definition_id AS parent_id FROM definition_versions"
            " WHERE definition_id = :definition_id ORDER BY seq DESC",
            {"definition_id": definition_id},
        ).fetchall()
    return {"Versions": [version_info(r) for r in rows]}


def delete_definition(db: Database, kind: Kind, definition_id: str) -> None:
    """delete-X-definition: the definition and its versions.

    Group versions that name one of its versions keep the ARN (they are immutable); deploying
    such a group version fails, naming the ARN, as it does in AWS.
    """
    with db.write() as conn:
        row = _definition_row(conn, kind, definition_id)
        conn.execute("DELETE FROM definitions WHERE id = :id", {"id": definition_id})
        drop_tags(conn, row["arn"])


def update_definition(db: Database, kind: Kind, definition_id: str, name: str | None) -> None:
    """update-X-definition: rename a definition (its versions are immutable and stay)."""
    check_name("--name", name)
    with db.write() as conn:
        _definition_row(conn, kind, definition_id)
        conn.execute(
            "UPDATE definitions SET name = :name, updated_at = :updated_at WHERE id = :id",
            {"name": name, "updated_at": timestamp(), "id": definition_id},
        )


def with_tags(conn: Connection, info: dict[str, Any]) -> dict[str, Any]:
    """A Get answer with the resource's `tags` added, as AWS shows them (left out if none)."""
    tags = tags_of(conn, info["Arn"])
    return info | {"tags": tags} if tags else info


def resolve_version(conn: Connection, kind: Kind, arn: str) -> dict[str, Any]:
    """Return the stored body of the version of kind `kind` with this ARN.

    Raises:
        NotFoundError: No such version (never created here, or its definition was deleted).
    """
    row = conn.execute(
        "SELECT v.body FROM definition_versions AS v JOIN definitions AS d"
        " ON d.id = v.definition_id WHERE v.arn = :arn AND d.kind = :kind",
        {"arn": arn, "kind": kind.segment},
    ).fetchone()
    if row is None:
        raise NotFoundError(
            f"{kind.label} version",
            arn,
            f"`edge cloud list-{kind.noun}-definition-versions` lists the versions of a "
            f"definition (a deleted definition's versions are gone)",
        )
    body: dict[str, Any] = json.loads(row["body"])
    return body
