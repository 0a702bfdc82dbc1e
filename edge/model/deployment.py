# SPDX-License-Identifier: Apache-2.0
"""Deployment documents: the JSON a core receives to deploy, redeploy or reset its group.

`parse_deployment` is the only way untrusted bytes from the cloud become a `Deployment`. It
bounds everything before it trusts anything: the size, the UTF-8, the JSON (nesting, repeated
keys, NaN), then each field. Whatever is wrong, the caller gets a `DeploymentInvalidError`,
with `deployment_id` set whenever the document carried a usable one so that the core can
publish a Failure status for that deployment instead of only logging the rejection.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from edge.errors import DeploymentInvalidError
from edge.model.fields import (
    ID_PATTERN,
    Where,
    as_object,
    get_identifier,
    get_string,
    kind,
    quoted,
)
from edge.model.group import Group, parse_group

#: Largest deployment document accepted, in bytes of UTF-8. A real V1 group is a few KiB, and
#: even one at V1's quotas (hundreds of functions, resources and subscriptions) stays well under
#: 1 MiB, while 1 MiB parsed into Python objects (several times that in memory) is still harmless
#: on a small device. AWS IoT's broker already caps an MQTT message at 128 KiB, but documents
#: can also come from a file or the local CLI, so this bound is our own.
MAX_DOCUMENT_BYTES: Final = 1024 * 1024

#: Longest CreatedAt accepted. An ISO-8601 timestamp with microseconds and an offset is 32
#: characters; anything much longer is not a timestamp.
MAX_CREATED_AT_LENGTH: Final = 64

_ROOT = Where()


class DeploymentType(enum.StrEnum):
    """What a deployment asks the core to do, as the V1 DeploymentType names it."""

    NEW = "NewDeployment"
    REDEPLOY = "Redeployment"
    RESET = "ResetDeployment"


@dataclass(frozen=True, slots=True)
class Deployment:
    """A validated deployment document."""

    deployment_id: str
    deployment_type: DeploymentType
    group_id: str
    group_version_id: str
    #: ISO-8601, as the document gave it (checked to parse).
    created_at: str
    group: Group
    #: The "Group" object as received (empty for a ResetDeployment without one), kept so the
    #: store can persist exactly what was deployed.
    raw_group: dict[str, Any] = field(hash=False)


def parse_deployment(payload: bytes | str) -> Deployment:
    """Validate a deployment document and build a `Deployment`.

    Args:
        payload: The document: UTF-8 JSON, as bytes or already-decoded text.

    Returns:
        The deployment, with its group validated by `parse_group`.

    Raises:
        DeploymentInvalidError: The document is too large, not UTF-8, not JSON, or breaks a
            rule; the message names the offending field or entry. Its `deployment_id` is set
            whenever the document carried a usable DeploymentId, whatever else is wrong.
    """
    text = _decode(payload)
    # Keys that appear twice in one object. json keeps the last silently; we refuse the
    # document, since two readers of it could disagree about what it says. Collected rather
    # than raised at once so the error can still carry the DeploymentId (unless that is the key
    # repeated, at whatever level: we don't know where, so we don't trust it).
    repeated: list[str] = []
    try:
        document = json.loads(
            text,
            object_pairs_hook=lambda pairs: _unique_object(pairs, repeated),
            parse_constant=_refuse_constant,
        )
    except RecursionError:
        # The C scanner recurses once per nesting level, so a document of "[[[[..." raises
        # this; callers handle only DeploymentInvalidError, so it must not escape.
        raise DeploymentInvalidError("the document is nested too deeply to parse") from None
    except ValueError as exc:
        # JSONDecodeError's message gives only a position, never the document's text.
        raise DeploymentInvalidError(f"the document is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise DeploymentInvalidError(f"the document must be a JSON object, not {kind(document)}")
    deployment_id = None if "DeploymentId" in repeated else _usable_id(document.get("DeploymentId"))
    try:
        return _build(document, repeated)
    except DeploymentInvalidError as exc:
        exc.deployment_id = deployment_id
        raise


def _decode(payload: bytes | str) -> str:
    """Check the size and encoding of a payload and return its text."""
    if isinstance(payload, str):
        # Cheap bound first: a character is at least one byte.
        if len(payload) > MAX_DOCUMENT_BYTES:
            raise _too_large(len(payload), "characters")
        try:
            size = len(payload.encode("utf-8"))
        except UnicodeEncodeError:
            raise DeploymentInvalidError(
                "the document is not valid Unicode text (it holds a lone surrogate)"
            ) from None
        if size > MAX_DOCUMENT_BYTES:
            raise _too_large(size, "bytes")
        return payload
    if isinstance(payload, bytes | bytearray):
        if len(payload) > MAX_DOCUMENT_BYTES:
            raise _too_large(len(payload), "bytes")
        try:
            # Strict UTF-8: json.loads would otherwise guess UTF-16/32 from bytes.
            return payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DeploymentInvalidError(
                f"the document is not UTF-8 (invalid byte at offset {exc.start})"
            ) from None
    raise DeploymentInvalidError(f"the payload must be bytes or str, not {type(payload).__name__}")


def _too_large(size: int, unit: str) -> DeploymentInvalidError:
    """Build the error for an oversized document."""
    return DeploymentInvalidError(
        f"the document is {size} {unit}, more than the {MAX_DOCUMENT_BYTES} bytes allowed"
    )


def _unique_object(pairs: list[tuple[str, Any]], repeated: list[str]) -> dict[str, Any]:
    """Build a JSON object, noting keys that appear more than once in it."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                repeated.append(key)
            seen.add(key)
    return result


def _refuse_constant(name: str) -> None:
    """Refuse NaN and Infinity, which Python's json accepts but JSON does not have."""
    msg = f"{name} is not a JSON value"
    raise ValueError(msg)


def _usable_id(value: object) -> str | None:
    """Return a DeploymentId that is safe to report a status for, or None."""
    # Only an id matching the Greengrass id pattern: it goes into MQTT topics, where "/", "+"
    # or "#" would address another deployment, or a wildcard.
    if isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None:
        return value
    return None


def _build(document: dict[str, Any], repeated: list[str]) -> Deployment:
    """Check the top-level fields and the group of a parsed document."""
    if repeated:
        raise DeploymentInvalidError(
            f"key {quoted(repeated[0])} appears twice in one object; JSON keys must be unique"
        )
    deployment_id = get_identifier(document, "DeploymentId", _ROOT)
    type_text = get_string(document, "DeploymentType", _ROOT)
    try:
        deployment_type = DeploymentType(type_text)
    except ValueError:
        allowed = ", ".join(member.value for member in DeploymentType)
        raise _ROOT.at("DeploymentType").error(
            f"{quoted(type_text)} is not one of {allowed}"
        ) from None
    group_id = get_identifier(document, "GroupId", _ROOT)
    group_version_id = get_identifier(document, "GroupVersionId", _ROOT)
    created_at = _get_created_at(document)
    raw_group = _get_raw_group(document, deployment_type)
    return Deployment(
        deployment_id=deployment_id,
        deployment_type=deployment_type,
        group_id=group_id,
        group_version_id=group_version_id,
        created_at=created_at,
        group=parse_group(raw_group),
        raw_group=raw_group,
    )


def _get_created_at(document: dict[str, Any]) -> str:
    """Return CreatedAt, checked to be an ISO-8601 timestamp."""
    created_at = get_string(document, "CreatedAt", _ROOT)
    where = _ROOT.at("CreatedAt")
    if len(created_at) > MAX_CREATED_AT_LENGTH:
        raise where.error(f"is longer than {MAX_CREATED_AT_LENGTH} characters")
    try:
        datetime.fromisoformat(created_at)
    except (ValueError, OverflowError):
        raise where.error(f"{quoted(created_at)} is not an ISO-8601 timestamp") from None
    return created_at


def _get_raw_group(document: dict[str, Any], deployment_type: DeploymentType) -> dict[str, Any]:
    """Return the "Group" object; only a ResetDeployment may omit it (or send null)."""
    value = document.get("Group")
    if value is None and deployment_type is DeploymentType.RESET:
        # A reset removes the group from the core; there is nothing to describe.
        return {}
    if "Group" not in document:
        raise _ROOT.at("Group").error(f"is missing; a {deployment_type.value} must carry one")
    return as_object(value, _ROOT.at("Group"))
