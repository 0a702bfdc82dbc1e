# SPDX-License-Identifier: Apache-2.0
"""The index the IPC answers secret reads from: built once per store change, then only read.

Every answer a caller may get is encoded here ahead of time (as V1's map, as msgpack, and as
the V1 SDK's JSON), so the hot path is two dict lookups and an access check.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from edge.secrets.contents import LocalSecret, SecretVersion, StoreContents


class Reader(Protocol):
    """A function or connector, as far as the index cares: which secrets it may read."""

    @property
    def function_arn(self) -> str:
        """Qualified function ARN."""
        ...

    @property
    def readable_resources(self) -> frozenset[str]:
        """Resource ids of the secrets it may read."""
        ...


class SecretAnswer:
    """One secret version's answer, encoded every way a caller asks for it, once per deployment.

    Attributes:
        resource_id: The secret resource's id in the group.
        audit_ids: (name, resource id, version id), as the audit log records a read.
        result: V1's GetSecretValue answer map (see `secret_answer`).
        packed: `result` as msgpack, spliced into the IPC frame as is.
        v1_result: The answer to the V1 SDK's JSON request: `{"Payload": <result as JSON>}`;
            the compat layer hands the JSON to `greengrasssdk` untouched.
        v1_packed: `v1_result` as msgpack.
    """

    __slots__ = ("audit_ids", "packed", "resource_id", "result", "v1_packed", "v1_result")

    def __init__(self, resource_id: str, result: dict[str, Any]) -> None:
        self.resource_id = resource_id
        self.result = result
        self.audit_ids = (str(result["Name"]), resource_id, str(result["VersionId"]))
        self.packed: bytes = msgpack.packb(result, use_bin_type=True)
        self.v1_result: dict[str, Any] = {"Payload": json.dumps(result).encode()}
        self.v1_packed: bytes = msgpack.packb(self.v1_result, use_bin_type=True)


@dataclass(frozen=True, slots=True)
class SecretIndex:
    """The store's secrets by every id a caller may use, and who may read what."""

    by_id: Mapping[str, LocalSecret] = field(default_factory=dict)
    #: Qualified function ARN -> resource ids it may read.
    grants: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: (resource id, version id) -> the answer, built and encoded once per deployment: the hot
    #: path then only looks up and checks. Shared: nothing downstream mutates an answer.
    answers: Mapping[tuple[str, str], SecretAnswer] = field(default_factory=dict)
    #: The V1 SDK's JSON request bytes -> the arguments they parse to. Workers send the same
    #: few requests over and over, so each is parsed once; bounded, emptied when full.
    v1_requests: dict[bytes, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def build(cls, contents: StoreContents, readers: Iterable[Reader] = ()) -> SecretIndex:
        """Index secrets by name and by ARN (exact strings only: no prefix or pattern tricks)."""
        by_id: dict[str, LocalSecret] = {}
        answers: dict[tuple[str, str], SecretAnswer] = {}
        for secret in contents.secrets.values():
            by_id[secret.name] = secret
            by_id[secret.arn] = secret
            for version in secret.versions.values():
                answers[secret.resource_id, version.version_id] = SecretAnswer(
                    secret.resource_id, secret_answer(secret, version)
                )
        return cls(
            by_id=by_id,
            grants={r.function_arn: r.readable_resources for r in readers},
            answers=answers,
        )


class IndexSource(Protocol):
    """Who holds the index the IPC answers from (`LiveSecrets`, or a `FixedIndex`)."""

    @property
    def index(self) -> SecretIndex:
        """The index to answer from now."""
        ...

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every index swap."""
        ...


@dataclass(frozen=True, slots=True)
class FixedIndex:
    """An index that never changes: serves `CoreServices` without a store (benches, tests)."""

    index: SecretIndex

    def on_change(self, callback: Callable[[], None]) -> None:
        """Never calls `callback`: this index is never swapped."""


def secret_answer(secret: LocalSecret, version: SecretVersion) -> dict[str, Any]:
    """V1's GetSecretValue answer; SecretBinary as base64 text, CreatedDate in ms."""
    answer: dict[str, Any] = {
        "ARN": secret.arn,
        "Name": secret.name,
        "VersionId": version.version_id,
        "VersionStages": list(version.version_stages),
        "CreatedDate": int(version.created_date * 1000),
    }
    if version.secret_string is not None:
        answer["SecretString"] = version.secret_string
    else:
        assert version.secret_binary is not None  # noqa: S101 - SecretVersion guarantees one
        answer["SecretBinary"] = base64.b64encode(version.secret_binary).decode("ascii")
    return answer
