# SPDX-License-Identifier: Apache-2.0
"""A group version resolved into the deployment document its core parses, ready to sign.

Each function gets `FunctionConfiguration.Handler` and `.Code {Uri, Sha256}` from its published
package (`publish-function`), or else from AWS Lambda (fetched by the caller with
`edge.cloud.lambdacode`), unless its configuration already names its Code. The document is run
through the core's own parser (`edge.model.parse_deployment`) before it is handed back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edge.cloud.db import Connection
from edge.cloud.groups import ResolvedGroup, group_version_row, resolve_group, validate_group
from edge.errors import DefinitionInvalidError, DeploymentInvalidError, NotFoundError
from edge.model import DeploymentType, parse_deployment
from edge.model.fields import entry_label
from edge.model.loggers import plan_logging


@dataclass(frozen=True, slots=True)
class Built:
    """A resolved deployment, ready to sign."""

    document: bytes
    thing_name: str
    group_version_id: str
    #: What the core will ignore of the group (loggers, devices), or None.
    note: str | None = None


def _published(conn: Connection, function_arn: str) -> dict[str, Any] | None:
    """The Handler and Code of a package published for this exact ARN, or None."""
    row = conn.execute(
        "SELECT handler, uri, sha256 FROM function_code WHERE function_arn = :function_arn",
        {"function_arn": function_arn},
    ).fetchone()
    if row is None:
        return None
    return {"Handler": row["handler"], "Code": {"Uri": row["uri"], "Sha256": row["sha256"]}}


def _resolve(conn: Connection, group_id: str, group_version_id: str) -> ResolvedGroup:
    """A group version with its definition versions looked up.

    Raises:
        NotFoundError: The group version is gone.
        DefinitionInvalidError: A definition version it names is gone (its definition was
            deleted, which AWS allows while a group version names it).
    """
    row = group_version_row(conn, group_id, group_version_id)
    try:
        return resolve_group(conn, json.loads(row["body"]))
    except NotFoundError as exc:
        if not exc.ident.startswith("arn:"):
            raise
        raise DefinitionInvalidError(
            "deployment",
            f"group version {group_version_id} names {exc.ident}, which no longer exists (its "
            f"definition was deleted); create a group version without it and deploy that",
        ) from None


def functions_without_code(conn: Connection, group_id: str, group_version_id: str) -> list[str]:
    """The ARNs of a group version's functions that have neither a Code nor a published package.

    Raises:
        NotFoundError: The group version is gone.
        DefinitionInvalidError: A definition version it names is gone.
    """
    functions = _resolve(conn, group_id, group_version_id).group["Functions"]
    return [
        fn["FunctionArn"]
        for fn in functions
        if isinstance(fn, dict)
        and isinstance(fn.get("FunctionArn"), str)
        and "Code" not in (fn.get("FunctionConfiguration") or {})
        and _published(conn, fn["FunctionArn"]) is None
    ]


def _fill_code(
    conn: Connection, functions: list[Any], fetched: dict[str, dict[str, Any]]
) -> list[Any]:
    """Return the functions with Handler and Code from their packages (published or Lambda's).

    Raises:
        DefinitionInvalidError: A function has neither a package nor a Code of its own.
    """
    filled = []
    for index, fn in enumerate(functions):
        fn_copy = json.loads(json.dumps(fn))
        config = fn_copy.setdefault("FunctionConfiguration", {})
        if "Code" not in config:
            arn = fn_copy["FunctionArn"]
            code = _published(conn, arn) or fetched.get(arn)
            if code is None:
                raise DefinitionInvalidError(
                    "deployment",
                    f"{entry_label('Functions', index, fn)}: function {arn} has no published "
                    f"code; run `edge cloud publish-function --function-arn {arn} --zip-file "
                    f"fileb://PACKAGE.zip --handler MODULE.FUNCTION`, or create it in AWS Lambda",
                )
            config.update(code)
        filled.append(fn_copy)
    return filled


def build_document(
    conn: Connection,
    *,
    group_id: str,
    group_version_id: str,
    deployment_type: str,
    deployment_id: str,
    created_at: str,
    fetched: dict[str, dict[str, Any]] | None = None,
) -> Built:
    """Resolve a group version into the deployment document its core parses.

    Raises:
        NotFoundError: The group version, or a definition version it names, is gone.
        DefinitionInvalidError: It names no core, a function has no code, or the result is
            not a document the core would accept.
    """
    resolved = _resolve(conn, group_id, group_version_id)
    if resolved.thing_name is None:
        raise DefinitionInvalidError(
            "deployment",
            f"group version {group_version_id} names no core definition version, so there is "
            f"no core to deploy to; create a group version with --core-definition-version-arn",
        )
    document: dict[str, Any] = {
        "DeploymentId": deployment_id,
        "DeploymentType": deployment_type,
        "GroupId": group_id,
        "GroupVersionId": group_version_id,
        "CreatedAt": created_at,
    }
    note = None
    if deployment_type != DeploymentType.RESET.value:
        # Checked when the version was created; checked again because definitions can't change
        # but published code can, and it costs nothing next to a deployment.
        validate_group(resolved)
        group = dict(resolved.group)
        group["Functions"] = _fill_code(conn, group["Functions"], fetched or {})
        document["Group"] = group
        try:
            note = plan_logging(group).note
        except DeploymentInvalidError as exc:
            raise DefinitionInvalidError("deployment", exc.problem) from None
    payload = json.dumps(document, separators=(",", ":")).encode("utf-8")
    try:
        parse_deployment(payload)
    except DeploymentInvalidError as exc:
        raise DefinitionInvalidError("deployment", exc.problem) from None
    return Built(payload, resolved.thing_name, group_version_id, note)
