# SPDX-License-Identifier: Apache-2.0
"""Ids, timestamps and ARNs of control-plane objects, in the formats AWS Greengrass V1 uses.

Every object gets a random UUID as its id, as in AWS, and an ARN built from the configured
region and account. Versions are addressed by ARN when a group version names them, so
`parse_version_arn` is strict: an ARN this control plane could not have issued names nothing.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

#: The seven kinds of definition, by the path segment their ARNs use.
DEFINITION_KINDS: Final = (
    "cores",
    "resources",
    "functions",
    "connectors",
    "subscriptions",
    "devices",
    "loggers",
)

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_DEFINITION_VERSION_ARN = re.compile(
    rf"arn:(?P<partition>aws(?:-[a-z]+)*):greengrass:(?P<region>[a-z0-9-]+):(?P<account>[0-9]{{12}})"
    rf":/greengrass/definition/(?P<kind>[a-z]+)/(?P<id>{_UUID})/versions/(?P<version>{_UUID})",
    re.ASCII,
)
# AWS IoT thing names: 1-128 of letters, digits, ":", "_" and "-".
_THING_ARN = re.compile(
    r"arn:aws(?:-[a-z]+)*:iot:[a-z0-9-]+:[0-9]{12}:thing/(?P<name>[A-Za-z0-9:_-]{1,128})",
    re.ASCII,
)
#: A qualified or unqualified Lambda function ARN, as group functions name them.
FUNCTION_ARN = re.compile(
    r"arn:aws(?:-[a-z]+)*:lambda:[a-z0-9-]*:[0-9]{0,12}:function:[A-Za-z0-9_-]{1,140}"
    r"(?::[A-Za-z0-9$_-]{1,128})?",
    re.ASCII,
)
_ACCOUNT = re.compile(r"[0-9]{12}", re.ASCII)


def new_id() -> str:
    """Return a fresh object id: a random UUID, as AWS uses for every Greengrass object."""
    return str(uuid.uuid4())


def timestamp(moment: datetime | None = None) -> str:
    """Return an AWS-style ISO-8601 UTC timestamp with milliseconds ("...T12:00:00.123Z")."""
    value = moment or datetime.now(UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_creations = threading.Lock()
_last_creation = datetime.min.replace(tzinfo=UTC)


def creation_timestamp() -> str:
    """`timestamp()` of now, but at least a millisecond after every one this process made.

    Definitions and groups are listed in creation order, by this time: two created in the same
    millisecond would otherwise come back in either order. Only a burst moves it ahead of the
    clock, by as many milliseconds as the burst has creations.
    """
    global _last_creation  # noqa: PLW0603 - one sequence for the process, under the lock
    with _creations:
        now = datetime.now(UTC)
        whole = now.replace(microsecond=now.microsecond // 1000 * 1000)
        _last_creation = max(whole, _last_creation + timedelta(milliseconds=1))
        return timestamp(_last_creation)


def precise_timestamp(moment: datetime | None = None) -> str:
    """Like `timestamp`, with microseconds: CreatedAt of deployments, which cores compare."""
    value = moment or datetime.now(UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def milliseconds(precise: str) -> str:
    """A `precise_timestamp` cut to milliseconds, as AWS's answers show every timestamp."""
    return timestamp(datetime.fromisoformat(precise))


def is_account_id(text: str) -> bool:
    """Return whether `text` is a 12-digit AWS account id."""
    return _ACCOUNT.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class VersionArn:
    """A parsed definition version ARN."""

    kind: str
    definition_id: str
    version_id: str


@dataclass(frozen=True, slots=True)
class Arns:
    """Builds the ARNs of one control plane (one region and account)."""

    region: str
    account_id: str
    partition: str = "aws"

    @property
    def _base(self) -> str:
        return f"arn:{self.partition}:greengrass:{self.region}:{self.account_id}:/greengrass"

    def definition(self, kind: str, definition_id: str) -> str:
        """ARN of a definition, e.g. `...:/greengrass/definition/resources/{id}`."""
        return f"{self._base}/definition/{kind}/{definition_id}"

    def definition_version(self, kind: str, definition_id: str, version_id: str) -> str:
        """ARN of a definition version: the definition's ARN + `/versions/{version id}`."""
        return f"{self.definition(kind, definition_id)}/versions/{version_id}"

    def group(self, group_id: str) -> str:
        """ARN of a group, `...:/greengrass/groups/{id}`."""
        return f"{self._base}/groups/{group_id}"

    def group_version(self, group_id: str, version_id: str) -> str:
        """ARN of a group version."""
        return f"{self.group(group_id)}/versions/{version_id}"

    def deployment(self, group_id: str, deployment_id: str) -> str:
        """ARN of a deployment, `...:/greengrass/groups/{id}/deployments/{deployment id}`."""
        return f"{self.group(group_id)}/deployments/{deployment_id}"

    def bulk_deployment(self, bulk_deployment_id: str) -> str:
        """ARN of a bulk deployment, `...:/greengrass/bulk/deployments/{id}`."""
        return f"{self._base}/bulk/deployments/{bulk_deployment_id}"


def parse_version_arn(text: str) -> VersionArn | None:
    """Parse a definition version ARN; None if `text` is not one."""
    match = _DEFINITION_VERSION_ARN.fullmatch(text)
    if match is None or match["kind"] not in DEFINITION_KINDS:
        return None
    return VersionArn(kind=match["kind"], definition_id=match["id"], version_id=match["version"])


def thing_name_of(thing_arn: str) -> str | None:
    """Return the thing name of an AWS IoT thing ARN (`arn:aws:iot:r:acct:thing/NAME`), or None."""
    match = _THING_ARN.fullmatch(thing_arn)
    return None if match is None else match["name"]


def is_function_arn(text: str) -> bool:
    """Return whether `text` is a Lambda function ARN (qualified or not)."""
    return FUNCTION_ARN.fullmatch(text) is not None
