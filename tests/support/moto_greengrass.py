"""`python -m moto.server`, with Greengrass V1 ARNs in AWS's form, for the import tests.

moto 5 writes Greengrass ARNs without the "/" that AWS puts after the account
(`arn:aws:greengrass:REGION:ACCOUNT:greengrass/groups/ID`); AWS's answers, and so edge's
parser, have it (`…:ACCOUNT:/greengrass/groups/ID`). This entry point fixes the ARNs of every
Greengrass object moto creates, and checks group versions' references by stored ARN (moto's own
check matches its form only). Everything else is moto's server unchanged. Run it as
`python -m tests.support.moto_greengrass -H 127.0.0.1 -p PORT` from the repository root.
"""

from __future__ import annotations

import sys
from typing import Any

from moto.greengrass import models
from moto.greengrass.exceptions import GreengrassClientError
from moto.server import main

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


for _fake in _FAKES:
    _with_aws_arn(_fake)
models.GreengrassBackend._validate_group_version_definitions = _check_references  # type: ignore[method-assign]

if __name__ == "__main__":
    main(sys.argv[1:])
