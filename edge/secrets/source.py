# SPDX-License-Identifier: Apache-2.0
"""Where deployed secret versions come from: the `SecretSource` interface and an in-memory one.

A deployment needs every (secret ARN, staging label) pair its secret resources name:
`AWSCURRENT` always, plus each resource's `AdditionalStagingLabelsToDownload`. A source fetches
them all or raises; the deployment agent never sees half a set. `AwsSecretSource` in
`edge.secrets.fetch` asks Secrets Manager; `StaticSecretSource` here answers from memory with
the same results and the same errors, for tests, demos and offline development.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

from edge.errors import SecretNotFoundError, StagingLabelNotFoundError
from edge.model import CURRENT_LABEL
from edge.secrets.contents import LocalSecret, SecretVersion

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from edge.model import SecretResource

#: The staging label Secrets Manager moves to the newest version; every resource deploys it.
AWSCURRENT: Final = CURRENT_LABEL


class SecretSource(Protocol):
    """Fetches the secret versions a deployment's secret resources name."""

    async def fetch(self, resources: Sequence[SecretResource]) -> dict[str, LocalSecret]:
        """Fetch every (ARN, label) pair the resources need, all or nothing.

        Args:
            resources: The group's secret resources; each needs `AWSCURRENT` plus its
                additional labels (`SecretResource.labels`).

        Returns:
            One `LocalSecret` per resource, keyed by `resource_id`.

        Raises:
            SecretFetchError: A subclass naming the first pair that could not be fetched; no
                partial result is returned.
        """
        ...


def local_secret(
    resource: SecretResource, name: str, by_label: Mapping[str, SecretVersion]
) -> LocalSecret:
    """Assemble a resource's `LocalSecret` from the version each of its labels points to.

    Several labels may point to one version; it is stored once, under its VersionId.

    Args:
        resource: The secret resource being deployed.
        name: The secret's name as Secrets Manager reports it.
        by_label: The version for each of `resource.labels` (extra entries are ignored).

    Returns:
        The secret as the store keeps it.
    """
    labels: dict[str, str] = {}
    versions: dict[str, SecretVersion] = {}
    for label in resource.labels:
        version = by_label[label]
        labels[label] = version.version_id
        # First answer wins if a rotation moved labels between two answers: either snapshot is
        # a version Secrets Manager really served under that label.
        versions.setdefault(version.version_id, version)
    return LocalSecret(
        resource_id=resource.resource_id,
        arn=resource.arn,
        name=name,
        labels=labels,
        versions=versions,
    )


class StaticSecretSource:
    """An in-memory `SecretSource` with Secrets Manager's semantics and errors.

    A secret is found by the resource's ARN, else by the secret name parsed from it. Each
    staging label resolves to the version whose `version_stages` contains it.
    """

    def __init__(self, secrets: Mapping[str, Sequence[SecretVersion]]) -> None:
        """Hold the versions of each secret.

        Args:
            secrets: Versions keyed by secret ARN or by secret name.

        Raises:
            ValueError: A staging label is attached to two versions of one secret, which
                Secrets Manager never allows.
        """
        self._secrets: dict[str, tuple[SecretVersion, ...]] = {}
        for key, versions in secrets.items():
            seen: dict[str, str] = {}
            for version in versions:
                for stage in version.version_stages:
                    if seen.setdefault(stage, version.version_id) != version.version_id:
                        msg = f"secret {key}: staging label {stage!r} is on two versions"
                        raise ValueError(msg)
            self._secrets[key] = tuple(versions)

    async def fetch(self, resources: Sequence[SecretResource]) -> dict[str, LocalSecret]:
        """Resolve every resource's labels from memory; see `SecretSource.fetch`.

        Raises:
            SecretNotFoundError: No secret is held under the ARN or its name, or it has no
                `AWSCURRENT` version (Secrets Manager answers ResourceNotFoundException).
            StagingLabelNotFoundError: The secret exists but no version carries a label.
        """
        out: dict[str, LocalSecret] = {}
        for resource in resources:
            versions = self._secrets.get(resource.arn)
            if versions is None:
                versions = self._secrets.get(resource.secret_name)
            if versions is None:
                raise SecretNotFoundError(resource.arn)
            by_label: dict[str, SecretVersion] = {}
            for label in resource.labels:
                version = next((v for v in versions if label in v.version_stages), None)
                if version is None:
                    if label == AWSCURRENT:
                        raise SecretNotFoundError(resource.arn)
                    raise StagingLabelNotFoundError(resource.arn, label)
                by_label[label] = version
            out[resource.resource_id] = local_secret(resource, resource.secret_name, by_label)
        return out
