# SPDX-License-Identifier: Apache-2.0
"""The control plane's errors (`edge cloud`, its REST API): each says what to do.

The same rule as edge/errors.py, whose `EdgeError` roots them: the CLI prints these without a
traceback, and `edge.cloud.serve.errors` maps each to the V1 API's error.
"""

from __future__ import annotations

from edge.errors import EdgeError


class CloudUsageError(EdgeError):
    """A command-line argument is missing, malformed or contradicts another."""

    def __init__(self, option: str, problem: str) -> None:
        self.option = option
        self.problem = problem
        super().__init__(f"{option}: {problem}")


class NotFoundError(EdgeError):
    """A definition, group, version or deployment named on the command line does not exist."""

    def __init__(self, what: str, ident: str, hint: str) -> None:
        self.what = what
        self.ident = ident
        super().__init__(f"{what} {ident!r} does not exist; {hint}")


class DefinitionInvalidError(EdgeError):
    """A definition version or group version failed validation; names the offending entry."""

    def __init__(self, what: str, problem: str) -> None:
        self.what = what
        self.problem = problem
        super().__init__(f"invalid {what}: {problem}")


class CloudDatabaseError(EdgeError):
    """The control plane's database (SQLite or PostgreSQL) can't be opened, migrated or written.

    `unavailable` says the database can't be reached or is busy right now (a PostgreSQL
    restart, a lock held too long): the same request may succeed later.
    """

    def __init__(self, path: str, problem: str, *, unavailable: bool = False) -> None:
        self.path = path
        self.problem = problem
        self.unavailable = unavailable
        super().__init__(f"database {path}: {problem}")


class BrokerError(EdgeError):
    """The MQTT broker could not be reached, or refused a publish or subscription."""

    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        self.detail = detail
        super().__init__(
            f"could not talk to the MQTT broker at {url}: {detail}; check [mqtt] url in the "
            f"control plane's config"
        )


class ArtifactError(EdgeError):
    """A function package could not be read or stored in S3."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"function package: {problem}")


class LambdaCodeError(EdgeError):
    """A function's code could not be had from AWS Lambda (missing, unreachable, bad package)."""

    def __init__(self, function_arn: str, problem: str) -> None:
        self.function_arn = function_arn
        self.problem = problem
        super().__init__(f"function {function_arn}: {problem}")


class NameInvalidError(CloudUsageError):
    """A group or definition name breaks the rules: too long, or not printable text."""


class SignatureReplayError(EdgeError):
    """A signed API request that changes something arrived again after it was applied."""

    def __init__(self) -> None:
        super().__init__(
            "Signature has already been used: this exact signed request was applied before "
            "(a replay); sign the request again to repeat it, or give each of two identical "
            "calls in one second its own AmznClientToken"
        )


class ClientTokenInUseError(EdgeError):
    """A client token was given again while its first request is still running."""

    def __init__(self, token: str) -> None:
        self.token = token
        super().__init__(
            f"AmznClientToken {token!r}: a request with this token is still in progress; "
            f"retry it once that one has answered"
        )


class ClientTokenMismatchError(EdgeError):
    """A client token was given again with other input than its first request's."""

    def __init__(self, token: str, operation: str) -> None:
        self.token = token
        super().__init__(
            f"IdempotentParameterMismatch: AmznClientToken {token!r} was used with other "
            f"parameters for {operation}; use a new token for a different request"
        )


class TagsInvalidError(CloudUsageError):
    """Tags break AWS's rules: too many, a key or value too long, a reserved `aws:` key."""


class BulkInputError(CloudUsageError):
    """A bulk deployment's input file can't be read: no such object, bucket or file, too large."""

    def __init__(self, uri: str, problem: str) -> None:
        self.uri = uri
        super().__init__("--input-file-uri", f"{uri}: {problem}")


class RolloutSettingsError(CloudUsageError):
    """A rollout setting (`--max-per-second`, an `edge:` tag, ...) has a value it can't take."""


class V1ImportError(EdgeError):
    """Reading a Greengrass V1 account failed (credentials, endpoint, access, a missing group)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"import-greengrass: {problem}")
