# SPDX-License-Identifier: Apache-2.0
"""A Greengrass V1 group as the core sees it: resources, functions, connectors, subscriptions.

`parse_group` turns the "Group" object of a deployment document into frozen dataclasses and
enforces the rules Greengrass V1 enforces in the cloud before a deployment ever reaches a core:
ids are unique, a secret is referenced only once per group, functions only get read-only access
to secrets, and whatever references a resource names one that exists. We check them again here
because the document arrives over MQTT, and a core that trusted it would hand a secret to a
function that was never granted it.

Only secret resources are acted on. The other V1 resource types (local devices and volumes,
machine-learning models) are kept as `OtherResource` so that ids resolve and nothing is lost.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from edge.model.arn import SecretArn, parse_secret_arn
from edge.model.fields import (
    Where,
    as_object,
    check_string,
    check_tree,
    entry_label,
    get_array,
    get_identifier,
    get_object,
    get_string,
    get_string_map,
    kind,
    quoted,
    require,
)

#: The staging label Secrets Manager gives the newest version; every secret resource deploys it.
CURRENT_LABEL: Final = "AWSCURRENT"

#: Secrets Manager's limit on a staging label's length ("Minimum length of 1. Maximum 256").
MAX_LABEL_LENGTH = 256

#: The ResourceDataContainer key of a secret resource.
SECRET_CONTAINER: Final = "SecretsManagerSecretResourceData"  # noqa: S105 - a JSON key

#: The other ResourceDataContainer keys of the V1 API. We keep these resources but don't act on
#: them; any other key is rejected, since V1 will never grow another.
OTHER_CONTAINERS: Final = frozenset(
    {
        "LocalDeviceResourceData",
        "LocalVolumeResourceData",
        "S3MachineLearningModelResourceData",
        "SageMakerMachineLearningModelResourceData",
    }
)

#: Connector parameters ending with this name a resource of the group; the parameter without
#: the suffix, when present, holds what the resource is (for secrets, its ARN).
RESOURCE_ID_SUFFIX: Final = "-ResourceId"

#: The two permissions of a ResourceAccessPolicy; secret resources allow only "ro".
PERMISSIONS: Final = ("ro", "rw")


@dataclass(frozen=True, slots=True)
class SecretResource:
    """A secret resource: a reference, by full ARN, to a Secrets Manager secret.

    Raises:
        ValueError: `arn` is not a full secret ARN.
    """

    resource_id: str
    name: str
    arn: str
    additional_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Refuse an unparsable ARN now rather than in `secret_name` later."""
        parse_secret_arn(self.arn)

    @property
    def labels(self) -> tuple[str, ...]:
        """The staging labels to deploy: AWSCURRENT, then the additional ones, without repeats."""
        # dict keeps first-seen order, so this dedupes without reordering.
        return tuple(dict.fromkeys((CURRENT_LABEL, *self.additional_labels)))

    @property
    def secret_arn(self) -> SecretArn:
        """The parsed ARN."""
        return parse_secret_arn(self.arn)

    @property
    def secret_name(self) -> str:
        """The secret's name, as a Lambda function may pass it to get_secret_value."""
        return self.secret_arn.name


@dataclass(frozen=True, slots=True)
class OtherResource:
    """A V1 resource of another type, kept so ids resolve; `kind` is its container key."""

    resource_id: str
    name: str
    kind: str


@dataclass(frozen=True, slots=True)
class ResourceAccessPolicy:
    """A function's access to one resource: permission "ro" or "rw"."""

    resource_id: str
    permission: str


@dataclass(frozen=True, slots=True)
class Function:
    """A Lambda function of the group and the resources it was granted.

    `raw` is the function's whole JSON object, copied out of the document, with every key of
    FunctionConfiguration kept (Handler, Pinned, Timeout, ... are read by later features).
    """

    function_id: str
    function_arn: str
    access_policies: tuple[ResourceAccessPolicy, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def may_read(self, resource_id: str) -> bool:
        """Return whether the function was granted access ("ro" or "rw") to the resource."""
        return any(policy.resource_id == resource_id for policy in self.access_policies)


@dataclass(frozen=True, slots=True)
class Connector:
    """A connector of the group, with its parameters (all strings, as in the V1 API)."""

    connector_id: str
    connector_arn: str
    parameters: Mapping[str, str] = field(default_factory=dict, hash=False)

    def secret_resource_ids(self) -> tuple[str, ...]:
        """Return the values of the `...-ResourceId` parameters, in order, without repeats.

        Some V1 connectors name non-secret resources this way too (the Modbus-RTU adapter's
        `ModbusSerialPort-ResourceId` is a local device); `Group.connector_secrets` keeps only
        the secret ones.
        """
        return tuple(
            dict.fromkeys(
                value
                for name, value in self.parameters.items()
                if name.endswith(RESOURCE_ID_SUFFIX)
            )
        )


@dataclass(frozen=True, slots=True)
class Group:
    """A validated group; `Group()` is the empty group a ResetDeployment leaves behind."""

    secret_resources: tuple[SecretResource, ...] = ()
    other_resources: tuple[OtherResource, ...] = ()
    functions: tuple[Function, ...] = ()
    connectors: tuple[Connector, ...] = ()
    subscriptions: tuple[Mapping[str, Any], ...] = field(default=(), hash=False)

    def secret(self, resource_id: str) -> SecretResource | None:
        """Return the secret resource with this id, or None if there is none."""
        # A linear scan: groups hold a handful of resources, and it keeps the class plain data.
        for resource in self.secret_resources:
            if resource.resource_id == resource_id:
                return resource
        return None

    def connector_secrets(self, connector: Connector) -> tuple[SecretResource, ...]:
        """Return the secret resources a connector's `...-ResourceId` parameters name."""
        found = (self.secret(resource_id) for resource_id in connector.secret_resource_ids())
        return tuple(resource for resource in found if resource is not None)


def parse_group(obj: object) -> Group:
    """Validate the "Group" object of a deployment document and build a `Group`.

    Lists that are absent are empty. Unknown keys (V1's Cores, Devices, Loggers, ...) are
    allowed and ignored; they stay in the raw document the caller keeps.

    Args:
        obj: The parsed JSON value of "Group".

    Returns:
        The group. Functions' `raw` and the subscriptions are deep copies, independent of `obj`.

    Raises:
        DeploymentInvalidError: A rule is broken; the message names the offending entry, such
            as `Resources[2] (Id "my-res")`. `deployment_id` is left unset for the caller.
    """
    group = as_object(obj, Where("Group"))
    _check_plain_json(group)
    resources = _parse_resources(group)
    functions = _parse_functions(group, resources)
    connectors = _parse_connectors(group, resources)
    subscriptions = _parse_subscriptions(group)
    return Group(
        secret_resources=tuple(r for r in resources.values() if isinstance(r, SecretResource)),
        other_resources=tuple(r for r in resources.values() if isinstance(r, OtherResource)),
        functions=functions,
        connectors=connectors,
        subscriptions=subscriptions,
    )


def _check_plain_json(group: dict[str, Any]) -> None:
    """Check the whole group is bounded, storable JSON data before anything copies it."""
    for key, value in group.items():
        if not isinstance(key, str):
            raise Where("Group").error(f"has a key that is {kind(key)}, not a string")
        if isinstance(value, list):
            # Check entry by entry so that a problem is reported against the entry.
            for index, item in enumerate(value):
                check_tree(item, Where(entry_label(key, index, item)), depth=3)
        else:
            check_tree(value, Where("Group").at(key), depth=2)


# --- resources -------------------------------------------------------------------------------


def _parse_resources(group: dict[str, Any]) -> dict[str, SecretResource | OtherResource]:
    """Parse Resources into a dict by id, in document order."""
    resources: dict[str, SecretResource | OtherResource] = {}
    labels: dict[str, str] = {}  # resource id -> entry label, for duplicate messages
    # Secret identity -> entry label: "you can reference a secret only once per group".
    secrets: dict[tuple[str, str, str, str], str] = {}
    for index, item in enumerate(get_array(group, "Resources", Where("Group"))):
        where = Where(entry_label("Resources", index, item))
        resource = _parse_resource(item, where)
        first = labels.get(resource.resource_id)
        if first is not None:
            raise where.at("Id").error(f"is also the Id of {first}; resource ids must be unique")
        if isinstance(resource, SecretResource):
            identity = resource.secret_arn.identity
            first = secrets.get(identity)
            if first is not None:
                raise where.error(
                    f"references secret {quoted(identity[3])}, which {first} already "
                    f"references; a group may reference a secret only once"
                )
            secrets[identity] = where.entry
        labels[resource.resource_id] = where.entry
        resources[resource.resource_id] = resource
    return resources


def _parse_resource(item: object, where: Where) -> SecretResource | OtherResource:
    """Parse one entry of Resources."""
    entry = as_object(item, where)
    resource_id = get_identifier(entry, "Id", where)
    name = _get_name(entry, where)
    container_where = where.at("ResourceDataContainer")
    container = as_object(require(entry, "ResourceDataContainer", where), container_where)
    # The V1 API models the resource type as a union: exactly one key says what it is.
    if len(container) != 1:
        raise container_where.error(
            f"must have exactly one key, the resource type; it has {len(container)}"
        )
    ((container_key, data),) = container.items()
    data_where = container_where.at(container_key)
    if container_key == SECRET_CONTAINER:
        arn, labels = _parse_secret_data(as_object(data, data_where), data_where)
        return SecretResource(resource_id=resource_id, name=name, arn=arn, additional_labels=labels)
    if container_key in OTHER_CONTAINERS:
        as_object(data, data_where)
        return OtherResource(resource_id=resource_id, name=name, kind=container_key)
    known = ", ".join(sorted((SECRET_CONTAINER, *OTHER_CONTAINERS)))
    raise container_where.error(
        f"has unknown resource type {quoted(container_key)}; expected one of {known}"
    )


def _get_name(entry: dict[str, Any], where: Where) -> str:
    """Return a resource's display Name: a printable string of at most 128 characters."""
    # The V1 API also limits Name to [a-zA-Z0-9:_-]; we only insist on what could break logs,
    # since nothing here uses the name and being stricter than needed would reject groups.
    name = get_string(entry, "Name", where)
    if len(name) > 128 or not name.isprintable():  # noqa: PLR2004 - the API's own limit
        raise where.at("Name").error("must be at most 128 printable characters")
    return name


def _parse_secret_data(data: dict[str, Any], where: Where) -> tuple[str, tuple[str, ...]]:
    """Parse SecretsManagerSecretResourceData into its ARN and additional staging labels."""
    arn = get_string(data, "ARN", where)
    try:
        parse_secret_arn(arn)
    except ValueError as exc:
        raise where.at("ARN").error(f"is invalid: {exc}") from None
    labels_where = where.at("AdditionalStagingLabelsToDownload")
    labels: list[str] = []
    for index, label in enumerate(get_array(data, "AdditionalStagingLabelsToDownload", where)):
        label_where = labels_where.item(index)
        text = check_string(label, label_where)
        # Secrets Manager's rule for a staging label: 1-256 characters. We also refuse
        # whitespace and control characters, which no label needs and which hide in logs.
        if len(text) > MAX_LABEL_LENGTH:
            raise label_where.error(f"is longer than {MAX_LABEL_LENGTH} characters")
        if any(ch.isspace() or not ch.isprintable() for ch in text):
            raise label_where.error(
                f"{quoted(text)} must not contain whitespace or control characters"
            )
        labels.append(text)
    return arn, tuple(labels)


# --- functions -------------------------------------------------------------------------------


def _parse_functions(
    group: dict[str, Any], resources: Mapping[str, SecretResource | OtherResource]
) -> tuple[Function, ...]:
    """Parse Functions, checking every access policy against the group's resources."""
    functions: list[Function] = []
    labels: dict[str, str] = {}
    for index, item in enumerate(get_array(group, "Functions", Where("Group"))):
        where = Where(entry_label("Functions", index, item))
        function = _parse_function(item, where, resources)
        first = labels.get(function.function_id)
        if first is not None:
            raise where.at("Id").error(f"is also the Id of {first}; function ids must be unique")
        labels[function.function_id] = where.entry
        functions.append(function)
    return tuple(functions)


def _parse_function(
    item: object, where: Where, resources: Mapping[str, SecretResource | OtherResource]
) -> Function:
    """Parse one entry of Functions."""
    entry = as_object(item, where)
    function_id = get_identifier(entry, "Id", where)
    function_arn = get_string(entry, "FunctionArn", where)
    config_where = where.at("FunctionConfiguration")
    config = get_object(entry, "FunctionConfiguration", where)
    env_where = config_where.at("Environment")
    environment = get_object(config, "Environment", config_where)
    # Not used here, but a worker will put them in a process environment, where only
    # strings can go; better to refuse the deployment than to fail when the function starts.
    get_string_map(environment, "Variables", env_where)
    policies_where = env_where.at("ResourceAccessPolicies")
    policies: list[ResourceAccessPolicy] = []
    granted: set[str] = set()
    entries = get_array(environment, "ResourceAccessPolicies", env_where)
    for index, entry_policy in enumerate(entries):
        policy_where = policies_where.item(index)
        policy = as_object(entry_policy, policy_where)
        resource_id = get_string(policy, "ResourceId", policy_where)
        permission = get_string(policy, "Permission", policy_where)
        resource = resources.get(resource_id)
        if resource is None:
            raise policy_where.at("ResourceId").error(
                f"{quoted(resource_id)} names no resource of the group"
            )
        if resource_id in granted:
            # Two policies for one resource would leave the permission ambiguous.
            raise policy_where.at("ResourceId").error(
                f"{quoted(resource_id)} is granted twice to this function"
            )
        if permission not in PERMISSIONS:
            raise policy_where.at("Permission").error(f'{quoted(permission)} must be "ro" or "rw"')
        if isinstance(resource, SecretResource) and permission != "ro":
            raise policy_where.at("Permission").error(
                f'is {quoted(permission)} for secret resource {quoted(resource_id)}; only "ro" '
                f"is allowed on a secret resource"
            )
        granted.add(resource_id)
        policies.append(ResourceAccessPolicy(resource_id=resource_id, permission=permission))
    return Function(
        function_id=function_id,
        function_arn=function_arn,
        access_policies=tuple(policies),
        # A copy, so that later changes to the caller's document can't reach a frozen model.
        raw=copy.deepcopy(entry),
    )


# --- connectors and subscriptions ------------------------------------------------------------


def _parse_connectors(
    group: dict[str, Any], resources: Mapping[str, SecretResource | OtherResource]
) -> tuple[Connector, ...]:
    """Parse Connectors, checking their resource parameters against the group."""
    connectors: list[Connector] = []
    labels: dict[str, str] = {}
    for index, item in enumerate(get_array(group, "Connectors", Where("Group"))):
        where = Where(entry_label("Connectors", index, item))
        entry = as_object(item, where)
        connector_id = get_identifier(entry, "Id", where)
        connector_arn = get_string(entry, "ConnectorArn", where)
        parameters = get_string_map(entry, "Parameters", where)
        _check_resource_parameters(parameters, where.at("Parameters"), resources)
        first = labels.get(connector_id)
        if first is not None:
            raise where.at("Id").error(f"is also the Id of {first}; connector ids must be unique")
        labels[connector_id] = where.entry
        connectors.append(
            Connector(
                connector_id=connector_id,
                connector_arn=connector_arn,
                parameters=dict(parameters),
            )
        )
    return tuple(connectors)


def _check_resource_parameters(
    parameters: Mapping[str, str],
    where: Where,
    resources: Mapping[str, SecretResource | OtherResource],
) -> None:
    """Check each `X-ResourceId` parameter names a resource, and `X`, if a secret's, its ARN."""
    for name, value in parameters.items():
        if not name.endswith(RESOURCE_ID_SUFFIX):
            continue
        resource = resources.get(value)
        if resource is None:
            raise where.member(name).error(f"{quoted(value)} names no resource of the group")
        # E.g. TwilioAuthTokenSecretArn must hold the ARN of the resource that
        # TwilioAuthTokenSecretArn-ResourceId names, or the connector would be granted one
        # secret while configured to read another. For other resources the paired parameter
        # is something else (ModbusSerialPort is a device path), so there is nothing to compare.
        paired = name.removesuffix(RESOURCE_ID_SUFFIX)
        if (
            isinstance(resource, SecretResource)
            and paired in parameters
            and parameters[paired] != resource.arn
        ):
            raise where.member(paired).error(
                f"{quoted(parameters[paired])} is not the ARN of resource {quoted(value)} "
                f"named by {name} ({quoted(resource.arn)})"
            )


def _parse_subscriptions(group: dict[str, Any]) -> tuple[Mapping[str, Any], ...]:
    """Parse Subscriptions: objects with string Id, Source, Subject and Target."""
    subscriptions: list[Mapping[str, Any]] = []
    labels: dict[str, str] = {}
    for index, item in enumerate(get_array(group, "Subscriptions", Where("Group"))):
        where = Where(entry_label("Subscriptions", index, item))
        entry = as_object(item, where)
        subscription_id = get_identifier(entry, "Id", where)
        for key in ("Source", "Subject", "Target"):
            get_string(entry, key, where)
        first = labels.get(subscription_id)
        if first is not None:
            raise where.at("Id").error(
                f"is also the Id of {first}; subscription ids must be unique"
            )
        labels[subscription_id] = where.entry
        subscriptions.append(copy.deepcopy(entry))
    return tuple(subscriptions)
