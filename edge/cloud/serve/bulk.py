# SPDX-License-Identifier: Apache-2.0
"""The API's bulk deployment operations, over the shared database (`edge.cloud.bulk`).

Each request gets a store on its own (possibly claiming) database thread, so that
StartBulkDeployment records the bulk deployment in the transaction that records its client
token and signature. The replica's `BulkSupervisor` is woken once one is recorded, and runs it
(or another replica's adopts it, whichever comes first).
"""

from __future__ import annotations

from typing import Any

from edge.cloud.bulk import operations
from edge.cloud.bulk.sqlstore import SqlBulkStore
from edge.cloud.serve.context import Context, Handler, Result


async def _start(ctx: Context, p: dict[str, Any]) -> Result:
    result = await operations.start_bulk_deployment(
        SqlBulkStore(ctx.db.call), ctx.arns, ctx.config.aws, p
    )
    ctx.wake_bulk()
    ctx.log.info("cloud.bulk.started", bulk_deployment_id=result["BulkDeploymentId"])
    return result


async def _status(ctx: Context, p: dict[str, Any]) -> Result:
    return await operations.get_bulk_deployment_status(SqlBulkStore(ctx.db.call), p)


async def _list(ctx: Context, p: dict[str, Any]) -> Result:
    return await operations.list_bulk_deployments(SqlBulkStore(ctx.db.call), p)


async def _reports(ctx: Context, p: dict[str, Any]) -> Result:
    return await operations.list_bulk_deployment_detailed_reports(
        SqlBulkStore(ctx.db.call), ctx.arns, p
    )


async def _stop(ctx: Context, p: dict[str, Any]) -> Result:
    result = await operations.stop_bulk_deployment(SqlBulkStore(ctx.db.call), p)
    ctx.log.info("cloud.bulk.stop_requested", bulk_deployment_id=p["BulkDeploymentId"])
    return result


def handlers() -> dict[str, Handler]:
    """The bulk deployment operations, by botocore operation name."""
    return {
        "StartBulkDeployment": _start,
        "GetBulkDeploymentStatus": _status,
        "ListBulkDeployments": _list,
        "ListBulkDeploymentDetailedReports": _reports,
        "StopBulkDeployment": _stop,
    }


#: Operations that answer one page themselves (their NextToken is theirs, not `paginate`'s).
PAGED: frozenset[str] = frozenset({"ListBulkDeployments", "ListBulkDeploymentDetailedReports"})
