# SPDX-License-Identifier: Apache-2.0
"""Where deployed secret versions come from: the `SecretSource` interface and an in-memory one.

A deployment needs every (secret ARN, staging label) pair its secret resources name:
`AWSCURRENT` always, plus each resource's `AdditionalStagingLabelsToDownload`. A source fetches
them all or raises; the deployment agent never sees half a set. `AwsSecretSource` in
`edge.secrets.fetch` asks Secrets Manager; `StaticSecretSource` here answers from memory with
the same results and the same errors, for tests, demos and offline development.

Incremental fetch. A version of a secret never changes content once created (Secrets Manager
has no operation that rewrites one), so a core that holds a version need not download it
again. `plan_fetch` is the pure part of that decision: given which versions the core holds and
where each staging label points now (DescribeSecret's `VersionIdsToStages`), it says which
pairs are served from what is held and which must still be fetched.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from edge.errors import SecretFetchError, SecretNotFoundError, StagingLabelNotFoundError
from edge.model import CURRENT_LABEL, parse_secret_arn
from edge.secrets.contents import LocalSecret, SecretVersion

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from edge.model import SecretResource
    from edge.secrets.contents import StoreContents

#: The staging label Secrets Manager moves to the newest version; every resource deploys it.
AWSCURRENT: Final = CURRENT_LABEL


@dataclass(frozen=True, slots=True)
class Described:
    """What DescribeSecret says about a secret: its name and where its labels point.

    Attributes:
        name: The secret's name.
        stages: VersionId -> its staging labels (`VersionIdsToStages`).
    """

    name: str
    stages: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def version_of(self, label: str) -> str | None:
        """Return the VersionId the label is on, or None if no version carries it."""
        for version_id, stages in self.stages.items():
            if label in stages:
                return version_id
        return None


@dataclass(frozen=True, slots=True)
class FetchPlan:
    """Which (ARN, label) pairs come from held versions and which must be fetched.

    Attributes:
        reused: ARN -> label -> the held version it points to, with its stages as described.
        missing: ARN -> the labels still to fetch, in the order they were wanted.
    """

    reused: dict[str, dict[str, SecretVersion]]
    missing: dict[str, tuple[str, ...]]


def held_versions(contents: StoreContents | None) -> dict[str, dict[str, SecretVersion]]:
    """Return every version a store holds, by secret ARN then VersionId."""
    held: dict[str, dict[str, SecretVersion]] = {}
    if contents is None:
        return held
    for secret in contents.secrets.values():
        held.setdefault(secret.arn, {}).update(secret.versions)
    return held


def plan_fetch(
    wanted: Mapping[str, Sequence[str]],
    held: Mapping[str, Mapping[str, SecretVersion]],
    described: Mapping[str, Described],
) -> FetchPlan:
    """Decide which wanted pairs are served from held versions (pure; no I/O).

    A pair is reused when DescribeSecret placed its label on a version the core holds; the
    reused version gets the stages DescribeSecret reported (labels move, contents don't).
    Everything else is missing: a secret that wasn't described, a label on a version the
    core lacks, or a label no version carries (the fetch then reports that precisely).

    Args:
        wanted: ARN -> the labels needed.
        held: ARN -> VersionId -> version held.
        described: ARN -> DescribeSecret's answer, for the secrets that were described.

    Returns:
        The plan; every wanted pair is in exactly one of its two maps.
    """
    reused: dict[str, dict[str, SecretVersion]] = {}
    missing: dict[str, tuple[str, ...]] = {}
    for arn, labels in wanted.items():
        answer = described.get(arn)
        have = held.get(arn, {})
        lacking: list[str] = []
        for label in labels:
            version_id = answer.version_of(label) if answer is not None else None
            version = have.get(version_id) if version_id is not None else None
            if answer is None or version is None:
                lacking.append(label)
                continue
            stages = tuple(answer.stages.get(version.version_id, ()))
            if stages != version.version_stages:
                version = dataclasses.replace(version, version_stages=stages)
            reused.setdefault(arn, {})[label] = version
        if lacking:
            missing[arn] = tuple(lacking)
    return FetchPlan(reused=reused, missing=missing)


class SecretSource(Protocol):
    """Where secret versions come from, for the deployment agent and the refresher alike.

    `calls` feeds the metrics. `describe_available` turns false once DescribeSecret was
    refused; a refresh then fetches every pair instead.
    """

    @property
    def calls(self) -> collections.Counter[str]:
        """Requests answered, by the Secrets Manager operation they are."""
        ...

    @property
    def describe_available(self) -> bool:
        """Whether the source can still say where labels point."""
        ...

    async def describe(
        self, arns: Sequence[str], *, pace: Callable[[], Awaitable[None]] | None = None
    ) -> tuple[dict[str, Described], dict[str, SecretFetchError]]:
        """Say where each secret's labels point (DescribeSecret), with errors per secret.

        Args:
            arns: The secrets to describe (duplicates are asked once).
            pace: Awaited before each request (a rate limit).

        Returns:
            ARN -> answer for the secrets described, and ARN -> error for the others.
        """
        ...

    async def fetch(
        self,
        resources: Sequence[SecretResource],
        *,
        held: Mapping[str, Mapping[str, SecretVersion]] | None = None,
        described: Mapping[str, Described] | None = None,
        pace: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, LocalSecret]:
        """Fetch every (ARN, label) pair the resources need, all or nothing.

        Args:
            resources: The group's secret resources; each needs `AWSCURRENT` plus its
                additional labels (`SecretResource.labels`).
            held: Versions the core already holds, by ARN and VersionId; a source may serve
                pairs whose label points to one of them without downloading it again.
            described: DescribeSecret answers already at hand, by ARN; not asked again.
            pace: Awaited before each DescribeSecret request (a rate limit).

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
        #: Calls answered, by the Secrets Manager operation they stand for.
        self.calls: collections.Counter[str] = collections.Counter()
        #: Always true: an in-memory source can always say where labels point.
        self.describe_available = True

    def set_versions(self, key: str, versions: Sequence[SecretVersion]) -> None:
        """Replace a secret's versions, as a rotation in Secrets Manager would."""
        self._secrets[key] = tuple(versions)

    async def describe(
        self,
        arns: Sequence[str],
        *,
        pace: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[dict[str, Described], dict[str, SecretFetchError]]:
        """Say where each secret's labels point; see `AwsSecretSource.describe`."""
        described: dict[str, Described] = {}
        errors: dict[str, SecretFetchError] = {}
        for arn in dict.fromkeys(arns):
            if pace is not None:
                await pace()
            self.calls["DescribeSecret"] += 1
            versions = self._lookup(arn)
            if versions is None:
                errors[arn] = SecretNotFoundError(arn)
                continue
            described[arn] = Described(
                name=_name_of(arn), stages={v.version_id: v.version_stages for v in versions}
            )
        return described, errors

    def _lookup(self, arn: str) -> tuple[SecretVersion, ...] | None:
        versions = self._secrets.get(arn)
        return versions if versions is not None else self._secrets.get(_name_of(arn))

    async def fetch(
        self,
        resources: Sequence[SecretResource],
        *,
        held: Mapping[str, Mapping[str, SecretVersion]] | None = None,
        described: Mapping[str, Described] | None = None,
        pace: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, LocalSecret]:
        """Resolve every resource's labels from memory; see `SecretSource.fetch`.

        Pairs whose label is on a held version (per `described`, when given) count no call.

        Raises:
            SecretNotFoundError: No secret is held under the ARN or its name, or it has no
                `AWSCURRENT` version (Secrets Manager answers ResourceNotFoundException).
            StagingLabelNotFoundError: The secret exists but no version carries a label.
        """
        described = dict(described or {})
        if held:
            # As AwsSecretSource: describe what is held and not yet described.
            unknown = [r.arn for r in resources if held.get(r.arn) and r.arn not in described]
            described.update((await self.describe(unknown, pace=pace))[0])
        out: dict[str, LocalSecret] = {}
        for resource in resources:
            versions = self._lookup(resource.arn)
            if versions is None:
                raise SecretNotFoundError(resource.arn)
            have = (held or {}).get(resource.arn, {})
            answer = described.get(resource.arn)
            by_label: dict[str, SecretVersion] = {}
            for label in resource.labels:
                version_id = answer.version_of(label) if answer is not None else None
                if version_id is None or version_id not in have:
                    self.calls["GetSecretValue"] += 1
                version = next((v for v in versions if label in v.version_stages), None)
                if version is None:
                    if label == AWSCURRENT:
                        raise SecretNotFoundError(resource.arn)
                    raise StagingLabelNotFoundError(resource.arn, label)
                by_label[label] = version
            out[resource.resource_id] = local_secret(resource, resource.secret_name, by_label)
        return out


def _name_of(arn: str) -> str:
    """The secret name in a full secret ARN, or the id itself if it is not one."""
    try:
        return parse_secret_arn(arn).name
    except ValueError:
        return arn
