"""Bulk deployment API shapes: inputs checked, answers exactly as botocore's model defines them."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import botocore
import pytest
from botocore.model import ServiceModel
from botocore.validate import ParamValidator
from hypothesis import given
from hypothesis import strategies as st

from edge.cloud.bulk import api
from edge.cloud.bulk.records import BulkDeployment, BulkDeploymentResult, ErrorDetail, RecordState
from edge.cloud.bulk.rollout import AbortRule, RolloutSettings
from edge.cloud.bulk.state import (
    TRANSITIONS,
    BulkEvent,
    BulkState,
    IllegalBulkTransitionError,
    next_state,
)
from edge.cloud.errors import (
    BulkInputError,
    CloudUsageError,
    RolloutSettingsError,
    TagsInvalidError,
)
from edge.cloud.ids import Arns
from edge.cloud.serve.errors import from_edge_error
from edge.errors import EdgeError

ARNS = Arns("us-east-1", "123456789012")
ROLE = "arn:aws:iam::123456789012:role/bulk-deployer"
GROUP = "11111111-1111-4111-8111-111111111111"


@pytest.fixture(scope="module")
def model() -> ServiceModel:
    path = Path(botocore.__file__).parent / "data/greengrass/2017-06-07/service-2.json.gz"
    with gzip.open(path) as f:
        return ServiceModel(json.load(f), service_name="greengrass")


def assert_shape(model: ServiceModel, operation: str, answer: dict[str, Any]) -> None:
    """The answer has only the model's members, each of the model's type."""
    shape = model.operation_model(operation).output_shape
    report = ParamValidator().validate(answer, shape)
    assert not report.has_errors(), report.generate_report()


def bulk(**changes: Any) -> BulkDeployment:
    values: dict[str, Any] = {
        "id": "b1",
        "arn": ARNS.bulk_deployment("b1"),
        "created_at": "2026-12-05T01:00:00.123456Z",
        "input_uri": "s3://in/list.jsonl",
        "execution_role_arn": ROLE,
    }
    return BulkDeployment(**(values | changes))


def test_a_start_request_is_checked_and_carries_its_rollout() -> None:
    request = api.start_request(
        {
            "ExecutionRoleArn": ROLE,
            "InputFileUri": "s3://in/list.jsonl",
            "tags": {
                "team": "ops",
                "edge:abort-failure-percent": "5",
                "edge:abort-min-finished": "20",
            },
        }
    )
    assert (request.location.bucket, request.location.key) == ("in", "list.jsonl")
    assert request.rollout == RolloutSettings(abort=AbortRule(5, 20))
    assert request.tags["team"] == "ops"
    record = api.new_bulk_deployment(request, ARNS)
    assert record.state is BulkState.INITIALIZING
    assert (
        record.arn
        == f"arn:aws:greengrass:us-east-1:123456789012:/greengrass/bulk/deployments/{record.id}"
    )


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        (
            {"ExecutionRoleArn": "role", "InputFileUri": "s3://b/k"},
            CloudUsageError,
            "ExecutionRoleArn: 'role' is not an IAM role ARN",
        ),
        (
            {"ExecutionRoleArn": ROLE, "InputFileUri": "list.jsonl"},
            BulkInputError,
            "InputFileUri: list.jsonl: must be an s3://BUCKET/KEY URI",
        ),
        (
            {"ExecutionRoleArn": ROLE, "InputFileUri": "s3://b/k", "tags": {"aws:x": "1"}},
            TagsInvalidError,
            "tags:",
        ),
        (
            {"ExecutionRoleArn": ROLE, "InputFileUri": "s3://b/k", "tags": {"edge:speed": "9"}},
            RolloutSettingsError,
            "tags: edge:speed: is not a rollout setting (edge:max-per-second,",
        ),
        (
            {
                "ExecutionRoleArn": ROLE,
                "InputFileUri": "s3://b/k",
                "tags": {"edge:max-per-second": "lots"},
            },
            RolloutSettingsError,
            "tags: edge:max-per-second: must be a number, not 'lots'",
        ),
        (
            {
                "ExecutionRoleArn": ROLE,
                "InputFileUri": "s3://b/k",
                "tags": {"edge:ramp-up-from": "2"},
            },
            RolloutSettingsError,
            "tags: edge:ramp-up-factor: is required with tags: edge:ramp-up-from",
        ),
    ],
)
def test_a_bad_start_request_is_a_bad_request_naming_the_member(
    params: dict[str, Any], error: type[EdgeError], message: str
) -> None:
    """Each refusal is a 400 BadRequestException whose message says what to change."""
    with pytest.raises(error) as caught:
        api.start_request(params)
    answer = from_edge_error(caught.value)
    assert (answer.status, answer.code) == (400, "BadRequestException")
    assert answer.message.startswith(message), answer.message


def test_the_cli_may_name_a_local_file() -> None:
    request = api.start_request(
        {"ExecutionRoleArn": ROLE, "InputFileUri": "groups.jsonl"}, allow_local=True
    )
    assert request.location.path == Path("groups.jsonl")


def test_status_answers_match_the_model(model: ServiceModel) -> None:
    answer = api.status_answer(
        bulk(
            state=BulkState.STOPPED,
            records_processed=40,
            invalid_input_records=2,
            retry_attempts=1,
            tags={"edge:abort-failure-percent": "5"},
            error_message="Stopped by the abort rule: ...",
            error_details=(ErrorDetail("AbortThreshold", "5 of 20 failed"),),
        )
    )
    assert_shape(model, "GetBulkDeploymentStatus", answer)
    assert answer["BulkDeploymentStatus"] == "Stopped"
    assert answer["BulkDeploymentMetrics"] == {
        "InvalidInputRecords": 2,
        "RecordsProcessed": 40,
        "RetryAttempts": 1,
    }
    assert answer["CreatedAt"] == "2026-12-05T01:00:00.123Z"
    fresh = api.status_answer(bulk())
    assert_shape(model, "GetBulkDeploymentStatus", fresh)
    assert "ErrorMessage" not in fresh
    assert "ErrorDetails" not in fresh


def test_list_and_start_answers_match_the_model(model: ServiceModel) -> None:
    assert_shape(model, "StartBulkDeployment", api.start_answer(bulk()))
    listed = api.list_answer([bulk(), bulk(id="b2")], api.next_token(2))
    assert_shape(model, "ListBulkDeployments", listed)
    assert [b["BulkDeploymentId"] for b in listed["BulkDeployments"]] == ["b1", "b2"]
    assert "NextToken" not in api.list_answer([], None)


def test_detailed_reports_match_the_model(model: ServiceModel) -> None:
    """Deployed lines carry their deployment; invalid lines say their line and reason."""
    rows = [
        BulkDeploymentResult(
            1,
            RecordState.CREATED,
            group_id=GROUP,
            deployment_type="NewDeployment",
            deployment_id="d1",
            created_at="2026-12-05T01:00:01.000001Z",
            deployment_status="Success",
        ),
        BulkDeploymentResult(2, RecordState.INVALID, error_message="not JSON: bad"),
        BulkDeploymentResult(
            3, RecordState.STARTED, group_id=GROUP, deployment_type="NewDeployment"
        ),
    ]
    answer = api.report_answer(rows, ARNS, None)
    assert_shape(model, "ListBulkDeploymentDetailedReports", answer)
    done, invalid, starting = answer["Deployments"]
    assert done["DeploymentArn"] == ARNS.deployment(GROUP, "d1")
    assert done["DeploymentStatus"] == "Success"
    assert invalid == {
        "DeploymentStatus": "Failure",
        "ErrorMessage": "line 2: not JSON: bad",
        "ErrorDetails": [
            {"DetailedErrorCode": "InvalidInputRecord", "DetailedErrorMessage": "not JSON: bad"}
        ],
    }
    assert starting["DeploymentStatus"] == "Building"


def test_stopping() -> None:
    """A running or initializing bulk deployment can be stopped; a finished one can't."""
    assert api.stop(bulk(state=BulkState.RUNNING)) is BulkState.STOPPING
    assert api.stop(bulk(state=BulkState.INITIALIZING)) is BulkState.STOPPING
    assert api.stop(bulk(state=BulkState.STOPPING)) is BulkState.STOPPING
    for state in (BulkState.COMPLETED, BulkState.STOPPED, BulkState.FAILED):
        with pytest.raises(CloudUsageError, match=f"is {state.value}: there is nothing left"):
            api.stop(bulk(state=state))


def test_pages() -> None:
    assert api.page({}) == api.Page(0, api.DEFAULT_PAGE_SIZE)
    assert api.page({"MaxResults": "25", "NextToken": api.next_token(75)}) == api.Page(75, 25)
    for bad in ({"MaxResults": "0"}, {"MaxResults": "x"}, {"NextToken": "bm9wZQ=="}):
        with pytest.raises(CloudUsageError):
            api.page(bad)


@given(st.sampled_from(BulkState), st.sampled_from(BulkEvent))
def test_every_state_event_pair_is_in_the_table_or_illegal(
    state: BulkState, event: BulkEvent
) -> None:
    if (state, event) in TRANSITIONS:
        assert next_state(state, event) is TRANSITIONS[(state, event)]
    else:
        with pytest.raises(IllegalBulkTransitionError, match=f"can't handle event {event.value}"):
            next_state(state, event)


def test_final_states_have_no_way_out() -> None:
    for state in BulkState:
        if state.is_final:
            assert not any(s is state for s, _ in TRANSITIONS)


def test_cli_rollout_options_travel_as_edge_tags() -> None:
    """The command's options become the tags the API takes; errors name the option."""
    tags = api.with_rollout_options(
        {"team": "ops", "edge:abort-min-finished": "10"},
        {"max-per-second": 20.0, "abort-failure-percent": "5", "ramp-up-from": None},
    )
    assert tags == {
        "team": "ops",
        "edge:max-per-second": "20.0",
        "edge:abort-failure-percent": "5",
        "edge:abort-min-finished": "10",
    }
    assert api.rollout_from_tags(tags) == RolloutSettings(max_per_second=20, abort=AbortRule(5, 10))
    with pytest.raises(RolloutSettingsError, match=r"^--max-per-second: must be a number more"):
        api.with_rollout_options({}, {"max-per-second": -1})
    with pytest.raises(RolloutSettingsError, match=r"^--abort-min-finished: is required with"):
        api.with_rollout_options({}, {"abort-failure-percent": 5})
    with pytest.raises(
        RolloutSettingsError, match=r"^--max-per-second: 9 contradicts --tags edge:max-per-second=5"
    ):
        api.with_rollout_options({"edge:max-per-second": "5"}, {"max-per-second": 9})
