# SPDX-License-Identifier: Apache-2.0
"""The API's operations, each handed to the function its `edge cloud` command calls.

There is one implementation of the control plane: `edge.cloud.definitions`, `.groups` and
`.deployments`. This table only takes each operation's decoded input (named as in botocore's
model: `ResourceDefinitionId`, `InitialVersion`, ...) to the same call the CLI makes with its
options, so a request is validated, stored and answered exactly as the command would be.

Blocking database work runs on the service's database thread. `CreateDeployment` is async in
the shared code (it publishes over MQTT); it runs on the event loop with a connection of its
own, and its database transactions are a few milliseconds each and never span an `await`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from dataclasses import replace
from typing import Any, Final

from edge.cloud import definitions, deployment_reads, deployments, groups, idempotency, lambdacode
from edge.cloud.db import Claim
from edge.cloud.definitions import KINDS, Kind
from edge.cloud.deployments import Request
from edge.cloud.errors import CloudDatabaseError
from edge.cloud.serve import bulk, lifecycle, stored
from edge.cloud.serve.context import Context, Handler, Result
from edge.cloud.serve.errors import bad_request

#: The list each List operation answers with, for pagination.
_LISTS: Final = ("Definitions", "Versions", "Groups", "Deployments")


def _definition_handlers(kind: Kind) -> dict[str, Handler]:
    title = kind.noun.capitalize()
    id_key, version_key = f"{title}DefinitionId", f"{title}DefinitionVersionId"

    async def create(ctx: Context, p: dict[str, Any]) -> Result:
        result = await ctx.db.call(
            lambda db: definitions.create_definition(
                db,
                ctx.arns,
                kind,
                name=p.get("Name"),
                initial=p.get("InitialVersion"),
                tags=p.get("tags"),
            )
        )
        await _warn_code(ctx, kind, p.get("InitialVersion"))
        return result

    async def create_version(ctx: Context, p: dict[str, Any]) -> Result:
        body = {k: p[k] for k in (kind.list_key, "DefaultConfig") if k in p}
        result = await ctx.db.call(
            lambda db: definitions.create_version(db, ctx.arns, kind, p[id_key], body)
        )
        await _warn_code(ctx, kind, body)
        return result

    async def get(ctx: Context, p: dict[str, Any]) -> Result:
        return await ctx.db.call(lambda db: definitions.get_definition(db, kind, p[id_key]))

    async def get_version(ctx: Context, p: dict[str, Any]) -> Result:
        return await ctx.db.call(
            lambda db: definitions.get_version(db, kind, p[id_key], p[version_key])
        )

    async def list_all(ctx: Context, _p: dict[str, Any]) -> Result:
        return await ctx.db.call(lambda db: definitions.list_definitions(db, kind))

    async def list_versions(ctx: Context, p: dict[str, Any]) -> Result:
        return await ctx.db.call(lambda db: definitions.list_versions(db, kind, p[id_key]))

    async def delete(ctx: Context, p: dict[str, Any]) -> Result:
        await ctx.db.call(lambda db: definitions.delete_definition(db, kind, p[id_key]))
        return {}

    return {
        f"Create{title}Definition": create,
        f"Create{title}DefinitionVersion": create_version,
        f"Get{title}Definition": get,
        f"Get{title}DefinitionVersion": get_version,
        f"List{title}Definitions": list_all,
        f"List{title}DefinitionVersions": list_versions,
        f"Delete{title}Definition": delete,
    }


async def _warn_code(ctx: Context, kind: Kind, version: object) -> None:
    """Log at once each function whose code is neither published nor in AWS Lambda.

    The API's answer has no field for a warning, so the service log is where it goes.
    """
    if kind.segment != "functions" or version is None:
        return
    for warning in await lambdacode.missing_functions(ctx.config, ctx.loop_db, version):
        ctx.log.warning("cloud.function.code_missing", problem=warning)


async def _create_group(ctx: Context, p: dict[str, Any]) -> Result:
    return await ctx.db.call(
        lambda db: groups.create_group(
            db, ctx.arns, name=p["Name"], initial=p.get("InitialVersion"), tags=p.get("tags")
        )
    )


async def _create_group_version(ctx: Context, p: dict[str, Any]) -> Result:
    refs = {k: v for k, v in p.items() if k.endswith("DefinitionVersionArn")}
    return await ctx.db.call(
        lambda db: groups.create_group_version(db, ctx.arns, p["GroupId"], refs)
    )


async def _get_group(ctx: Context, p: dict[str, Any]) -> Result:
    return await ctx.db.call(lambda db: groups.get_group(db, p["GroupId"]))


async def _get_group_version(ctx: Context, p: dict[str, Any]) -> Result:
    return await ctx.db.call(
        lambda db: groups.get_group_version(db, p["GroupId"], p["GroupVersionId"])
    )


async def _list_groups(ctx: Context, _p: dict[str, Any]) -> Result:
    return await ctx.db.call(groups.list_groups)


async def _list_group_versions(ctx: Context, p: dict[str, Any]) -> Result:
    return await ctx.db.call(lambda db: groups.list_group_versions(db, p["GroupId"]))


async def _create_deployment(ctx: Context, p: dict[str, Any]) -> Result:
    kind = p["DeploymentType"]
    request = Request(
        group_id=p["GroupId"],
        deployment_type=kind,
        group_version_id=p.get("GroupVersionId"),
        redeploy_of=p.get("DeploymentId"),
    )
    created: Result = {}
    notes: list[str] = []
    await deployments.create_deployment(
        ctx.config,
        ctx.loop_db,
        ctx.signing_key,
        request,
        on_created=created.update,
        on_note=notes.append,
        drain=ctx.drain,
    )
    ctx.log.info(
        "cloud.deployment.created",
        deployment_id=created["DeploymentId"],
        group_id=request.group_id,
        deployment_type=kind,
        **({"note": notes[0]} if notes else {}),
    )
    return created


async def _get_deployment_status(ctx: Context, p: dict[str, Any]) -> Result:
    return await ctx.db.call(
        lambda db: deployment_reads.recorded_status(db, p["GroupId"], p["DeploymentId"])
    )


async def _list_deployments(ctx: Context, p: dict[str, Any]) -> Result:
    return await ctx.db.call(lambda db: deployment_reads.list_deployments(db, p["GroupId"]))


def _table() -> dict[str, Handler]:
    table: dict[str, Handler] = {}
    for kind in KINDS.values():
        table |= _definition_handlers(kind)
    return (
        table
        | lifecycle.handlers()
        | stored.handlers()
        | bulk.handlers()
        | {
            "CreateGroup": _create_group,
            "CreateGroupVersion": _create_group_version,
            "GetGroup": _get_group,
            "GetGroupVersion": _get_group_version,
            "ListGroups": _list_groups,
            "ListGroupVersions": _list_group_versions,
            "CreateDeployment": _create_deployment,
            "GetDeploymentStatus": _get_deployment_status,
            "ListDeployments": _list_deployments,
        }
    )


#: Every operation the service implements, by botocore operation name.
HANDLERS: Final = _table()


async def dispatch(
    ctx: Context, operation: str, params: dict[str, Any], *, claim: Claim | None = None
) -> Result:
    """Run an operation and return its answer, paginated if it is a List.

    Args:
        ctx: The service's context.
        operation: The botocore operation name.
        params: Its decoded, validated input.
        claim: The request's signature, when it may change something: recorded in the same
            transaction as the change, so the same signed request can't be applied twice. If
            the operation then fails, the claim is released: a retry signed the same passes.

    Raises:
        ApiError: The operation is not supported, or the page token is not one we issued.
        EdgeError: From the shared code; the caller translates it (`errors.from_edge_error`).
            `SignatureReplayError` when `claim` was recorded by an earlier request.
    """
    handler = HANDLERS.get(operation)
    if handler is None:
        raise bad_request(
            f"{operation} is not supported by edge's control plane (it implements the "
            f"definitions, groups and deployments that `edge cloud` offers)"
        )
    page = params if operation not in bulk.PAGED else {}
    if claim is None:
        return paginate(await handler(ctx, params), page)
    token = idempotency.token_key(operation, params)
    if token is not None:
        # Before the signature's claim: a retry under the same token gets the first answer
        # even when it is signed identically (botocore re-signs retries within one second
        # to the same bytes), rather than the replay refusal.
        earlier = await ctx.db.call(lambda db: idempotency.earlier_answer(db, token))
        if earlier is not None:
            return earlier
        claim.client_token = token
    claimed = replace(ctx, db=ctx.db.claiming(claim), loop_db=ctx.loop_db.with_claim(claim))
    try:
        result = paginate(await handler(claimed, params), page)
    except Exception:
        if claim.recorded:
            # Shielded: the release must not be lost to a cancellation after a failure.
            with contextlib.suppress(CloudDatabaseError):
                await asyncio.shield(ctx.db.call(lambda db: db.release(claim)))
        raise
    if token is not None and claim.recorded:
        await asyncio.shield(ctx.db.call(lambda db: idempotency.store_answer(db, token, result)))
    return result


def paginate(result: Result, params: dict[str, Any]) -> Result:
    """Cut a List answer to `MaxResults` items from `NextToken`, adding the next NextToken."""
    key = next((k for k in _LISTS if k in result), None)
    if key is None or ("MaxResults" not in params and "NextToken" not in params):
        return result
    items: list[Any] = result[key]
    start = _offset(params.get("NextToken"))
    size = _page_size(params.get("MaxResults"), len(items))
    page = dict(result)
    page[key] = items[start : start + size]
    if start + size < len(items):
        page["NextToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
    return page


def _offset(token: object) -> int:
    if token is None:
        return 0
    try:
        offset = int(base64.urlsafe_b64decode(str(token).encode()).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_request("NextToken is not a token this service issued") from None
    if offset < 0:
        raise bad_request("NextToken is not a token this service issued")
    return offset


def _page_size(value: object, total: int) -> int:
    if value is None:
        return max(total, 1)
    try:
        size = int(str(value))
    except ValueError:
        raise bad_request(f"MaxResults must be a positive integer, not {value!r}") from None
    if size < 1:
        raise bad_request(f"MaxResults must be a positive integer, not {value!r}")
    return size
