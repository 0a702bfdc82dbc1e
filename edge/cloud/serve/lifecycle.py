# SPDX-License-Identifier: Apache-2.0
"""The API's lifecycle operations: renames, deletes, resets and tags.

Each hands its decoded input to the function the matching `edge cloud` command calls, as the
rest of `operations` does.
"""

from __future__ import annotations

from typing import Any

from edge.cloud import deployments, groups, tags
from edge.cloud.definitions import KINDS, Kind, update_definition
from edge.cloud.serve.context import Context, Handler, Result


def _update_definition(kind: Kind) -> Handler:
    id_key = f"{kind.noun.capitalize()}DefinitionId"

    async def update(ctx: Context, p: dict[str, Any]) -> Result:
        await ctx.db.call(lambda db: update_definition(db, kind, p[id_key], p.get("Name")))
        return {}

    return update


async def _update_group(ctx: Context, p: dict[str, Any]) -> Result:
    await ctx.db.call(lambda db: groups.update_group(db, p["GroupId"], p.get("Name")))
    return {}


async def _delete_group(ctx: Context, p: dict[str, Any]) -> Result:
    await ctx.db.call(lambda db: groups.delete_group(db, p["GroupId"]))
    return {}


async def _reset_deployments(ctx: Context, p: dict[str, Any]) -> Result:
    created: Result = {}
    await deployments.reset_deployments(
        ctx.config,
        ctx.loop_db,
        ctx.signing_key,
        p["GroupId"],
        force=bool(p.get("Force", False)),
        on_created=created.update,
        # A forced reset records itself when the broker can't be reached, which takes a
        # connection of its own to find out at once; any other goes through the outbox.
        drain=None if p.get("Force") else ctx.drain,
    )
    ctx.log.info(
        "cloud.deployment.created",
        deployment_id=created["DeploymentId"],
        group_id=p["GroupId"],
        deployment_type="ResetDeployment",
        force=bool(p.get("Force", False)),
    )
    return created


async def _tag_resource(ctx: Context, p: dict[str, Any]) -> Result:
    await ctx.db.call(lambda db: tags.tag_resource(db, p["ResourceArn"], p.get("tags", {})))
    return {}


async def _untag_resource(ctx: Context, p: dict[str, Any]) -> Result:
    await ctx.db.call(lambda db: tags.untag_resource(db, p["ResourceArn"], p["TagKeys"]))
    return {}


async def _list_tags(ctx: Context, p: dict[str, Any]) -> Result:
    return await ctx.db.call(lambda db: tags.list_tags(db, p["ResourceArn"]))


def handlers() -> dict[str, Handler]:
    """The lifecycle operations, by botocore operation name."""
    table: dict[str, Handler] = {
        f"Update{kind.noun.capitalize()}Definition": _update_definition(kind)
        for kind in KINDS.values()
    }
    return table | {
        "UpdateGroup": _update_group,
        "DeleteGroup": _delete_group,
        "ResetDeployments": _reset_deployments,
        "TagResource": _tag_resource,
        "UntagResource": _untag_resource,
        "ListTagsForResource": _list_tags,
    }
