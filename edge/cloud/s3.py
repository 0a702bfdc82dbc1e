# SPDX-License-Identifier: Apache-2.0
"""The control plane's S3 client: one configuration for function packages and bulk input files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from edge.config import AwsSettings

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

# aiobotocore is imported where a client is made (PLC0415 below): it and botocore take about
# half a second to import, and most `edge cloud` commands never talk to S3.

#: The codes S3 answers for a bucket or object that isn't there (HEAD answers a bare 404).
NOT_FOUND: Final = frozenset({"404", "NoSuchBucket", "NoSuchKey", "NotFound"})


def client(aws: AwsSettings) -> Any:  # noqa: ANN401 - an aiobotocore client context
    """An S3 client context for `[aws]`'s region and endpoint."""
    from aiobotocore.config import AioConfig  # noqa: PLC0415 - see the imports
    from aiobotocore.session import get_session  # noqa: PLC0415 - see the imports

    # Path-style addressing works with every S3 emulator and with bucket names holding dots.
    config = AioConfig(s3={"addressing_style": "path"}, retries={"mode": "standard"})
    return get_session().create_client(
        "s3", region_name=aws.region, endpoint_url=aws.endpoint_url, config=config
    )


def error_code(exc: ClientError) -> str:
    """The AWS error code of a botocore ClientError ("" if it has none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))
