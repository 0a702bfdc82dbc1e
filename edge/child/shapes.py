# SPDX-License-Identifier: Apache-2.0
"""The typed client's answers (`edge.child.function`), as `TypedDict`s for a function's own types.

Apart from the client, because defining them loads `typing` (about 0.6 MB), which the client
itself never needs: `from edge.child.function import SecretValue` loads this module on first
use, and a worker that only reads secrets (through the typed client or greengrasssdk) never does.
"""

from __future__ import annotations

from datetime import datetime
from typing import NotRequired, TypedDict

__all__ = ["GrantedSecret", "GrantedVersion", "SecretValue"]


class SecretValue(TypedDict):
    """A secret version, as boto3's `get_secret_value` gives it."""

    ARN: str
    Name: str
    VersionId: str
    VersionStages: list[str]
    CreatedDate: datetime
    SecretString: NotRequired[str]
    SecretBinary: NotRequired[bytes]


class GrantedVersion(TypedDict):
    """A version of a granted secret on this core, and the labels the core answers it by."""

    VersionId: str
    VersionStages: list[str]


class GrantedSecret(TypedDict):
    """A secret the calling function may read."""

    ARN: str
    Name: str
    Versions: list[GrantedVersion]
