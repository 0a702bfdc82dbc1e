# SPDX-License-Identifier: Apache-2.0
"""The demo's own files: its core definition, and its core's and control plane's configs.

What it deploys (the reference page's group, handler and package) is `edge.fixtures.reference`.
"""

from __future__ import annotations

import json
from typing import Final

from edge.fixtures.reference import ACCOUNT, REGION

THING: Final = "demo-core"


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
