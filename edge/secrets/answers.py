# SPDX-License-Identifier: Apache-2.0
"""Reading Secrets Manager's answers: its errors as ours, versions, batch entries, progress.

What `edge.secrets.fetch.AwsSecretSource` needs to make sense of what comes back, apart from
the calls themselves: botocore's exceptions mapped to `SecretFetchError` subclasses (never
quoting a message or body, which may hold a value), a `SecretVersion` built from an answer,
BatchGetSecretValue entries paired with the ids asked for, and one fetch's progress.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from edge.errors import (
    SecretAccessDeniedError,
    SecretFetchError,
    SecretNotFoundError,
    SecretServiceError,
)
from edge.secrets.contents import SecretVersion

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from edge.model import SecretResource

ACCESS_DENIED: Final = "AccessDeniedException"
NOT_FOUND: Final = "ResourceNotFoundException"
#: The secret's state forbids the read, usually a pending deletion.
INVALID_STATE: Final = "InvalidRequestException"

#: How a Secrets Manager error code becomes our exception; anything else is SecretServiceError.
_ERRORS_BY_CODE: Final[Mapping[str, Callable[[str, str], SecretFetchError]]] = {
    NOT_FOUND: lambda arn, _detail: SecretNotFoundError(arn),
    ACCESS_DENIED: SecretAccessDeniedError,
}


def error_code(exc: Any) -> tuple[str, int | None]:  # noqa: ANN401 - botocore has no stubs
    """Return a ClientError's error code and HTTP status."""
    response: Mapping[str, Any] = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code") or "Unknown")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code, status if isinstance(status, int) else None


def _client_error_detail(exc: Any) -> str:  # noqa: ANN401 - botocore has no stubs
    """Summarise a ClientError as code, status and attempts, never its message or body."""
    code, status = error_code(exc)
    response: Mapping[str, Any] = getattr(exc, "response", None) or {}
    retries = response.get("ResponseMetadata", {}).get("RetryAttempts")
    detail = code if status is None else f"{code} (HTTP {status})"
    if isinstance(retries, int) and retries > 0:
        detail += f" after {retries + 1} attempts"
    return detail


def _botocore_error_detail(exc: BotoCoreError) -> str:
    """Summarise a transport-level error by type and endpoint.

    The messages of some BotoCoreErrors (ResponseParserError) quote the response body, which
    may hold a secret value; the type name and endpoint URL are all a user needs, with a hint
    when nothing could be reached at all (refused, unresolvable or timed-out connections).
    """
    detail = type(exc).__name__
    url = getattr(exc, "kwargs", {}).get("endpoint_url")
    if url and isinstance(exc, EndpointConnectionError):
        return (
            f"can't connect to {url} ({detail}); check [aws] endpoint_url and the network "
            f"to Secrets Manager"
        )
    return f"{detail} for {url}" if url else detail


@contextlib.contextmanager
def map_exceptions(arn: str, *, operation: str = "GetSecretValue") -> Iterator[None]:
    """Translate botocore's exceptions about one secret into `SecretFetchError` subclasses.

    Args:
        arn: The secret the call was about, as the resource names it.
        operation: The API operation, named in service errors.

    Raises:
        SecretFetchError: The subclass for the error code (see `_ERRORS_BY_CODE`), or
            SecretServiceError for anything else that is left after botocore's retries.
    """
    try:
        yield
    except ClientError as exc:
        code, _status = error_code(exc)
        detail = f"{operation}: {_client_error_detail(exc)}"
        factory = _ERRORS_BY_CODE.get(code)
        if factory is None:
            raise SecretServiceError(arn, detail, error_code=code) from exc
        raise factory(arn, detail) from exc
    except BotoCoreError as exc:
        raise SecretServiceError(arn, f"{operation}: {_botocore_error_detail(exc)}") from exc


def _version(arn: str, answer: Mapping[str, Any]) -> SecretVersion:
    """Build a SecretVersion from a GetSecretValue answer or a BatchGetSecretValue entry.

    Raises:
        SecretServiceError: The answer lacks a VersionId, or carries no value or both.
    """
    try:
        created = answer.get("CreatedDate")
        binary = answer.get("SecretBinary")
        return SecretVersion(
            version_id=str(answer["VersionId"]),
            version_stages=tuple(str(s) for s in answer.get("VersionStages", ())),
            created_date=created.timestamp() if created is not None else 0.0,
            secret_string=answer.get("SecretString"),
            secret_binary=bytes(binary) if binary is not None else None,
        )
    except KeyError as exc:
        raise SecretServiceError(arn, f"answer without {exc.args[0]}") from exc
    except (ValueError, TypeError, AttributeError) as exc:
        # Name the kind of problem only: the message could quote what the answer held.
        raise SecretServiceError(arn, f"unexpected answer ({type(exc).__name__})") from exc


def match_batch(
    asked: Mapping[str, str],
    values: Sequence[Mapping[str, Any]],
    errors: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, Mapping[str, Any]], dict[str, str]]:
    """Pair each id asked for with its entry in a BatchGetSecretValue answer.

    Secrets Manager answers with the secret's full ARN and Name, whatever id it was given.
    Exact ARN matches claim their entries first; only then is a leftover entry matched by
    name (an emulator that spells ARNs its own way, an id that is a name or partial ARN).
    Claiming keeps a stale ARN of a secret deleted and re-created under the same name from
    taking the new secret's value when both are asked for.

    Args:
        asked: Id asked for (the resource's ARN) -> the secret name parsed from it.
        values: The `SecretValues` entries.
        errors: The `Errors` entries.

    Returns:
        Id -> its `SecretValues` entry, and id -> `ErrorCode` for ids with an `Errors` entry.
        Ids in neither were not answered.
    """
    unclaimed = list(values)
    matched: dict[str, Mapping[str, Any]] = {}
    for by_name in (False, True):
        for secret_id, name in asked.items():
            if secret_id in matched:
                continue
            for entry in unclaimed:
                if _same_name(secret_id, name, entry) if by_name else entry.get("ARN") == secret_id:
                    matched[secret_id] = entry
                    unclaimed.remove(entry)
                    break
    codes: dict[str, str] = {}
    for entry in errors:
        secret_id = str(entry.get("SecretId", ""))
        owner = secret_id if secret_id in asked else None
        owner = owner or next((i for i, n in asked.items() if secret_id == n), None)
        if owner is not None and owner not in matched:
            codes.setdefault(owner, str(entry.get("ErrorCode", "Unknown")))
    return matched, codes


def _same_name(secret_id: str, secret_name: str, entry: Mapping[str, Any]) -> bool:
    """Tell whether a batch entry names the secret an id points to, other than by equal ARN."""
    arn = str(entry.get("ARN", ""))
    name = str(entry.get("Name", ""))
    if name in (secret_id, secret_name):
        return True
    # A partial ARN is the full one less its "-" and 6 random characters.
    return arn.startswith(f"{secret_id}-") and len(arn) == len(secret_id) + 7


@dataclass(slots=True)
class FetchProgress:
    """The state of one `fetch`: the pairs wanted and the versions that have arrived."""

    #: ARN -> labels wanted for it, AWSCURRENT first.
    wanted: dict[str, tuple[str, ...]]
    #: ARN -> secret name from the model, to match batch answers.
    names_asked: dict[str, str]
    #: ARN -> label -> version received.
    received: dict[str, dict[str, SecretVersion]] = field(default_factory=dict)
    #: ARN -> the secret's Name as Secrets Manager answered.
    names: dict[str, str] = field(default_factory=dict)
    #: ARN -> VersionId -> the wanted labels DescribeSecret placed on that version, which
    #: the core lacks: fetched by VersionId, exactly the version described.
    by_version: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)

    def planned(self, arn: str, label: str) -> bool:
        """Tell whether the pair is fetched by VersionId."""
        return any(label in labels for labels in self.by_version.get(arn, {}).values())

    @property
    def total(self) -> int:
        """Return how many pairs the fetch needs."""
        return sum(len(labels) for labels in self.wanted.values())

    @property
    def done(self) -> int:
        """Return how many pairs have arrived."""
        return sum(len(by_label) for by_label in self.received.values())

    def has(self, arn: str, label: str) -> bool:
        """Tell whether the pair has already arrived."""
        return label in self.received.get(arn, {})

    def reuse(self, arn: str, name: str, by_label: Mapping[str, SecretVersion]) -> None:
        """Take held versions for some of the secret's pairs: no call is needed for them."""
        self.names.setdefault(arn, name)
        self.received.setdefault(arn, {}).update(by_label)

    def record(self, arn: str, label: str, answer: Mapping[str, Any]) -> None:
        """Keep an answer for the pair, and for every wanted label its version also carries.

        An answer lists all the labels on its version, so a deployment whose extra labels sit
        on the AWSCURRENT version needs no call for them once that answer is in.
        """
        version = _version(arn, answer)
        self.names.setdefault(arn, str(answer.get("Name", "")))
        by_label = self.received.setdefault(arn, {})
        by_label.setdefault(label, version)
        for stage in version.version_stages:
            if stage in self.wanted[arn]:
                by_label.setdefault(stage, version)


def wanted_pairs(
    resources: Sequence[SecretResource],
) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """Return the labels needed per ARN (merged across resources) and each ARN's name."""
    wanted: dict[str, dict[str, None]] = {}
    names: dict[str, str] = {}
    for resource in resources:
        # A dict keeps first-seen order without duplicates; AWSCURRENT stays first.
        labels = wanted.setdefault(resource.arn, {})
        labels.update(dict.fromkeys(resource.labels))
        names.setdefault(resource.arn, resource.secret_name)
    return {arn: tuple(labels) for arn, labels in wanted.items()}, names
