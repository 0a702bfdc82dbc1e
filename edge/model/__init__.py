# SPDX-License-Identifier: Apache-2.0
"""The group model: deployment documents, groups and secret ARNs, as pure validated data.

Nothing here does I/O or touches asyncio; it turns untrusted JSON into frozen dataclasses or a
`DeploymentInvalidError` that names what is wrong.
"""

from __future__ import annotations

from edge.model.arn import SecretArn, parse_secret_arn
from edge.model.deployment import MAX_DOCUMENT_BYTES, Deployment, DeploymentType, parse_deployment
from edge.model.fields import MAX_NESTING_DEPTH
from edge.model.group import (
    CURRENT_LABEL,
    Connector,
    Function,
    Group,
    OtherResource,
    ResourceAccessPolicy,
    SecretResource,
    parse_group,
)

__all__ = [
    "CURRENT_LABEL",
    "MAX_DOCUMENT_BYTES",
    "MAX_NESTING_DEPTH",
    "Connector",
    "Deployment",
    "DeploymentType",
    "Function",
    "Group",
    "OtherResource",
    "ResourceAccessPolicy",
    "SecretArn",
    "SecretResource",
    "parse_deployment",
    "parse_group",
    "parse_secret_arn",
]
