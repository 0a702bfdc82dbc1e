# SPDX-License-Identifier: Apache-2.0
"""What the demo deploys: the reference document's JSON and handler, and the demo's configs.

Pure data and a zip: no process, no network. docker/deploy.sh deploys the same definitions to
the compose fleet.
"""

from __future__ import annotations

import importlib.util
import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from edge.errors import EdgeError

REGION: Final = "us-west-2"
ACCOUNT: Final = "123456789012"
THING: Final = "demo-core"
SECRET_NAME: Final = "greengrass-SomeSecret"  # noqa: S105 - a secret's name, not its value
FUNCTION_ARN: Final = "arn:aws:lambda:us-west-2:123456789012:function:myFunction:1"
HANDLER: Final = "app.function_handler"

# The reference document's `create-resource-definition`, verbatim but for the secret's ARN.
REFERENCE_RESOURCES: Final = """{
    "Resources": [
        {
            "Id": "my-resource-id",
            "Name": "MySecretResource",
            "ResourceDataContainer": {
                "SecretsManagerSecretResourceData": {
                    "ARN": "arn:aws:secretsmanager:us-west-2:123456789012:secret:greengrass-SomeSecret-KUj89s",
                    "AdditionalStagingLabelsToDownload": [
                        "Label1",
                        "Label2"
                    ]
                }
            }
        }
    ]
}
"""  # noqa: E501 - verbatim
#: The ARN in REFERENCE_RESOURCES, replaced by the real secret's.
REFERENCE_ARN: Final = (
    "arn:aws:secretsmanager:us-west-2:123456789012:secret:greengrass-SomeSecret-KUj89s"
)

# The reference document's `create-function-definition`, verbatim but for the ResourceId: the
# document grants "MyApiKey", a resource its other example doesn't define, and a group may
# only name its own resources, so the grant names the resource above.
REFERENCE_FUNCTIONS: Final = """{
    "Functions": [
        {
            "Id": "MyLambdaFunction",
            "FunctionArn": "arn:aws:lambda:us-west-2:123456789012:function:myFunction:1",
            "FunctionConfiguration": {
                "Pinned": false,
                "MemorySize": 16384,
                "Timeout": 10,
                "Environment": {
                    "ResourceAccessPolicies": [
                        {
                            "ResourceId": "my-resource-id",
                            "Permission": "ro"
                        }
                    ],
                    "AccessSysfs": true
                }
            }
        }
    ]
}
"""

# The reference document's handler, as a Greengrass V1 developer wrote it, reading the secret
# by name (and a label if the event names one). It answers which version it read and the
# value's length, never the value: a function should not hand a secret on. (No hashlib for a
# digest either: OpenSSL adds ~3.5 MB to the worker, which the reference's 16 MB MemorySize
# can't spare.)
HANDLER_SOURCE: Final = """\
import greengrasssdk

# Creating a Greengrass Core SDK client
client = greengrasssdk.client('secretsmanager')


# This handler is called when the function is invoked
# It uses the secretsmanager client to get the value of a secret
def function_handler(event, context):
    kwargs = {'SecretId': 'greengrass-SomeSecret'}
    if event and event.get('VersionStage'):
        kwargs['VersionStage'] = event['VersionStage']
    response = client.get_secret_value(**kwargs)
    raw_secret = response.get('SecretString')
    return {
        'Name': response['Name'],
        'VersionId': response['VersionId'],
        'VersionStages': response['VersionStages'],
        'SecretStringLength': len(raw_secret),
    }
"""


class PackageError(EdgeError):
    """The function package can't be built."""


def build_function_package(path: Path) -> int:
    """Zip the reference handler with the unmodified greengrasssdk; return the zip's size.

    Raises:
        PackageError: greengrasssdk is not installed.
    """
    return len(write_v1_package(path, {"app.py": HANDLER_SOURCE.encode()}))


def write_v1_package(path: Path, handlers: Mapping[str, bytes]) -> bytes:
    """Write a V1 deployment package: the handler files (name -> source) and greengrasssdk.

    The SDK comes from this interpreter's site-packages (it is a dependency of edge), as a V1
    developer bundles it from PyPI into their deployment package. Returns the zip's bytes.

    Raises:
        PackageError: greengrasssdk is not installed.
    """
    spec = importlib.util.find_spec("greengrasssdk")
    if spec is None or not spec.submodule_search_locations:
        raise PackageError("the greengrasssdk package is not installed (`pip install edge`)")
    sdk_dir = Path(next(iter(spec.submodule_search_locations)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, source in handlers.items():
            archive.writestr(name, source)
        for file in sorted(sdk_dir.rglob("*.py")):
            archive.write(file, f"greengrasssdk/{file.relative_to(sdk_dir).as_posix()}")
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def core_definition(thing: str = THING) -> str:
    """The JSON of a core definition version naming one core (`create-core-definition`)."""
    core = {
        "Cores": [
            {
                "Id": thing,
                "ThingArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/{thing}",
                "CertificateArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:cert/{thing}",
                "SyncShadow": False,
            }
        ]
    }
    return json.dumps(core, indent=4) + "\n"


def cloud_config(*, broker_url: str, moto_url: str) -> str:
    """The demo's control-plane config (cloud.toml), paths relative to the workspace."""
    return f"""\
# The demo's control plane (every key: cloud.example.toml).
[cloud]
database = "cloud/edge-cloud.db"
signing_key = "cloud/signing-key.pem"
artifact_bucket = "edge-demo-artifacts"
account_id = "{ACCOUNT}"

[mqtt]
url = "{broker_url}"

[aws]
region = "{REGION}"
endpoint_url = "{moto_url}"
"""


def core_config(*, broker_url: str, moto_url: str) -> str:
    """The demo's core config (core.toml): trusts the control plane's key, logs JSON lines."""
    return f"""\
# The demo's core (every key: config.example.toml).
[core]
thing_name = "{THING}"
state_dir = "state"
code_dir = "functions"

[mqtt]
url = "{broker_url}"
reconnect_max_seconds = 1.0

[aws]
region = "{REGION}"
endpoint_url = "{moto_url}"

[deployments]
trusted_keys = ["cloud/signing-key.pem.pub"]

[log]
level = "info"
# JSON lines: the demo reads core.log to know when the core is connected.
format = "json"
"""
