# SPDX-License-Identifier: Apache-2.0
"""The bulk deployment operations' inputs and answers, in botocore's greengrass shapes.

Pure functions between the API's decoded input and the records of `edge.cloud.bulk.records`:
StartBulkDeployment, GetBulkDeploymentStatus, ListBulkDeployments,
ListBulkDeploymentDetailedReports and StopBulkDeployment answer exactly the members the model
defines, so the official AWS CLI and boto3 read them unchanged.

Rollout settings travel as tags with an `edge:` prefix (`edge:max-per-second`, ...): botocore
refuses parameters its model doesn't define, and `tags` is the one free-form map that
StartBulkDeployment takes. They stay on the bulk deployment as tags, so GetBulkDeploymentStatus
shows how it is rolled out.

`X-Amzn-Client-Token` (AmznClientToken) needs nothing here: the service's dispatcher answers a
repeated token with the first answer (`edge.cloud.idempotency`), provided the bulk deployment
is recorded in the transaction that records the token.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from edge.cloud.bulk.input import Location, parse_location
from edge.cloud.bulk.records import BulkDeployment, BulkDeploymentResult, ErrorDetail, RecordState
from edge.cloud.bulk.rollout import NAMES, RolloutSettings, parse_settings
from edge.cloud.bulk.state import BulkEvent, BulkState, next_state
from edge.cloud.errors import CloudUsageError, RolloutSettingsError
from edge.cloud.ids import Arns, milliseconds, new_id, precise_timestamp
from edge.cloud.tags import check_tags

#: The prefix of the tags that carry rollout settings.
EDGE_TAG_PREFIX: Final = "edge:"
#: Items in a page when the request gives no MaxResults. The lists can be long (a line per
#: group), so unlike the definition lists they are always paged; botocore's paginators and the
#: AWS CLI follow NextToken on their own.
DEFAULT_PAGE_SIZE: Final = 1000
#: An IAM role ARN, as ExecutionRoleArn names one.
_ROLE_ARN: Final = re.compile(
    r"arn:aws(?:-[a-z]+)*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}", re.ASCII
)
#: What a line that never became a deployment shows as its DeploymentStatus.
INVALID_STATUS: Final = "Failure"
INVALID_CODE: Final = "InvalidInputRecord"


@dataclass(frozen=True, slots=True)
class StartRequest:
    """A checked StartBulkDeployment (or `edge cloud start-bulk-deployment`)."""

    location: Location
    execution_role_arn: str
    tags: dict[str, str]
    rollout: RolloutSettings


@dataclass(frozen=True, slots=True)
class Page:
    """Which slice of a list to answer: items after `after`, at most `size` of them.

    `after` is a line number for a detailed report and a position for the list of bulk
    deployments; the token is opaque to callers either way.
    """

    after: int
    size: int


def start_request(params: Mapping[str, Any], *, allow_local: bool = False) -> StartRequest:
    """Check StartBulkDeployment's input.

    Args:
        params: Decoded input, named as in the model (ExecutionRoleArn, InputFileUri, tags).
        allow_local: Take a local path as InputFileUri (the CLI reading its own file).

    Raises:
        CloudUsageError: A member is missing or malformed; BulkInputError for the URI,
            TagsInvalidError for the tags, RolloutSettingsError for an `edge:` tag.
    """
    role = params.get("ExecutionRoleArn")
    if not isinstance(role, str) or _ROLE_ARN.fullmatch(role) is None:
        raise CloudUsageError(
            "--execution-role-arn",
            f"{str(role)[:80]!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)",
        )
    uri = params.get("InputFileUri")
    if not isinstance(uri, str):
        raise CloudUsageError("--input-file-uri", "is required: s3://BUCKET/KEY of the input file")
    location = parse_location(uri, allow_local=allow_local)
    tags = check_tags(params.get("tags") or {})
    return StartRequest(location, role, tags, rollout_from_tags(tags))


def rollout_from_tags(tags: Mapping[str, str]) -> RolloutSettings:
    """The rollout settings carried by `edge:` tags.

    Raises:
        RolloutSettingsError: An `edge:` tag edge doesn't know, or a value out of range.
    """
    values: dict[str, object] = {}
    for key, value in tags.items():
        if not key.startswith(EDGE_TAG_PREFIX):
            continue
        name = key.removeprefix(EDGE_TAG_PREFIX)
        if name not in NAMES:
            known = ", ".join(EDGE_TAG_PREFIX + n for n in NAMES)
            raise RolloutSettingsError(f"tags: {key}", f"is not a rollout setting ({known})")
        values[name] = value
    spelled = {name: f"tags: {EDGE_TAG_PREFIX}{name}" for name in NAMES}
    return parse_settings(values, spelled=spelled)


def with_rollout_options(tags: Mapping[str, str], options: Mapping[str, object]) -> dict[str, str]:
    """`edge cloud start-bulk-deployment`'s rollout options as `edge:` tags, added to `--tags`.

    The command sends its settings the way the API takes them, so both paths store and run a
    bulk deployment alike.

    Args:
        tags: `--tags`, checked.
        options: By the names in `rollout.NAMES` (`max-per-second`, ...); None is not given.

    Raises:
        RolloutSettingsError: A value is bad (named as the option, or as the tag it came in),
            or `--tags` gives the same setting another value.
    """
    merged = dict(tags)
    given = {name: str(value) for name, value in options.items() if value is not None}
    for name, text in given.items():
        key = EDGE_TAG_PREFIX + name
        if merged.get(key, text) != text:
            raise RolloutSettingsError(
                f"--{name}", f"{text} contradicts --tags {key}={merged[key]}"
            )
        merged[key] = text
    # A setting that came only in --tags is named as that tag; any other as its option.
    from_tags = {n for n in NAMES if EDGE_TAG_PREFIX + n in tags and n not in given}
    spelled = {n: f"tags: {EDGE_TAG_PREFIX}{n}" if n in from_tags else f"--{n}" for n in NAMES}
    values = {n: merged.get(EDGE_TAG_PREFIX + n) for n in NAMES}
    parse_settings(values, spelled=spelled)
    return merged


def new_bulk_deployment(
    request: StartRequest, arns: Arns, *, input_etag: str | None = None
) -> BulkDeployment:
    """The record of a bulk deployment just started: Initializing, nothing read yet."""
    bulk_id = new_id()
    return BulkDeployment(
        id=bulk_id,
        arn=arns.bulk_deployment(bulk_id),
        created_at=precise_timestamp(),
        input_uri=request.location.uri,
        execution_role_arn=request.execution_role_arn,
        input_etag=input_etag,
        tags=dict(request.tags),
        rollout=request.rollout,
    )


def start_answer(bulk: BulkDeployment) -> dict[str, Any]:
    """StartBulkDeploymentResponse."""
    return {"BulkDeploymentArn": bulk.arn, "BulkDeploymentId": bulk.id}


def status_answer(bulk: BulkDeployment) -> dict[str, Any]:
    """GetBulkDeploymentStatusResponse."""
    answer: dict[str, Any] = {
        "BulkDeploymentMetrics": {
            "InvalidInputRecords": bulk.invalid_input_records,
            "RecordsProcessed": bulk.records_processed,
            "RetryAttempts": bulk.retry_attempts,
        },
        "BulkDeploymentStatus": bulk.state.value,
        "CreatedAt": milliseconds(bulk.created_at),
        "tags": dict(bulk.tags),
    }
    if bulk.error_message is not None:
        answer["ErrorMessage"] = bulk.error_message
    if bulk.error_details:
        answer["ErrorDetails"] = _details(bulk.error_details)
    return answer


def list_answer(bulks: Iterable[BulkDeployment], next_token: str | None) -> dict[str, Any]:
    """ListBulkDeploymentsResponse for one page."""
    answer: dict[str, Any] = {
        "BulkDeployments": [
            {
                "BulkDeploymentArn": b.arn,
                "BulkDeploymentId": b.id,
                "CreatedAt": milliseconds(b.created_at),
            }
            for b in bulks
        ]
    }
    if next_token is not None:
        answer["NextToken"] = next_token
    return answer


def report_answer(
    results: Iterable[BulkDeploymentResult], arns: Arns, next_token: str | None
) -> dict[str, Any]:
    """ListBulkDeploymentDetailedReportsResponse for one page, a line per item.

    A line that never became a deployment shows as a `Failure` with no DeploymentId, its line
    number and reason in ErrorMessage, and `InvalidInputRecord` in ErrorDetails. A record
    started and not yet created shows as `Building`, as the deployment it is becoming.
    """
    answer: dict[str, Any] = {"Deployments": [_result(r, arns) for r in results]}
    if next_token is not None:
        answer["NextToken"] = next_token
    return answer


def _result(result: BulkDeploymentResult, arns: Arns) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if result.group_id is not None:
        item["GroupArn"] = arns.group(result.group_id)
    if result.deployment_type is not None:
        item["DeploymentType"] = result.deployment_type
    if result.state is RecordState.INVALID:
        reason = result.error_message or "invalid record"
        item["DeploymentStatus"] = INVALID_STATUS
        item["ErrorMessage"] = f"line {result.line}: {reason}"
        item["ErrorDetails"] = _details(
            result.error_details or (ErrorDetail(INVALID_CODE, reason),)
        )
        return item
    if result.deployment_id is not None and result.group_id is not None:
        item["DeploymentId"] = result.deployment_id
        item["DeploymentArn"] = arns.deployment(result.group_id, result.deployment_id)
    if result.created_at is not None:
        item["CreatedAt"] = milliseconds(result.created_at)
    item["DeploymentStatus"] = result.deployment_status or "Building"
    if result.error_message is not None:
        item["ErrorMessage"] = result.error_message
    if result.error_details:
        item["ErrorDetails"] = _details(result.error_details)
    return item


def _details(details: Iterable[ErrorDetail]) -> list[dict[str, str]]:
    return [{"DetailedErrorCode": d.code, "DetailedErrorMessage": d.message} for d in details]


def stop(bulk: BulkDeployment) -> BulkState:
    """The state StopBulkDeployment moves a bulk deployment to (Stopping).

    Raises:
        CloudUsageError: It has already ended (Completed, Stopped or Failed).
    """
    if bulk.state.is_final:
        raise ended(bulk.id, bulk.state)
    return next_state(bulk.state, BulkEvent.STOP)


def ended(bulk_id: str, state: BulkState) -> CloudUsageError:
    """The refusal to stop a bulk deployment that has ended."""
    return CloudUsageError(
        "--bulk-deployment-id",
        f"bulk deployment {bulk_id} is {state.value}: there is nothing left to stop",
    )


def page(params: Mapping[str, Any]) -> Page:
    """The page a List request asks for (MaxResults, NextToken).

    Raises:
        CloudUsageError: MaxResults is not a positive whole number, or NextToken is not one
            this service issued.
    """
    size_text = params.get("MaxResults")
    size = DEFAULT_PAGE_SIZE
    if size_text is not None:
        text = str(size_text)
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise CloudUsageError("MaxResults", f"must be a positive integer, not {text[:20]!r}")
        size = int(text)
    token = params.get("NextToken")
    return Page(0 if token is None else _after(str(token)), size)


def next_token(after: int) -> str:
    """The NextToken of a page whose last item is `after`."""
    return base64.urlsafe_b64encode(f"bulk:{after}".encode()).decode()


def _after(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        text = ""
    kind, _, number = text.partition(":")
    if kind != "bulk" or not (number.isascii() and number.isdigit()):
        raise CloudUsageError("NextToken", "is not a token this service issued")
    return int(number)
