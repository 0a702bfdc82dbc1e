"""`python -m moto.server`, with Greengrass V1 as AWS has it, for the import tests.

moto 5 writes Greengrass ARNs without the "/" that AWS puts after the account
(`arn:aws:greengrass:REGION:ACCOUNT:greengrass/groups/ID`); AWS's answers, and so edge's
parser, have it (`…:ACCOUNT:/greengrass/groups/ID`). This entry point fixes the ARNs of every
Greengrass object moto creates, and checks group versions' references by stored ARN (moto's own
check matches its form only). moto also lacks connector and logger definitions: they are added
here (Create/Get/List of definitions and versions, the shapes of moto's other kinds), and group
versions keep a ConnectorDefinitionVersionArn and LoggerDefinitionVersionArn. Everything else is
moto's server unchanged. Run it as `python -m tests.support.moto_greengrass -H 127.0.0.1 -p PORT`
from the repository root.
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

from moto.core.utils import iso_8601_datetime_with_milliseconds, utcnow
from moto.greengrass import models, urls
from moto.greengrass.exceptions import GreengrassClientError, IdNotFoundException
from moto.greengrass.responses import GreengrassResponse
from moto.server import main

#: The kinds moto lacks: API noun -> (ARN segment, list key).
_EXTRA: dict[str, tuple[str, str]] = {
    "Connector": ("connectors", "Connectors"),
    "Logger": ("loggers", "Loggers"),
}
_EXTRA_KEYS = tuple(f"{noun}DefinitionVersionArn" for noun in _EXTRA)

_FAKES = (
    models.FakeCoreDefinition,
    models.FakeCoreDefinitionVersion,
    models.FakeDeviceDefinition,
    models.FakeDeviceDefinitionVersion,
    models.FakeResourceDefinition,
    models.FakeResourceDefinitionVersion,
    models.FakeFunctionDefinition,
    models.FakeFunctionDefinitionVersion,
    models.FakeSubscriptionDefinition,
    models.FakeSubscriptionDefinitionVersion,
    models.FakeGroup,
    models.FakeGroupVersion,
)


def _with_aws_arn(cls: Any) -> None:
    original = cls.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.arn = self.arn.replace(":greengrass/", ":/greengrass/", 1)

    cls.__init__ = init


def _check_references(self: Any, **arns: str | None) -> None:
    """Every ARN a group version names is a stored version of its kind (moto's rule)."""
    tables = {
        "core": self.core_definition_versions,
        "device": self.device_definition_versions,
        "function": self.function_definition_versions,
        "resource": self.resource_definition_versions,
        "subscription": self.subscription_definition_versions,
    }
    bad = []
    for name, arn in arns.items():
        if arn is None:
            continue
        versions = tables[name.split("_")[0]].get(arn.split("/")[-3], {})
        if not any(version.arn == arn for version in versions.values()):
            bad.append(f"{name} {arn} does not exist")
    if bad:
        details = ", ".join(bad)
        raise GreengrassClientError(
            "400", f"The group is invalid or corrupted. (ErrorDetails: [{details}])"
        )


def _add_kind(noun: str) -> None:  # noqa: C901 - one closure per operation
    """Definitions of kind `noun`, kept on moto's backend (so /moto-api/reset forgets them)."""
    segment, list_key = _EXTRA[noun]

    def store(self: Any) -> dict[str, Any]:
        found: dict[str, Any] = self.greengrass_backend.__dict__.setdefault(f"edge_{segment}", {})
        return found

    def definition(self: Any, ident: str) -> dict[str, Any]:
        if ident not in store(self):
            raise IdNotFoundException(f"That {noun} List Definition does not exist.")
        found: dict[str, Any] = store(self)[ident]
        return found

    def shown(item: dict[str, Any], *hidden: str) -> str:
        return json.dumps({k: v for k, v in item.items() if k not in {"versions", *hidden}})

    def add_version(self: Any, ident: str, items: list[Any]) -> dict[str, Any]:
        parent, vid = definition(self, ident), str(uuid.uuid4())
        version = {
            "Arn": f"{parent['Arn']}/versions/{vid}",
            "CreationTimestamp": iso_8601_datetime_with_milliseconds(utcnow()),
            "Definition": {list_key: items},
            "Id": ident,
            "Version": vid,
        }
        parent["versions"][vid] = version
        parent |= {"LatestVersion": vid, "LatestVersionArn": version["Arn"]}
        return version

    def create(self: Any) -> Any:
        ident, now = str(uuid.uuid4()), iso_8601_datetime_with_milliseconds(utcnow())
        arn = f"arn:aws:greengrass:{self.region}:{self.current_account}:/greengrass/definition"
        store(self)[ident] = {
            "Arn": f"{arn}/{segment}/{ident}",
            "CreationTimestamp": now,
            "Id": ident,
            "LastUpdatedTimestamp": now,
            "Name": self._get_param("Name"),
            "versions": {},
        }
        initial = self._get_param("InitialVersion")
        if initial is not None:
            add_version(self, ident, initial.get(list_key, []))
        return 201, {"status": 201}, shown(store(self)[ident])

    def create_version(self: Any) -> Any:
        version = add_version(self, self.path.split("/")[-2], self._get_param(list_key) or [])
        return 201, {"status": 201}, shown(version, "Definition")

    def get_version(self: Any) -> str:
        versions = definition(self, self.path.split("/")[-3])["versions"]
        return json.dumps(versions[self.path.split("/")[-1]])

    methods = {
        "create_{}_definition": create,
        "get_{}_definition": lambda self: shown(definition(self, self.path.split("/")[-1])),
        "list_{}_definitions": lambda self: json.dumps(
            {"Definitions": [json.loads(shown(d)) for d in store(self).values()]}
        ),
        "create_{}_definition_version": create_version,
        "list_{}_definition_versions": lambda self: json.dumps(
            {
                "Versions": [
                    json.loads(shown(v, "Definition"))
                    for v in definition(self, self.path.split("/")[-2])["versions"].values()
                ]
            }
        ),
        "get_{}_definition_version": get_version,
    }
    for pattern, method in methods.items():
        setattr(GreengrassResponse, pattern.format(noun.lower()), method)
    base = "{0}/greengrass/definition/" + segment
    for tail in ("$", "/(?P<definition_id>[^/]+)/?$", "/(?P<definition_id>[^/]+)/versions$"):
        urls.url_paths[base + tail] = GreengrassResponse.dispatch
    urls.url_paths[base + "/(?P<definition_id>[^/]+)/versions/(?P<version_id>[^/]+)/?$"] = (
        GreengrassResponse.dispatch
    )


def _keep_extra_references() -> None:
    """Group versions keep the connector and logger references moto's own code drops."""
    create, to_dict = GreengrassResponse.create_group_version, models.FakeGroupVersion.to_dict

    def create_group_version(self: Any) -> Any:
        status, headers, body = create(self)
        answer = json.loads(body)
        version = self.greengrass_backend.group_versions[answer["Id"]][answer["Version"]]
        version.edge_extra = {k: self._get_param(k) for k in _EXTRA_KEYS if self._get_param(k)}
        return status, headers, body

    def with_extra(self: Any, *, include_detail: bool = False) -> dict[str, Any]:
        shown = to_dict(self, include_detail=include_detail)
        if include_detail:
            shown["Definition"] |= getattr(self, "edge_extra", {})
        return shown

    GreengrassResponse.create_group_version = create_group_version  # type: ignore[method-assign]
    models.FakeGroupVersion.to_dict = with_extra  # type: ignore[method-assign]


for _noun in _EXTRA:
    _add_kind(_noun)
_keep_extra_references()
for _fake in _FAKES:
    _with_aws_arn(_fake)
models.GreengrassBackend._validate_group_version_definitions = _check_references  # type: ignore[method-assign]

if __name__ == "__main__":
    main(sys.argv[1:])
