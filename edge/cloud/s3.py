# SPDX-License-Identifier: Apache-2.0
"""The control plane's S3 client: one configuration for function packages and bulk input files."""

from __future__ import annotations

from typing import Any, Final

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from edge.config import AwsSettings

#: The codes S3 answers for a bucket or object that isn't there (HEAD answers a bare 404).
NOT_FOUND: Final = frozenset({"404", "NoSuchBucket", "NoSuchKey", "NotFound"})


def client(aws: AwsSettings) -> Any:  # noqa: ANN401 - an aiobotocore client context
    """An S3 client context for `[aws]`'s region and endpoint."""
    # Path-style addressing works with every S3 emulator and with bucket names holding dots.
    config = AioConfig(s3={"addressing_style": "path"}, retries={"mode": "standard"})
    return get_session().create_client(
        "s3", region_name=aws.region, endpoint_url=aws.endpoint_url, config=config
    )


def error_code(exc: ClientError) -> str:
    """The AWS error code of a botocore ClientError ("" if it has none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))
