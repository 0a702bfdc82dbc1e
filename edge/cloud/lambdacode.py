# SPDX-License-Identifier: Apache-2.0
"""Function code from AWS Lambda: GetFunction, then the package at Code.Location, checked.

A V1 group's functions live in AWS Lambda, by a version or alias ARN. A function with no
package published here (`publish-function`) is resolved at create-deployment: `GetFunction`
(with the [aws] credentials, region and endpoint) gives its handler, CodeSha256 and a short-lived
`Code.Location` URL; the zip is read from there, bounded while it streams, checked (a zip within
Lambda's own limits, holding the handler's module, whose SHA-256 is the one Lambda reported)
and stored by digest in the artifact bucket exactly as `publish-function` stores one. A version
ARN names immutable code, so its mapping is kept like a published one; an alias (or an
unqualified ARN) can move, so it is resolved again at every deployment.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from collections.abc import Iterable
from typing import Any, Final

from edge.cloud.artifacts import check_package, store_package
from edge.cloud.config import CloudConfig
from edge.cloud.db import Database
from edge.cloud.errors import CloudUsageError, LambdaCodeError

# aiobotocore, botocore and aiohttp are imported where Lambda is called (PLC0415 below): every
# deployment command loads this module, and most never ask Lambda (each function has
# published code, or there are no functions); the three take about half a second to import.

#: Largest package read from Code.Location, and most bytes it may unpack to: Lambda's limit
#: on a function's unzipped code (250 MB), which a zip of it can't meaningfully exceed either.
MAX_LAMBDA_PACKAGE_BYTES: Final = 250 * 1024 * 1024
#: Seconds for the whole download: a presigned URL is valid for 10 minutes, and 250 MB at a
#: slow 1 MB/s takes about 4.
DOWNLOAD_TIMEOUT_SECONDS: Final = 300.0
_CHUNK: Final = 1024 * 1024
#: Lambda's answer when the function (or that version or alias of it) doesn't exist.
_NOT_FOUND: Final = "ResourceNotFoundException"


def supply_hint(function_arn: str, region: str) -> str:
    """The two ways to give a function code, for messages."""
    return (
        f"run `edge cloud publish-function --function-arn {function_arn} --zip-file "
        f"fileb://PACKAGE.zip --handler MODULE.FUNCTION`, or create the function (that version "
        f"or alias) in AWS Lambda in {region}, where create-deployment fetches it"
    )


def _client(config: CloudConfig) -> Any:  # noqa: ANN401 - an aiobotocore client context
    from aiobotocore.config import AioConfig  # noqa: PLC0415 - see the imports
    from aiobotocore.session import get_session  # noqa: PLC0415 - see the imports

    # Bounded: an unreachable Lambda endpoint must not hold a command for botocore's 60 s
    # default connect timeout times its retries.
    client_config = AioConfig(
        connect_timeout=10, read_timeout=30, retries={"mode": "standard", "max_attempts": 3}
    )
    return get_session().create_client(
        "lambda",
        region_name=config.aws.region,
        endpoint_url=config.aws.endpoint_url,
        config=client_config,
    )


async def _get_function(client: Any, config: CloudConfig, function_arn: str) -> dict[str, Any]:  # noqa: ANN401
    """GetFunction for one ARN.

    Raises:
        LambdaCodeError: Lambda has no such function, refused, or can't be reached.
    """
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - see the imports

    try:
        answer: dict[str, Any] = await client.get_function(FunctionName=function_arn)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == _NOT_FOUND:
            problem = "has no published code and AWS Lambda has no such function"
        else:
            problem = f"has no published code and AWS Lambda refused GetFunction ({code})"
        raise LambdaCodeError(
            function_arn, f"{problem}; {supply_hint(function_arn, config.aws.region)}"
        ) from None
    except (BotoCoreError, OSError) as exc:
        raise LambdaCodeError(
            function_arn,
            f"has no published code and AWS Lambda can't be reached ({exc}); "
            f"{supply_hint(function_arn, config.aws.region)}",
        ) from None
    return answer


def unsupplied(db: Database, version: object) -> list[str]:
    """The ARNs of a function definition version's functions with no Code and no package."""
    items = version.get("Functions") if isinstance(version, dict) else None
    arns = [
        fn["FunctionArn"]
        for fn in (items if isinstance(items, list) else [])
        if isinstance(fn, dict)
        and isinstance(fn.get("FunctionArn"), str)
        and "Code" not in (fn.get("FunctionConfiguration") or {})
    ]
    if not arns:
        return []
    with db.read() as conn:
        published = {
            row["function_arn"]
            for row in conn.execute(
                "SELECT function_arn FROM function_code WHERE function_arn IN :arns",
                {"arns": arns},
            )
        }
    return [arn for arn in arns if arn not in published]


async def missing_functions(config: CloudConfig, db: Database, version: object) -> list[str]:
    """Ask Lambda about each function that has no code here; warn for those it can't supply.

    Called when a function definition (version) is created, so that a function that exists
    nowhere is said at once rather than at the first deployment.
    """
    warnings: list[str] = []
    arns = list(dict.fromkeys(unsupplied(db, version)))
    if not arns:
        return warnings
    async with _client(config) as client:
        for arn in arns:
            try:
                await _get_function(client, config, arn)
            except LambdaCodeError as exc:
                warnings.append(f"{exc}; deploying a group with it fails until then")
    return warnings


async def _download(function_arn: str, location: str) -> bytes:
    """Read a package from Code.Location, refusing it as soon as it passes the bound."""
    import aiohttp  # noqa: PLC0415 - see the imports

    if not location.startswith(("https://", "http://")):
        raise LambdaCodeError(function_arn, "GetFunction's Code.Location is not an HTTP(S) URL")
    timeout = aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT_SECONDS)
    chunks, size = [], 0
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(location) as response,
        ):
            if response.status != 200:  # noqa: PLR2004 - HTTP OK
                raise LambdaCodeError(
                    function_arn, f"Code.Location answered HTTP {response.status}"
                )
            async for chunk in response.content.iter_chunked(_CHUNK):
                size += len(chunk)
                if size > MAX_LAMBDA_PACKAGE_BYTES:
                    raise LambdaCodeError(
                        function_arn,
                        f"its package is larger than Lambda's {MAX_LAMBDA_PACKAGE_BYTES} bytes",
                    )
                chunks.append(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The URL is presigned: its query string is a credential and stays out of messages.
        host = location.split("/")[2] if location.count("/") >= 2 else "?"  # noqa: PLR2004
        query = location.partition("?")[2]
        text = str(exc)
        if not text or (query and query in text):
            text = type(exc).__name__
        raise LambdaCodeError(
            function_arn, f"its package can't be read from {host}: {text}"
        ) from None
    return b"".join(chunks)


def _check(function_arn: str, configuration: dict[str, Any], package: bytes) -> tuple[str, str]:
    """Check a downloaded package; return (handler, sha256 hex).

    Raises:
        LambdaCodeError: Not a zip, too large unpacked, not what Lambda reported, or without
            the handler's module.
    """
    handler = str(configuration.get("Handler") or "")
    try:
        digest = check_package(function_arn, handler, package, max_bytes=MAX_LAMBDA_PACKAGE_BYTES)
    except CloudUsageError as exc:
        raise LambdaCodeError(function_arn, f"its package from AWS Lambda: {exc.problem}") from None
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
    if unpacked > MAX_LAMBDA_PACKAGE_BYTES:
        raise LambdaCodeError(
            function_arn,
            f"its package unpacks to {unpacked} bytes, more than Lambda's "
            f"{MAX_LAMBDA_PACKAGE_BYTES}",
        )
    expected = configuration.get("CodeSha256")
    actual = base64.b64encode(hashlib.sha256(package).digest()).decode()
    if expected != actual:
        raise LambdaCodeError(
            function_arn,
            f"the package read from Code.Location has SHA-256 {actual}, not the CodeSha256 "
            f"{expected} GetFunction reported; nothing was stored",
        )
    return handler, digest


def is_version_arn(function_arn: str) -> bool:
    """Whether the ARN names a published version (immutable code), not an alias or $LATEST."""
    parts = function_arn.split(":")
    return len(parts) == 8 and parts[7].isdigit()  # noqa: PLR2004 - arn:…:function:NAME:QUALIFIER


async def fetch_functions(
    config: CloudConfig, db: Database, function_arns: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Resolve functions through Lambda and store their packages; return what deployments carry.

    Returns:
        `{function ARN: {"Handler": ..., "Code": {"Uri": ..., "Sha256": ...}}}`.

    Raises:
        LambdaCodeError: A function can't be had from Lambda, or its package is not acceptable.
        CloudUsageError, ArtifactError: The package can't be stored (no artifact bucket, S3).
    """
    fetched: dict[str, dict[str, Any]] = {}
    arns = list(dict.fromkeys(function_arns))
    if not arns:
        return fetched
    async with _client(config) as client:
        for arn in arns:
            answer = await _get_function(client, config, arn)
            location = answer.get("Code", {}).get("Location")
            if not isinstance(location, str):
                raise LambdaCodeError(
                    arn,
                    "AWS Lambda gives no Code.Location for it (a container image function, "
                    f"which edge can't run); {supply_hint(arn, config.aws.region)}",
                )
            package = await _download(arn, location)
            handler, digest = _check(arn, answer.get("Configuration", {}), package)
            stored = await store_package(
                config,
                db,
                function_arn=arn,
                handler=handler,
                package=package,
                digest=digest,
                remember=is_version_arn(arn),
            )
            fetched[arn] = {"Handler": handler, "Code": stored["Code"]}
    return fetched
