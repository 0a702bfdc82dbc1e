# SPDX-License-Identifier: Apache-2.0
"""A group's connectors as workers: built-in code, checked parameters, narrow secret grants.

A connector runs exactly like a pinned Lambda function: a supervised worker process with its
own token, the same IPC, identity and log masking. Its identity is its ConnectorArn, which is
also what subscriptions name as its Source or Target. Which connectors exist and whether a
group's Parameters fit them is the catalogue's to say (`edge.model.connectors`); this module
turns the connectors it accepts into `FunctionSpec`s. The connector may read exactly the secret
resources its secret parameters name. Its Parameters (ARNs and ids, never values) reach the
worker as one JSON environment variable, so they can't collide with the reserved V1 variables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

from edge.model import Group
from edge.workers.spec import CodeRef, FunctionSpec

#: The worker's environment variable holding the Parameters as JSON (`connectors.kit` reads
#: it; not imported from there, since that module belongs to the worker side).
PARAMETERS_VARIABLE: Final = "EDGE_CONNECTOR_PARAMETERS"


def connector_specs(group: Group) -> tuple[FunctionSpec, ...]:
    """Specs of every connector of a group, or DeploymentInvalidError naming the bad one."""
    if not group.connectors:
        return ()
    # The catalogue (its manifests, their schema) only for a group with connectors: a core
    # whose groups have none doesn't hold it.
    from edge.model.connectors import check_connectors  # noqa: PLC0415

    return tuple(
        FunctionSpec(
            function_id=checked.connector.connector_id,
            function_arn=checked.connector.connector_arn,
            handler=checked.builtin.manifest.handler,
            code=CodeRef(uri=checked.builtin.directory.as_uri()),
            pinned=True,
            timeout_seconds=float(checked.builtin.manifest.timeout_seconds),
            memory_kb=checked.builtin.manifest.memory_kb,
            variables={
                PARAMETERS_VARIABLE: json.dumps(dict(checked.connector.parameters), sort_keys=True)
            },
            readable_resources=checked.grants,
        )
        for checked in check_connectors(group)
    )


def connector_code_dirs(specs: tuple[FunctionSpec, ...]) -> dict[str, Path]:
    """The folder each connector's worker runs from, by ConnectorArn."""
    return {spec.function_arn: Path(unquote(urlsplit(spec.code.uri).path)) for spec in specs}
