# SPDX-License-Identifier: Apache-2.0
"""The connector catalogue: which connectors a group may name, and whether its Parameters fit.

A connector's identity is its ConnectorArn (`arn:aws:greengrass:REGION::/connectors/NAME/
versions/N`). Its code is built in: the package in `connectors/` whose `MANIFEST` has that NAME
and lists that version. `check_connectors` reads a group's `Connectors[]` against those
manifests, refusing, with a `DeploymentInvalidError` that names the entry, an unknown connector
or version, a second version of the same connector, and Parameters that break the manifest: an
unknown or missing parameter, a value of the wrong form, a secret parameter whose `-ResourceId`
doesn't name the group's secret resource of that ARN. It returns, for each connector, the secret
resources its secret parameters name: exactly those it may read.

Both sides read this: the control plane when a group version is created, the core
(`edge.workers.connectors`) when it turns a deployment's connectors into workers. Pure apart
from importing the manifests once.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import connectors
from connectors.schema import ConnectorManifest, ParameterError
from edge.model.fields import Where, quoted
from edge.model.group import Connector, Group

# V1's connector ARNs: `arn:aws:greengrass:us-west-2::/connectors/TwilioNotifications/versions/4`
# (no account: connectors are AWS's). Used with fullmatch.
_CONNECTOR_ARN: Final = re.compile(
    r"arn:(aws[a-z-]*):greengrass:([a-z0-9-]*)::/connectors/([A-Za-z0-9_-]{1,128})"
    r"/versions/([0-9]{1,9})"
)


@dataclass(frozen=True, slots=True)
class ConnectorArn:
    """The parts of a connector ARN."""

    partition: str
    region: str
    name: str
    version: int


def parse_connector_arn(arn: str) -> ConnectorArn | None:
    """Parse `arn:PARTITION:greengrass:REGION::/connectors/NAME/versions/N`, or return None."""
    match = _CONNECTOR_ARN.fullmatch(arn)
    if match is None:
        return None
    partition, region, name, version = match.groups()
    return ConnectorArn(partition=partition, region=region, name=name, version=int(version))


@dataclass(frozen=True, slots=True)
class BuiltinConnector:
    """A connector this core can run: its manifest and the folder its worker runs from."""

    manifest: ConnectorManifest
    directory: Path


@dataclass(frozen=True, slots=True)
class CheckedConnector:
    """A group's connector whose ARN and Parameters fit a built-in one."""

    connector: Connector
    builtin: BuiltinConnector
    #: The secret resources its secret parameters name: the only ones it may read.
    grants: frozenset[str]


@functools.cache
def builtin_connectors() -> Mapping[str, BuiltinConnector]:
    """Every built-in connector by name: the packages of `connectors` that have a MANIFEST.

    Raises:
        ValueError: Two packages declare the same name (a bug in this repository).
    """
    found: dict[str, BuiltinConnector] = {}
    for module in sorted(pkgutil.iter_modules(connectors.__path__), key=lambda m: m.name):
        if not module.ispkg:
            continue
        package = importlib.import_module(f"{connectors.__name__}.{module.name}")
        manifest = getattr(package, "MANIFEST", None)
        if not isinstance(manifest, ConnectorManifest) or package.__file__ is None:
            continue
        if manifest.name in found:
            raise ValueError(f"two built-in connectors are named {manifest.name}")
        found[manifest.name] = BuiltinConnector(manifest, Path(package.__file__).resolve().parent)
    return found


def check_connectors(group: Group) -> tuple[CheckedConnector, ...]:
    """Check every connector of a group, or raise DeploymentInvalidError naming the bad one."""
    checked: list[CheckedConnector] = []
    seen: dict[str, str] = {}  # connector name -> entry label, for the one-version rule
    for index, connector in enumerate(group.connectors):
        where = Where(f"Connectors[{index}] (Id {quoted(connector.connector_id)})")
        builtin = _builtin(connector, where)
        name = builtin.manifest.name
        first = seen.get(name)
        if first is not None:
            # V1's rule (a group holds only one version of a connector at a time); here it
            # also keeps identities (ConnectorArns) and status topics unambiguous.
            raise where.at("ConnectorArn").error(
                f"is another {name} connector, like {first}; a group may hold one version of "
                f"a connector"
            )
        seen[name] = where.entry
        grants = _check_parameters(builtin.manifest, connector, group, where.at("Parameters"))
        checked.append(CheckedConnector(connector, builtin, grants))
    return tuple(checked)


def _builtin(connector: Connector, where: Where) -> BuiltinConnector:
    arn_where = where.at("ConnectorArn")
    arn = parse_connector_arn(connector.connector_arn)
    if arn is None:
        raise arn_where.error(
            f"{quoted(connector.connector_arn)} is not a connector ARN "
            f"(arn:aws:greengrass:REGION::/connectors/NAME/versions/N)"
        )
    available = builtin_connectors()
    builtin = available.get(arn.name)
    if builtin is None:
        known = ", ".join(
            f"{name} (versions {_versions(b.manifest)})" for name, b in sorted(available.items())
        )
        raise arn_where.error(
            f"names connector {quoted(arn.name)}, which is not built into this core; it has {known}"
        )
    if arn.version not in builtin.manifest.versions:
        raise arn_where.error(
            f"names version {arn.version} of {arn.name}; this core has versions "
            f"{_versions(builtin.manifest)}"
        )
    return builtin


def _versions(manifest: ConnectorManifest) -> str:
    return ", ".join(str(v) for v in manifest.versions)


def _check_parameters(
    manifest: ConnectorManifest, connector: Connector, group: Group, where: Where
) -> frozenset[str]:
    """Check Parameters against the manifest and the group; return the resources to grant."""
    try:
        manifest.check(connector.parameters)
    except ParameterError as exc:
        place = where.member(exc.parameter) if exc.parameter else where
        raise place.error(exc.problem) from None
    grants: set[str] = set()
    for parameter in manifest.secret_parameters:
        resource_id = connector.parameters.get(parameter.resource_id_name)
        if resource_id is None:
            continue  # an optional secret the group didn't set (check() saw the pair is whole)
        resource = group.secret(resource_id)
        if resource is None:
            # The model checked that the id names *a* resource; a device or volume won't do.
            raise where.member(parameter.resource_id_name).error(
                f"{quoted(resource_id)} is not a secret resource of the group; "
                f"{parameter.name} needs one"
            )
        if connector.parameters[parameter.name] != resource.arn:
            # The model checks this pairing too; kept so the grant never rests on another file.
            raise where.member(parameter.name).error(
                f"is not the ARN of resource {quoted(resource_id)} ({quoted(resource.arn)})"
            )
        grants.add(resource_id)
    return frozenset(grants)
