# SPDX-License-Identifier: Apache-2.0
"""Function code: `publish-function` stores a zip in S3, addressed by its SHA-256.

This plays the part of `aws lambda create-function` + `publish-version` for a Greengrass group:
the package goes to `s3://{artifact_bucket}/functions/{sha256}.zip` (the bucket is created if
missing) and the function ARN is mapped to it, with its handler, in the database. Deployments
then carry `FunctionConfiguration.Handler` and `FunctionConfiguration.Code {Uri, Sha256}` for
each function, and the core checks the digest of what it downloads.

Content addressing makes publishing idempotent and safe: the same zip is stored once however
many functions or versions use it, an object is never overwritten with other bytes, and a
deployment built earlier keeps pointing at exactly the code it was built with.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from typing import Any, Final

from edge.cloud import s3 as s3client
from edge.cloud.config import CloudConfig
from edge.cloud.db import Database
from edge.cloud.errors import ArtifactError, CloudUsageError
from edge.cloud.ids import is_function_arn, timestamp

# botocore is imported where S3 is called (PLC0415 below), as in `edge.cloud.s3`: commands
# that only check a package or read the database don't pay for it.

#: Largest package accepted: Lambda's own limit for a zip uploaded directly.
MAX_ZIP_BYTES: Final = 50 * 1024 * 1024
#: `module.function`, as Lambda's Python handlers are named (modules may be dotted).
HANDLER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+", re.ASCII)
_NOT_FOUND: Final = s3client.NOT_FOUND


def object_key(sha256: str) -> str:
    """The S3 key of a package with this digest."""
    return f"functions/{sha256}.zip"


def check_package(
    function_arn: str, handler: str, package: bytes, *, max_bytes: int = MAX_ZIP_BYTES
) -> str:
    """Check publish-function's arguments; return the package's SHA-256 (hex).

    Raises:
        CloudUsageError: The ARN, the handler or the package is not acceptable.
    """
    if not is_function_arn(function_arn):
        raise CloudUsageError(
            "--function-arn",
            f"{function_arn!r} is not a Lambda function ARN "
            f"(arn:aws:lambda:REGION:ACCOUNT:function:NAME[:VERSION])",
        )
    if HANDLER.fullmatch(handler) is None:
        raise CloudUsageError("--handler", f"{handler!r} must be module.function")
    if len(package) > max_bytes:
        raise CloudUsageError("--zip-file", f"is larger than {max_bytes} bytes")
    try:
        with zipfile.ZipFile(io.BytesIO(package)) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        raise CloudUsageError("--zip-file", "is not a zip file") from None
    module = handler.rsplit(".", 1)[0].replace(".", "/")
    if not any(name in {f"{module}.py", f"{module}/__init__.py"} for name in names):
        raise CloudUsageError(
            "--handler", f"the package has no {module}.py for handler {handler!r}"
        )
    return hashlib.sha256(package).hexdigest()


async def publish_function(
    config: CloudConfig, db: Database, *, function_arn: str, handler: str, package: bytes
) -> dict[str, Any]:
    """Store a function package in S3 and map the function ARN to it.

    Returns:
        What publish-function prints: FunctionArn, Handler, CodeSize, CodeSha256 (hex) and
        Code {Uri, Sha256}, as deployments will carry it.

    Raises:
        CloudUsageError: An argument is wrong, or [cloud] artifact_bucket is not set.
        ArtifactError: S3 refused or could not be reached.
    """
    digest = check_package(function_arn, handler, package)
    return await store_package(
        config, db, function_arn=function_arn, handler=handler, package=package, digest=digest
    )


async def store_package(
    config: CloudConfig,
    db: Database,
    *,
    function_arn: str,
    handler: str,
    package: bytes,
    digest: str,
    remember: bool = True,
) -> dict[str, Any]:
    """Put a checked package in the artifact bucket by digest; map the function ARN to it.

    With `remember` false the mapping is not stored: the package is in S3 and the answer says
    where, for a deployment to carry, but the next deployment asks again (an alias moves).

    Raises:
        CloudUsageError: [cloud] artifact_bucket is not set.
        ArtifactError: S3 refused or could not be reached.
    """
    bucket = config.cloud.artifact_bucket
    if bucket is None:
        raise CloudUsageError(
            "[cloud] artifact_bucket", f"is not set in {config.path}; name the S3 bucket for code"
        )
    key = object_key(digest)
    await _upload(config, bucket, key, package)
    uri, now = f"s3://{bucket}/{key}", timestamp()
    if remember:
        with db.write() as conn:
            conn.execute(
                "INSERT INTO function_code"
                " (function_arn, handler, uri, sha256, size, published_at)"
                " VALUES (:function_arn, :handler, :uri, :sha256, :size, :published_at) ON"
                " CONFLICT (function_arn) DO UPDATE SET"
                " handler = excluded.handler, uri = excluded.uri, sha256 = excluded.sha256,"
                " size = excluded.size, published_at = excluded.published_at",
                {
                    "function_arn": function_arn,
                    "handler": handler,
                    "uri": uri,
                    "sha256": digest,
                    "size": len(package),
                    "published_at": now,
                },
            )
    return {
        "FunctionArn": function_arn,
        "Handler": handler,
        "CodeSize": len(package),
        "CodeSha256": digest,
        "Code": {"Uri": uri, "Sha256": digest},
        "LastModified": now,
    }


async def _upload(config: CloudConfig, bucket: str, key: str, package: bytes) -> None:
    """Create the bucket if missing and put the object unless it is already there."""
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - see the imports

    try:
        async with s3client.client(config.aws) as s3:
            await _ensure_bucket(s3, bucket, config.aws.region)
            try:
                await s3.head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if _code(exc) not in _NOT_FOUND:
                    raise
                await s3.put_object(Bucket=bucket, Key=key, Body=package)
    except ClientError as exc:
        raise ArtifactError(f"S3 refused {bucket}/{key}: {_code(exc)} {exc}") from None
    except (BotoCoreError, OSError) as exc:
        raise ArtifactError(f"could not reach S3: {exc}") from None


async def _ensure_bucket(s3: Any, bucket: str, region: str) -> None:  # noqa: ANN401 - botocore client
    from botocore.exceptions import ClientError  # noqa: PLC0415 - see the imports

    try:
        await s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if _code(exc) not in _NOT_FOUND:
            raise
    else:
        return
    kwargs: dict[str, Any] = {"Bucket": bucket}
    # us-east-1 is S3's default and refuses being named as a LocationConstraint.
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        await s3.create_bucket(**kwargs)
    except ClientError as exc:
        # Another publish-function may have created it a moment ago.
        if _code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            raise


_code = s3client.error_code
