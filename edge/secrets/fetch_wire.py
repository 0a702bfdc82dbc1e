# SPDX-License-Identifier: Apache-2.0
"""What crosses the pipe between the core and its fetch process, as msgpack-able builtins.

The core never imports botocore: each fetch runs in a short-lived child
(`edge.secrets.fetcher`), and this module is the one both sides agree on. A frame is one
msgpack map; the stream of frames needs no length prefix (msgpack's `Unpacker` splits it).

Errors cross by class name and constructor arguments, from a closed allow-list: a child can
only make the core raise one of the fetch errors it would have raised itself, with the same
attributes (`SecretServiceError.error_code` included), never an arbitrary class.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Final

import msgpack

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
from edge.secrets.contents import LocalSecret, SecretVersion
from edge.secrets.source import Described

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Mapping, Sequence

    from edge.settings import FetchSettings

#: Largest frame either side reads: a Lambda package (250 MB) with room for its envelope.
MAX_FRAME_BYTES: Final = 300 * 1024 * 1024

#: Bytes read from a pipe at a time.
_CHUNK: Final = 1 << 16


class FrameReader:
    """Reads msgpack frames from one pipe, each a map."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream
        self._unpacker = msgpack.Unpacker(max_buffer_size=MAX_FRAME_BYTES)

    async def next(self) -> dict[str, Any]:
        """The next frame.

        Raises:
            EOFError: The pipe closed before a whole frame arrived.
            TypeError: The frame is not a map.
            ValueError: The bytes are not msgpack.
        """
        while True:
            for frame in self._unpacker:
                if not isinstance(frame, dict):
                    raise TypeError("a frame on the fetch pipe is not a map")
                return frame
            chunk = await self._stream.read(_CHUNK)
            if not chunk:
                raise EOFError
            self._unpacker.feed(chunk)


def pack(frame: Mapping[str, Any]) -> bytes:
    """One frame's bytes."""
    data: bytes = msgpack.packb(frame)
    return data


# Each error: how to read its constructor arguments, and how to build it from them.
_ERRORS: Final[dict[str, tuple[type[Exception], Callable[[Any], dict[str, Any]]]]] = {
    "SecretNotFoundError": (SecretNotFoundError, lambda e: {"arn": e.arn}),
    "StagingLabelNotFoundError": (
        StagingLabelNotFoundError,
        lambda e: {"arn": e.arn, "label": e.label},
    ),
    "SecretAccessDeniedError": (
        SecretAccessDeniedError,
        lambda e: {"arn": e.arn, "detail": e.detail},
    ),
    "SecretServiceError": (
        SecretServiceError,
        lambda e: {"arn": e.arn, "detail": e.detail, "error_code": e.error_code},
    ),
    "FetchDeadlineError": (
        FetchDeadlineError,
        lambda e: {"deadline_seconds": e.deadline_seconds, "done": e.done, "total": e.total},
    ),
    "IotCredentialsError": (IotCredentialsError, lambda e: {"problem": e.problem}),
    "CodeFetchError": (
        CodeFetchError,
        lambda e: {"function_arn": e.function_arn, "problem": e.problem},
    ),
}


def error_to_plain(error: Exception) -> dict[str, Any] | None:
    """The error as {"type", "args"}, or None if its exact class is not on the allow-list."""
    entry = _ERRORS.get(type(error).__name__)
    if entry is None or type(error) is not entry[0]:
        return None
    return {"type": type(error).__name__, "args": entry[1](error)}


def error_from_plain(plain: Mapping[str, Any]) -> Exception:
    """Rebuild an allow-listed error.

    Raises:
        ValueError: The class is not on the allow-list, or its arguments don't fit it.
    """
    entry = _ERRORS.get(str(plain.get("type")))
    args = plain.get("args")
    if entry is None or not isinstance(args, dict):
        raise ValueError("the fetch process answered an error that is not a fetch error")
    try:
        return entry[0](**{str(k): v for k, v in args.items()})
    except TypeError as exc:
        raise ValueError("the fetch process answered an error with the wrong arguments") from exc


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
