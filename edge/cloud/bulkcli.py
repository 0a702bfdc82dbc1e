# SPDX-License-Identifier: Apache-2.0
"""`edge cloud`'s bulk deployment commands: the API's five operations, run on the database.

`start-bulk-deployment` records the bulk deployment and prints AWS's answer; an `edge cloud
serve` replica on the same database runs it. With `--wait` the command runs it itself (a
runner in this process, with the status follower that records the cores' reports, so the
abort rule sees them), and shows progress on stderr until it ends; a replica that takes the
lease first runs it instead, and the command still follows it to its end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from edge.cloud.bulk.rollout import NAMES

if TYPE_CHECKING:
    from edge.cloud.bulk.sqlstore import SqlBulkStore
    from edge.cloud.bulk.state import BulkState
    from edge.cloud.config import CloudConfig
    from edge.cloud.db import Database
    from edge.cloud.ids import Arns

# The commands import the bulk machinery when they run (PLC0415 below): every `edge cloud`
# command builds its parser with `add_arguments`, and the runner, the deployer and what they
# import (the MQTT client, the signing code, the database) would cost each its import time.

#: The commands of this module.
COMMANDS: Final = frozenset(
    {
        "start-bulk-deployment",
        "get-bulk-deployment-status",
        "list-bulk-deployments",
        "list-bulk-deployment-detailed-reports",
        "stop-bulk-deployment",
    }
)
#: Exit status of `--wait` when the bulk deployment ends other than Completed.
EXIT_NOT_COMPLETED: Final = 1
#: Each rollout option's metavar and help.
_HELP: Final = {
    "max-per-second": ("R", "start at most R deployments per second (R may be under 1)"),
    "ramp-up-from": ("N", "start at N per second, then ramp up"),
    "ramp-up-factor": ("F", "multiply the rate by F (1 < F <= 5) at each step"),
    "ramp-up-every": ("K", "a step every K deployments counted (default ten seconds' worth)"),
    "ramp-up-on": ("started|succeeded", "what a step counts (default started)"),
    "abort-failure-percent": ("P", "stop when P percent of finished deployments failed ..."),
    "abort-min-finished": ("N", "... once at least N have finished"),
}


def add_arguments(add: Callable[[str, str], argparse.ArgumentParser], tags_help: str) -> None:
    """Add the five commands to `edge cloud`'s parser through its `add(name, help)`."""
    p = add("start-bulk-deployment", "deploy many groups from a JSON-lines input file")
    p.add_argument("--execution-role-arn", required=True, metavar="ARN")
    p.add_argument(
        "--input-file-uri", required=True, metavar="URI", help="s3://BUCKET/KEY or a local path"
    )
    p.add_argument("--tags", help=tags_help)
    for name in NAMES:
        metavar, text = _HELP[name]
        p.add_argument(f"--{name}", metavar=metavar, help=text)
    p.add_argument(
        "--wait",
        action="store_true",
        help="run it here and show progress on stderr until it ends; exit 1 unless Completed",
    )
    p.add_argument(
        "--amzn-client-token",
        help="make the command idempotent: repeated with this token, it prints the first answer",
    )
    for name, text in (
        ("get-bulk-deployment-status", "show a bulk deployment's state and metrics"),
        ("stop-bulk-deployment", "start no further group of a bulk deployment"),
    ):
        add(name, text).add_argument("--bulk-deployment-id", required=True)
    p = add("list-bulk-deployment-detailed-reports", "show each input line's deployment")
    p.add_argument("--bulk-deployment-id", required=True)
    _add_page(p)
    _add_page(add("list-bulk-deployments", "list bulk deployments, newest first"))


def _add_page(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-results", help="items per page (default 1000)")
    p.add_argument("--next-token", help="the page after the one that gave this NextToken")


def run(
    config: CloudConfig,
    db: Database,
    args: argparse.Namespace,
    *,
    tags: dict[str, str],
    show: Callable[[dict[str, Any] | None], None],
) -> int:
    """Run one of the commands; its exit status. `tags` is `--tags`, read."""
    from edge.cloud.bulk import api, operations  # noqa: PLC0415 - see the imports
    from edge.cloud.bulk.sqlstore import SqlBulkStore, inline  # noqa: PLC0415 - see the imports
    from edge.cloud.bulk.state import BulkState  # noqa: PLC0415 - see the imports
    from edge.cloud.ids import Arns  # noqa: PLC0415 - see the imports

    store = SqlBulkStore(inline(db))
    arns = Arns(config.aws.region, config.cloud.account_id)
    command: str = args.command
    if command != "start-bulk-deployment":
        show(asyncio.run(_query(store, arns, command, args)))
        return 0
    rollout = {name: getattr(args, name.replace("-", "_")) for name in NAMES}
    params = {
        "ExecutionRoleArn": args.execution_role_arn,
        "InputFileUri": args.input_file_uri,
        "tags": api.with_rollout_options(tags, rollout),
    }
    started = asyncio.run(
        operations.start_bulk_deployment(store, arns, config.aws, params, local=True)
    )
    show(started)
    if not args.wait:
        return 0
    state = asyncio.run(_run_and_watch(config, db, started["BulkDeploymentId"]))
    return 0 if state is BulkState.COMPLETED else EXIT_NOT_COMPLETED


async def _query(
    store: SqlBulkStore, arns: Arns, command: str, args: argparse.Namespace
) -> dict[str, Any] | None:
    from edge.cloud.bulk import operations  # noqa: PLC0415 - see the imports

    params = {
        key: value
        for key, value in (
            ("BulkDeploymentId", getattr(args, "bulk_deployment_id", None)),
            ("MaxResults", getattr(args, "max_results", None)),
            ("NextToken", getattr(args, "next_token", None)),
        )
        if value is not None
    }
    if command == "get-bulk-deployment-status":
        return await operations.get_bulk_deployment_status(store, params)
    if command == "list-bulk-deployments":
        return await operations.list_bulk_deployments(store, params)
    if command == "list-bulk-deployment-detailed-reports":
        return await operations.list_bulk_deployment_detailed_reports(store, arns, params)
    await operations.stop_bulk_deployment(store, params)
    return None


async def _run_and_watch(config: CloudConfig, db: Database, bulk_id: str) -> BulkState:
    """Run the bulk deployment here, following the cores' reports, and show its progress."""
    # The drain and the follower are the service's, and only `--wait` needs them.
    from edge.cloud.bulk import progress, replica  # noqa: PLC0415 - see the imports
    from edge.cloud.bulk.runner import BulkRunner, input_reader  # noqa: PLC0415 - see the imports
    from edge.cloud.bulk.sqlstore import SqlBulkStore  # noqa: PLC0415 - see the imports
    from edge.cloud.db import open_database  # noqa: PLC0415 - see the imports
    from edge.cloud.serve.dbthread import DatabaseThread  # noqa: PLC0415 - see the imports
    from edge.cloud.serve.drain import outbox_drain, replica_publisher  # noqa: PLC0415
    from edge.cloud.serve.follow import follow_statuses  # noqa: PLC0415 - see the imports
    from edge.log import get_logger  # noqa: PLC0415 - see the imports
    from edge.signing import load_signing_key  # noqa: PLC0415 - see the imports

    log = get_logger("cloud.bulk")
    signing_key = load_signing_key(config.cloud.signing_key)
    async with (
        DatabaseThread(lambda: open_database(config)) as thread,
        replica_publisher(config, log) as publisher,
    ):
        drain = outbox_drain(config, thread, publisher, log)
        store = SqlBulkStore(thread.call)
        runner = BulkRunner(
            store=store,
            bulk_id=bulk_id,
            owner=replica.owner_name(),
            deploy=replica.deployer(config, db, signing_key, drain.wake, run=thread.call),
            read=input_reader(config.aws),
            lease_seconds=config.cloud.bulk_lease_seconds,
            log=log,
        )
        writer = progress.ProgressWriter(sys.stderr)
        async with asyncio.TaskGroup() as tasks:
            helpers = [
                tasks.create_task(
                    follow_statuses(config.mqtt, publisher.received, thread, log=log),
                    name="bulk-status-follower",
                ),
                tasks.create_task(drain.run(), name="bulk-outbox-drain"),
            ]
            tasks.create_task(runner.run(), name=f"bulk-runner-{bulk_id}")
            try:
                bulk = await progress.watch(store, bulk_id, writer, sleep=asyncio.sleep)
            finally:
                for helper in helpers:
                    helper.cancel()
    return bulk.state
