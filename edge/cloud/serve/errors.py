# SPDX-License-Identifier: Apache-2.0
"""API errors: an HTTP status, an AWS error code and a message, as restJson1 services send them.

Every error leaves the service as `x-amzn-ErrorType: <code>` plus a JSON body `{"Message": ...}`,
which is what botocore's rest-json parser reads: the code picks the exception class
(`client.exceptions.BadRequestException` for the codes the Greengrass model declares, a plain
`ClientError` with that code otherwise). The codes are the ones AWS's Greengrass V1 endpoint
answers with, as recorded by moto's Greengrass backend, which mirrors it: `BadRequestException`
(400) for a request that breaks a rule, `IdNotFoundException` and `VersionNotFoundException`
(404) for an id that names nothing, `InternalServerErrorException` (500) when the service itself
can't do its work, and `ServiceUnavailable` (503) while its database can't be reached.
"""

from __future__ import annotations

from typing import Final

from edge.cloud.errors import (
    BrokerError,
    CloudDatabaseError,
    CloudUsageError,
    NotFoundError,
    SignatureReplayError,
)
from edge.errors import EdgeError

BAD_REQUEST: Final = "BadRequestException"
ID_NOT_FOUND: Final = "IdNotFoundException"
VERSION_NOT_FOUND: Final = "VersionNotFoundException"
INTERNAL: Final = "InternalServerErrorException"
UNAVAILABLE: Final = "ServiceUnavailable"


class ApiError(Exception):
    """An error answer: HTTP status, AWS error code, message (never a secret value)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"{status} {code}: {message}")


def bad_request(message: str) -> ApiError:
    """A 400 BadRequestException, the Greengrass model's error for a request breaking a rule."""
    return ApiError(400, BAD_REQUEST, message)


def from_edge_error(exc: EdgeError) -> ApiError:  # noqa: PLR0911 - one answer per kind
    """Translate an error of the shared control-plane code into the API's answer."""
    if isinstance(exc, NotFoundError):
        if exc.ident.startswith("arn:"):
            # An ARN inside the request body (a group version naming a definition version that
            # is gone): the request is wrong, not its address.
            return bad_request(str(exc))
        code = VERSION_NOT_FOUND if exc.what.endswith("version") else ID_NOT_FOUND
        return ApiError(404, code, str(exc))
    if isinstance(exc, SignatureReplayError):
        # AWS's code for a signature it won't accept; not retried by SDKs, rightly: the same
        # bytes would be refused again, and a fresh signature is a new request.
        return ApiError(403, "InvalidSignatureException", str(exc))
    if isinstance(exc, CloudDatabaseError) and exc.unavailable:
        # botocore retries 503 ServiceUnavailable with backoff, which is what a database
        # restart or failover needs.
        return ApiError(503, UNAVAILABLE, f"the database is unavailable; retry: {exc.problem}")
    if isinstance(exc, BrokerError | CloudDatabaseError):
        return ApiError(500, INTERNAL, str(exc))
    if isinstance(exc, CloudUsageError) and exc.option.startswith("--"):
        # The shared code names CLI options; an API caller knows them as members.
        return bad_request(f"{member_name(exc.option)}: {exc.problem}")
    return bad_request(str(exc))


def member_name(option: str) -> str:
    """The API member an AWS CLI option stands for: --group-version-id -> GroupVersionId."""
    return "".join(part.capitalize() for part in option.removeprefix("--").split("-"))
