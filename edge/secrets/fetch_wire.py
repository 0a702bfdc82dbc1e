# SPDX-License-Identifier: Apache-2.0
"""What crosses the pipe between the core and its fetch process, as msgpack-able builtins.

The core never imports botocore: each fetch runs in a short-lived child
(`edge.secrets.fetcher`), and this module is the one both sides agree on, over the frames of
`edge.oneshot.wire`. Errors cross from a closed allow-list (`ERRORS`): a child can only make
the core raise one of the fetch errors it would have raised itself, with the same attributes
(`SecretServiceError.error_code` included), never an arbitrary class.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Final

from edge.errors import (
    CodeFetchError,
    FetchDeadlineError,
    IotCredentialsError,
    SecretAccessDeniedError,
    SecretNotFoundError,
    SecretServiceError,
    StagingLabelNotFoundError,
)
from edge.model import SecretResource
from edge.oneshot.wire import ErrorTable, by_fields
from edge.secrets.contents import LocalSecret, SecretVersion
from edge.secrets.source import Described

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from edge.settings import FetchSettings

#: The errors a fetch child may answer: those the core would raise fetching in-process.
ERRORS: Final = ErrorTable(
    "the fetch process",
    {
        SecretNotFoundError: by_fields(SecretNotFoundError, "arn"),
        StagingLabelNotFoundError: by_fields(StagingLabelNotFoundError, "arn", "label"),
        SecretAccessDeniedError: by_fields(SecretAccessDeniedError, "arn", "detail"),
        SecretServiceError: by_fields(SecretServiceError, "arn", "detail", "error_code"),
        FetchDeadlineError: by_fields(FetchDeadlineError, "deadline_seconds", "done", "total"),
        IotCredentialsError: by_fields(IotCredentialsError, "problem"),
        CodeFetchError: by_fields(CodeFetchError, "function_arn", "problem"),
    },
)
#: The error as {"type", "args"}, or None if its exact class is not on `ERRORS`.
error_to_plain = ERRORS.to_plain
#: Rebuild an error on `ERRORS`; ValueError for any other.
error_from_plain = ERRORS.from_plain


def settings_to_plain(settings: FetchSettings) -> dict[str, Any]:
    """`[fetch]` settings as a map."""
    return dataclasses.asdict(settings)


def resources_to_plain(resources: Sequence[SecretResource]) -> list[dict[str, Any]]:
    """Secret resources as maps."""
    return [
        {
            "resource_id": r.resource_id,
            "name": r.name,
            "arn": r.arn,
            "additional_labels": list(r.additional_labels),
        }
        for r in resources
    ]


def resources_from_plain(plain: Sequence[Mapping[str, Any]]) -> list[SecretResource]:
    """Rebuild secret resources."""
    return [
        SecretResource(
            resource_id=str(r["resource_id"]),
            name=str(r["name"]),
            arn=str(r["arn"]),
            additional_labels=tuple(str(x) for x in r["additional_labels"]),
        )
        for r in plain
    ]


def version_to_plain(v: SecretVersion) -> dict[str, Any]:
    """One version, value included (the pipe is the only place it goes)."""
    return {
        "id": v.version_id,
        "stages": list(v.version_stages),
        "created": v.created_date,
        "string": v.secret_string,
        "binary": v.secret_binary,
    }


def version_from_plain(v: Mapping[str, Any]) -> SecretVersion:
    """Rebuild one version."""
    string, binary = v["string"], v["binary"]
    return SecretVersion(
        version_id=str(v["id"]),
        version_stages=tuple(str(s) for s in v["stages"]),
        created_date=float(v["created"]),
        secret_string=None if string is None else str(string),
        secret_binary=None if binary is None else bytes(binary),
    )


def held_to_plain(
    held: Mapping[str, Mapping[str, SecretVersion]] | None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """ARN -> VersionId -> version held."""
    return {
        arn: {vid: version_to_plain(v) for vid, v in versions.items()}
        for arn, versions in (held or {}).items()
    }


def held_from_plain(plain: Mapping[str, Any]) -> dict[str, dict[str, SecretVersion]]:
    """Rebuild `held_to_plain`'s map."""
    return {
        str(arn): {str(vid): version_from_plain(v) for vid, v in versions.items()}
        for arn, versions in plain.items()
    }


def described_to_plain(described: Mapping[str, Described] | None) -> dict[str, Any]:
    """ARN -> DescribeSecret's answer."""
    return {
        arn: {"name": d.name, "stages": {vid: list(s) for vid, s in d.stages.items()}}
        for arn, d in (described or {}).items()
    }


def described_from_plain(plain: Mapping[str, Any]) -> dict[str, Described]:
    """Rebuild `described_to_plain`'s map."""
    return {
        str(arn): Described(
            name=str(d["name"]),
            stages={str(vid): tuple(str(s) for s in st) for vid, st in d["stages"].items()},
        )
        for arn, d in plain.items()
    }


def secrets_to_plain(secrets: Mapping[str, LocalSecret]) -> dict[str, Any]:
    """resource_id -> a fetched secret."""
    return {
        rid: {
            "arn": s.arn,
            "name": s.name,
            "labels": dict(s.labels),
            "versions": {vid: version_to_plain(v) for vid, v in s.versions.items()},
        }
        for rid, s in secrets.items()
    }


def secrets_from_plain(plain: Mapping[str, Any]) -> dict[str, LocalSecret]:
    """Rebuild `secrets_to_plain`'s map."""
    return {
        str(rid): LocalSecret(
            resource_id=str(rid),
            arn=str(s["arn"]),
            name=str(s["name"]),
            labels={str(k): str(v) for k, v in s["labels"].items()},
            versions={str(vid): version_from_plain(v) for vid, v in s["versions"].items()},
        )
        for rid, s in plain.items()
    }
