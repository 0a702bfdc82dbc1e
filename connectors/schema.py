# SPDX-License-Identifier: Apache-2.0
"""What a built-in connector declares about itself: its name, versions, worker and parameters.

Each connector's package (`connectors/<folder>/__init__.py`) holds one `MANIFEST`. The core
reads it to turn a group's `Connectors[]` entry into a worker (handler, memory, timeout) and to
validate the entry's `Parameters` before anything is fetched or started; the control plane
runs the same check at `create-group-version`. Pure data and pure checks: no I/O, no imports
beyond the standard library, so a manifest costs nothing to load on either side.

Parameters are strings, as in the Greengrass V1 API. A `secret` parameter holds the ARN of a
Secrets Manager secret and comes with a companion `<name>-ResourceId` parameter naming the
group's secret resource of that ARN; the connector is granted read access to exactly the
resources its secret parameters name, and to nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

#: The suffix of the parameter that names a secret parameter's resource (V1's convention).
RESOURCE_ID_SUFFIX: Final = "-ResourceId"

#: V1's own pattern for the IsolationMode parameter that every V1 connector takes. Our
#: connectors always run as a worker process of the core; both values are accepted and mean
#: the same here.
ISOLATION_MODES: Final = ("GreengrassContainer", "NoContainer")


class ParameterError(ValueError):
    """A connector's Parameters break its manifest; `parameter` is the offending name, if one."""

    def __init__(self, parameter: str | None, problem: str) -> None:
        self.parameter = parameter
        self.problem = problem
        super().__init__(f"{parameter}: {problem}" if parameter else problem)


@dataclass(frozen=True, slots=True)
class Parameter:
    """One parameter of a connector.

    Attributes:
        name: The parameter's key in `Parameters`.
        required: Whether a group must set it.
        pattern: A regular expression the whole value must match (`re.fullmatch`), or None.
        choices: The only values allowed, or empty for any.
        secret: The value is a secret ARN; `<name>-ResourceId` names its resource in the group.
        description: One line for people (the README and error messages use it).
    """

    name: str
    required: bool = False
    pattern: str | None = None
    choices: tuple[str, ...] = ()
    secret: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        """Refuse a manifest that could never validate (a typo in a built-in is our bug)."""
        if self.name.endswith(RESOURCE_ID_SUFFIX):
            raise ValueError(f"{self.name}: declare the secret parameter, not its ResourceId")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"{self.name}: bad pattern: {exc}") from None

    @property
    def resource_id_name(self) -> str:
        """The companion parameter naming a secret parameter's resource."""
        return self.name + RESOURCE_ID_SUFFIX

    def problem(self, value: str) -> str | None:
        """Return what is wrong with a value of this parameter, or None if it is valid."""
        if self.choices and value not in self.choices:
            return "must be one of " + ", ".join(self.choices)
        if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
            return f"must match {self.pattern}"
        return None


@dataclass(frozen=True, slots=True)
class ConnectorManifest:
    """A built-in connector: how to run it and what its parameters are.

    Attributes:
        name: The name segment of its ConnectorArn (`arn:aws:greengrass:REGION::/connectors/
            NAME/versions/N`).
        versions: The ConnectorArn versions this code implements (V1 behaviour is the same
            across them for the parameters declared here).
        handler: `module.function` inside the connector's folder, as for a Lambda function.
        memory_kb: The worker's resident memory limit (a Lambda function's MemorySize).
        timeout_seconds: Longest one message may take (a Lambda function's Timeout).
        parameters: Every parameter it accepts; any other name is refused.
        input_topics: Topics it acts on (documentation; subscriptions do the routing).
        output_topics: Topics it publishes on (documentation).
    """

    name: str
    versions: tuple[int, ...]
    handler: str
    memory_kb: int
    timeout_seconds: float
    parameters: tuple[Parameter, ...] = ()
    input_topics: tuple[str, ...] = ()
    output_topics: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        """Refuse duplicate or colliding parameter names."""
        names = [p.name for p in self.parameters]
        names += [p.resource_id_name for p in self.parameters if p.secret]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: parameter names repeat")

    @property
    def secret_parameters(self) -> tuple[Parameter, ...]:
        """The parameters that hold a secret ARN."""
        return tuple(p for p in self.parameters if p.secret)

    def allowed_names(self) -> tuple[str, ...]:
        """Every parameter name a group may set, in declaration order."""
        names: list[str] = []
        for parameter in self.parameters:
            names.append(parameter.name)
            if parameter.secret:
                names.append(parameter.resource_id_name)
        return tuple(names)

    def check(self, parameters: Mapping[str, str]) -> None:
        """Check a group's Parameters against this manifest (names, presence, values).

        Secret parameters are checked for form only here: whether the ResourceId names a
        secret resource of the group with that ARN needs the group (see
        `edge.model.connectors`).

        Raises:
            ParameterError: The first problem found, in declaration order.
        """
        allowed = set(self.allowed_names())
        for name in parameters:
            if name not in allowed:
                raise ParameterError(
                    name,
                    f"is not a parameter of connector {self.name}; it takes "
                    + ", ".join(self.allowed_names()),
                )
        for parameter in self.parameters:
            value = parameters.get(parameter.name)
            if parameter.secret:
                resource_id = parameters.get(parameter.resource_id_name)
                if (value is None) != (resource_id is None):
                    given, missing = (
                        (parameter.name, parameter.resource_id_name)
                        if resource_id is None
                        else (parameter.resource_id_name, parameter.name)
                    )
                    raise ParameterError(missing, f"is required with {given}")
            if value is None:
                if parameter.required:
                    raise ParameterError(parameter.name, f"is required by connector {self.name}")
                continue
            if not parameter.secret:
                problem = parameter.problem(value)
                if problem is not None:
                    raise ParameterError(parameter.name, problem)
