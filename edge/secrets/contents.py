# SPDX-License-Identifier: Apache-2.0
"""What the local store holds: fetched secret versions and the deployed group, as plain data.

These types are shared by the fetcher (which produces `LocalSecret`s), the store (which seals
`StoreContents`) and everything that serves from it. `to_plain`/`from_plain` convert to and from
the msgpack-able form written inside the encrypted file; `from_plain` validates, because a store
written by a future version or damaged in a way the cipher can't see must fail loudly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from edge.errors import StoreError

#: Version of the plaintext layout inside the encrypted store.
CONTENTS_FORMAT = 1
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class SecretVersion:
    """One version of a secret, exactly as Secrets Manager's GetSecretValue returned it."""

    version_id: str
    version_stages: tuple[str, ...]
    #: Seconds since the epoch (botocore's `CreatedDate` as a POSIX timestamp).
    created_date: float
    secret_string: str | None = None
    secret_binary: bytes | None = None

    def __post_init__(self) -> None:
        """Exactly one of the two value fields is set, as in Secrets Manager's answer."""
        if (self.secret_string is None) == (self.secret_binary is None):
            msg = f"version {self.version_id} must carry exactly one of SecretString, SecretBinary"
            raise ValueError(msg)

    def __repr__(self) -> str:
        """Never show the value: reprs end up in logs and tracebacks."""
        kind = "SecretString" if self.secret_string is not None else "SecretBinary"
        return (
            f"SecretVersion(version_id={self.version_id!r}, "
            f"stages={self.version_stages!r}, {kind}=****)"
        )


@dataclass(frozen=True, slots=True)
class LocalSecret:
    """A deployed secret resource: the labels the group asked for and the versions they name."""

    resource_id: str
    arn: str
    name: str
    #: Staging label -> VersionId, for the labels the group deploys (AWSCURRENT always).
    labels: dict[str, str]
    #: VersionId -> version; several labels may share one version.
    versions: dict[str, SecretVersion]

    def version_for(self, label: str) -> SecretVersion | None:
        """Return the version the staging label points to, or None if it wasn't deployed."""
        version_id = self.labels.get(label)
        return None if version_id is None else self.versions.get(version_id)


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    """Which deployment produced a store, for status and listings."""

    deployment_id: str
    deployment_type: str
    group_id: str
    group_version_id: str
    created_at: str

    def to_plain(self) -> dict[str, str]:
        """The record with AWS's key names, as stored and as listed."""
        return {
            "DeploymentId": self.deployment_id,
            "DeploymentType": self.deployment_type,
            "GroupId": self.group_id,
            "GroupVersionId": self.group_version_id,
            "CreatedAt": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class StoreContents:
    """Everything the core keeps encrypted on disk."""

    deployment: DeploymentRecord | None = None
    #: The deployed `Group` object as received (functions, connectors, policies, subscriptions),
    #: so later parts can serve from it after a restart without the network.
    group: dict[str, Any] = field(default_factory=dict)
    #: Resource id -> secret.
    secrets: dict[str, LocalSecret] = field(default_factory=dict)
    #: Qualified function ARN -> directory its code was unpacked into, so a restarted core
    #: can start its functions again without the network.
    code_dirs: dict[str, str] = field(default_factory=dict)

    def values(self) -> list[str | bytes]:
        """Every secret value held, for redaction of logs and worker output."""
        out: list[str | bytes] = []
        for secret in self.secrets.values():
            for version in secret.versions.values():
                value = (
                    version.secret_string
                    if version.secret_string is not None
                    else version.secret_binary
                )
                if value:
                    out.append(value)
        return out


def to_plain(contents: StoreContents) -> dict[str, Any]:
    """Convert contents to msgpack-able builtins."""
    dep = contents.deployment
    return {
        "format": CONTENTS_FORMAT,
        "deployment": None if dep is None else dep.to_plain(),
        "group": contents.group,
        "code_dirs": contents.code_dirs,
        "secrets": {
            rid: {
                "ARN": s.arn,
                "Name": s.name,
                "Labels": dict(s.labels),
                "Versions": {
                    vid: {
                        "VersionId": v.version_id,
                        "VersionStages": list(v.version_stages),
                        "CreatedDate": v.created_date,
                        "SecretString": v.secret_string,
                        "SecretBinary": v.secret_binary,
                    }
                    for vid, v in s.versions.items()
                },
            }
            for rid, s in contents.secrets.items()
        },
    }


def from_plain(plain: object) -> StoreContents:
    """Rebuild contents from `to_plain`'s form; raise StoreError if the layout is not ours."""
    try:
        return _from_plain(plain)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        msg = f"store contents have an unexpected layout ({type(exc).__name__}: {exc})"
        raise StoreError(msg) from exc


def _from_plain(plain: object) -> StoreContents:
    if not isinstance(plain, dict):
        raise TypeError("top level is not a map")
    if plain.get("format") != CONTENTS_FORMAT:
        msg = f"format {plain.get('format')!r} is not {CONTENTS_FORMAT}"
        raise ValueError(msg)
    dep_plain = plain["deployment"]
    deployment = (
        None
        if dep_plain is None
        else DeploymentRecord(
            deployment_id=str(dep_plain["DeploymentId"]),
            deployment_type=str(dep_plain["DeploymentType"]),
            group_id=str(dep_plain["GroupId"]),
            group_version_id=str(dep_plain["GroupVersionId"]),
            created_at=str(dep_plain["CreatedAt"]),
        )
    )
    group = plain["group"]
    if not isinstance(group, dict):
        raise TypeError("group is not a map")
    secrets: dict[str, LocalSecret] = {}
    for rid, s in plain["secrets"].items():
        versions = {
            str(vid): SecretVersion(
                version_id=str(v["VersionId"]),
                version_stages=tuple(str(x) for x in v["VersionStages"]),
                created_date=float(v["CreatedDate"]),
                secret_string=_optional(v["SecretString"], str),
                secret_binary=_optional(v["SecretBinary"], bytes),
            )
            for vid, v in s["Versions"].items()
        }
        labels = {str(k): str(v) for k, v in s["Labels"].items()}
        for label, vid in labels.items():
            if vid not in versions:
                msg = f"label {label} of {rid} names a version the store lacks"
                raise ValueError(msg)
        secrets[str(rid)] = LocalSecret(
            resource_id=str(rid),
            arn=str(s["ARN"]),
            name=str(s["Name"]),
            labels=labels,
            versions=versions,
        )
    code_dirs = plain.get("code_dirs") or {}
    if not isinstance(code_dirs, dict):
        raise TypeError("code_dirs is not a map")
    return StoreContents(
        deployment=deployment,
        group=group,
        secrets=secrets,
        code_dirs={str(k): str(v) for k, v in code_dirs.items()},
    )


def _optional(value: object, kind: type[_V]) -> _V | None:
    """Check a stored value field's type (None or `kind`)."""
    if value is None or isinstance(value, kind):
        return value
    msg = f"expected {kind.__name__} or nil, found {type(value).__name__}"
    raise TypeError(msg)
