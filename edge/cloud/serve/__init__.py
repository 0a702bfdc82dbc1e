# SPDX-License-Identifier: Apache-2.0
"""`edge cloud serve`: the control plane as a service speaking the Greengrass V1 REST API.

The AWS CLI, boto3 and aiobotocore work against it with `--endpoint-url` / `endpoint_url`:
routes and shapes come from botocore's own model (`routes`), every request is checked with AWS
Signature Version 4 (`auth`), and each operation runs the same code as its `edge cloud` command
(`operations`). While it runs it follows every core's status topic (`follow`).
"""

from __future__ import annotations

from edge.cloud.serve.service import run, serve

__all__ = ["run", "serve"]
