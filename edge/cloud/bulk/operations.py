# SPDX-License-Identifier: Apache-2.0
"""The five bulk deployment operations over a `BulkStore`, as the API and `edge cloud` run them.

Each takes the operation's decoded input (named as in botocore's model) and answers its output
shape. StartBulkDeployment checks the request and that the input file is there, then records
the bulk deployment as Initializing and answers at once; a runner (`edge.cloud.bulk.runner`)
reads the file and deploys. Under the service's dispatcher an `AmznClientToken` is honoured
when `store.create` writes in the transaction that records the token.
"""

from __future__ import annotations

from typing import Any

from edge.cloud.bulk import api
from edge.cloud.bulk.input import check
from edge.cloud.bulk.state import BulkEvent, IllegalBulkTransitionError
from edge.cloud.bulk.store import BulkStore
from edge.cloud.ids import Arns
from edge.config import AwsSettings

Result = dict[str, Any]


async def start_bulk_deployment(
    store: BulkStore, arns: Arns, aws: AwsSettings, params: dict[str, Any], *, local: bool = False
) -> Result:
    """StartBulkDeployment: check, record as Initializing, answer the ARN and id.

    Args:
        store: Where bulk deployments are kept.
        arns: The control plane's ARNs.
        aws: Where S3 is, for the input file.
        params: ExecutionRoleArn, InputFileUri, tags.
        local: Take a local path as InputFileUri (the CLI).

    Raises:
        CloudUsageError: The request is malformed, or the input file is missing, unreadable
            or too large (BulkInputError); nothing is recorded.
    """
    request = api.start_request(params, allow_local=local)
    found = await check(request.location, aws)
    bulk = api.new_bulk_deployment(request, arns, input_etag=found.etag)
    await store.create(bulk)
    return api.start_answer(bulk)


async def get_bulk_deployment_status(store: BulkStore, params: dict[str, Any]) -> Result:
    """GetBulkDeploymentStatus. Raises NotFoundError."""
    return api.status_answer(await store.get(params["BulkDeploymentId"]))


async def list_bulk_deployments(store: BulkStore, params: dict[str, Any]) -> Result:
    """ListBulkDeployments, one page, newest first."""
    page = api.page(params)
    bulks = await store.listing(page.after, page.size + 1)
    more = len(bulks) > page.size
    token = api.next_token(page.after + page.size) if more else None
    return api.list_answer(bulks[: page.size], token)


async def list_bulk_deployment_detailed_reports(
    store: BulkStore, arns: Arns, params: dict[str, Any]
) -> Result:
    """ListBulkDeploymentDetailedReports, one page, in line order. Raises NotFoundError."""
    bulk_id = params["BulkDeploymentId"]
    await store.get(bulk_id)
    page = api.page(params)
    rows = await store.results(bulk_id, page.after, page.size + 1)
    shown = rows[: page.size]
    token = api.next_token(shown[-1].line) if len(rows) > page.size else None
    return api.report_answer(shown, arns, token)


async def stop_bulk_deployment(store: BulkStore, params: dict[str, Any]) -> Result:
    """StopBulkDeployment: Stopping, until its runner has stopped starting groups.

    Raises:
        NotFoundError: No such bulk deployment.
        CloudUsageError: It has already ended.
    """
    bulk = await store.get(params["BulkDeploymentId"])
    api.stop(bulk)
    try:
        await store.transition(bulk.id, None, BulkEvent.STOP)
    except IllegalBulkTransitionError as exc:
        # It ended between the read and the stop.
        raise api.ended(bulk.id, exc.state) from None
    return {}
