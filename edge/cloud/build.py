# SPDX-License-Identifier: Apache-2.0
"""A group version resolved into the deployment document its core parses, ready to sign.

Each function gets `FunctionConfiguration.Handler` and `.Code {Uri, Sha256}` from its published
package (`publish-function`), or else from AWS Lambda (fetched by the caller with
`edge.cloud.lambdacode`), unless its configuration already names its Code. The document is run
through the core's own parser (`edge.model.parse_deployment`) before it is handed back.
`DocumentBuilder` builds many documents, doing once what the groups of a fleet share.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from edge.cloud.db import Connection, Row
from edge.cloud.definitions import KINDS, Kind, resolve_version
from edge.cloud.errors import DefinitionInvalidError, NotFoundError
from edge.cloud.groups import (
    ResolvedGroup,
    assemble_group,
    group_version_row,
    validate_group,
)
from edge.errors import DeploymentInvalidError
from edge.model import DeploymentType, parse_deployment
from edge.model.deployment import MAX_DOCUMENT_BYTES
from edge.model.fields import entry_label
from edge.model.loggers import plan_logging

#: A function's `{"Handler", "Code"}` by its ARN, or None when it has no package.
CodeLookup = Callable[[str], dict[str, Any] | None]
#: The one group version key whose version differs between the groups of a fleet.
_CORE_KEY: Final = KINDS["core"].group_key


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
    return None if row is None else code_of(row)


def code_of(row: Row) -> dict[str, Any]:
    """A `function_code` row as a deployment's function carries it: its Handler and Code."""
    return {"Handler": row["handler"], "Code": {"Uri": row["uri"], "Sha256": row["sha256"]}}


def _resolve(conn: Connection, group_id: str, group_version_id: str) -> ResolvedGroup:
    """A group version with its definition versions looked up.

    Raises:
        NotFoundError: The group version is gone.
        DefinitionInvalidError: A definition version it names is gone (its definition was
            deleted, which AWS allows while a group version names it).
    """
    row = group_version_row(conn, group_id, group_version_id)
    return resolve_refs(group_version_id, json.loads(row["body"]), conn)


def resolve_refs(
    group_version_id: str,
    refs: dict[str, str],
    conn: Connection,
    known: Mapping[str, tuple[str, dict[str, Any]]] | None = None,
) -> ResolvedGroup:
    """A group version's group, from its definition version ARNs (`refs`).

    Args:
        group_version_id: The version, for messages.
        refs: Its body: definition version ARNs by group version key.
        conn: A transaction to look versions up in.
        known: Versions already read, `{arn: (kind segment, body)}`; the others (and one of
            another kind) are looked up through `conn`.

    Raises:
        DefinitionInvalidError: A definition version it names is gone.
    """
    given = known or {}

    def lookup(kind: Kind, arn: str) -> dict[str, Any]:
        found = given.get(arn)
        if found is not None and found[0] == kind.segment:
            return found[1]
        return resolve_version(conn, kind, arn)

    try:
        return assemble_group(refs, lookup)
    except NotFoundError as exc:
        if not exc.ident.startswith("arn:"):
            raise
        raise DefinitionInvalidError(
            "deployment",
            f"group version {group_version_id} names {exc.ident}, which no longer exists (its "
            f"definition was deleted); create a group version without it and deploy that",
        ) from None


def uncoded(functions: list[Any], code: CodeLookup) -> list[str]:
    """The ARNs of functions that have neither a Code of their own nor one `code` gives."""
    return [
        fn["FunctionArn"]
        for fn in functions
        if isinstance(fn, dict)
        and isinstance(fn.get("FunctionArn"), str)
        and "Code" not in (fn.get("FunctionConfiguration") or {})
        and code(fn["FunctionArn"]) is None
    ]


def functions_without_code(conn: Connection, group_id: str, group_version_id: str) -> list[str]:
    """The ARNs of a group version's functions that have neither a Code nor a published package.

    Raises:
        NotFoundError: The group version is gone.
        DefinitionInvalidError: A definition version it names is gone.
    """
    functions = _resolve(conn, group_id, group_version_id).group["Functions"]
    return uncoded(functions, functools.partial(_published, conn))


def _fill_code(functions: list[Any], code: CodeLookup) -> list[Any]:
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
            found = code(arn)
            if found is None:
                raise DefinitionInvalidError(
                    "deployment",
                    f"{entry_label('Functions', index, fn)}: function {arn} has no published "
                    f"code; run `edge cloud publish-function --function-arn {arn} --zip-file "
                    f"fileb://PACKAGE.zip --handler MODULE.FUNCTION`, or create it in AWS Lambda",
                )
            config.update(found)
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
    row = group_version_row(conn, group_id, group_version_id)
    refs = json.loads(row["body"])
    got = fetched or {}

    def code(arn: str) -> dict[str, Any] | None:
        return _published(conn, arn) or got.get(arn)

    return DocumentBuilder(code).build(
        refs,
        resolve_refs(group_version_id, refs, conn),
        Header(deployment_id, deployment_type, group_id, group_version_id, created_at),
    )


@dataclass(frozen=True, slots=True)
class Header:
    """A deployment document's own fields: all of it but the group."""

    deployment_id: str
    deployment_type: str
    group_id: str
    group_version_id: str
    created_at: str


@dataclass(slots=True)
class _Part:
    """A group as deployments carry it: serialised once, shared by every document of it."""

    text: str
    note: str | None
    #: Whether a document carrying it passed the core's whole parser.
    checked: bool = False


class DocumentBuilder:
    """Builds deployment documents, doing once what many of them share.

    Group versions that name the same definition versions (all but the core's) carry the same
    "Group": it is validated, given its functions' code, serialised and put through the core's
    parser (`parse_deployment`) within the first whole document that carries it. Every later
    document carrying those very bytes is checked for its own fields only, by the same parser
    on the document with an empty group; the two checks together are the whole parser's.

    `code` must not change while the builder is used: make one per batch of deployments.
    """

    def __init__(self, code: CodeLookup) -> None:
        """Build with function code from `code(function ARN)` (None: no package)."""
        self._code = code
        self._parts: dict[tuple[tuple[str, str], ...], _Part | DefinitionInvalidError] = {}

    def build(self, refs: dict[str, str], resolved: ResolvedGroup, header: Header) -> Built:
        """The document for one deployment of the group version `refs`, resolved.

        Raises:
            DefinitionInvalidError: It names no core, a function has no code, or the result
                is not a document the core would accept.
        """
        version_id = header.group_version_id
        if resolved.thing_name is None:
            raise DefinitionInvalidError(
                "deployment",
                f"group version {version_id} names no core definition version, so there is "
                f"no core to deploy to; create a group version with --core-definition-version-arn",
            )
        head = {
            "DeploymentId": header.deployment_id,
            "DeploymentType": header.deployment_type,
            "GroupId": header.group_id,
            "GroupVersionId": version_id,
            "CreatedAt": header.created_at,
        }
        if header.deployment_type == DeploymentType.RESET.value:
            payload = json.dumps(head, separators=(",", ":")).encode("utf-8")
            _check(payload)
            return Built(payload, resolved.thing_name, version_id)
        part = self._part(refs, resolved)
        text = json.dumps(head, separators=(",", ":"))
        payload = f'{text[:-1]},"Group":{part.text}}}'.encode()
        if part.checked and len(payload) <= MAX_DOCUMENT_BYTES:
            _check(f'{text[:-1]},"Group":{{}}}}'.encode())
        else:
            _check(payload)
            part.checked = True
        return Built(payload, resolved.thing_name, version_id, part.note)

    def _part(self, refs: dict[str, str], resolved: ResolvedGroup) -> _Part:
        key = tuple(sorted((k, v) for k, v in refs.items() if k != _CORE_KEY))
        part = self._parts.get(key)
        if part is None:
            try:
                part = self._make_part(resolved)
            except DefinitionInvalidError as exc:
                part = exc
            self._parts[key] = part
        if isinstance(part, DefinitionInvalidError):
            raise part
        return part

    def _make_part(self, resolved: ResolvedGroup) -> _Part:
        # Checked when the version was created; checked again because definitions can't change
        # but published code can, and it costs nothing next to a deployment.
        validate_group(resolved)
        group = dict(resolved.group)
        group["Functions"] = _fill_code(group["Functions"], self._code)
        try:
            note = plan_logging(group).note
        except DeploymentInvalidError as exc:
            raise DefinitionInvalidError("deployment", exc.problem) from None
        return _Part(json.dumps(group, separators=(",", ":")), note)


def _check(payload: bytes) -> None:
    """Run the core's parser on a document.

    Raises:
        DefinitionInvalidError: The core would refuse it.
    """
    try:
        parse_deployment(payload)
    except DeploymentInvalidError as exc:
        raise DefinitionInvalidError("deployment", exc.problem) from None
