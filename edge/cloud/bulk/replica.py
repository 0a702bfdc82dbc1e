# SPDX-License-Identifier: Apache-2.0
"""What runs bulk deployments in a process: its owner name, its deployer, its supervisor.

`edge cloud serve` enters one `BulkSupervisor` per replica; `edge cloud start-bulk-deployment
--wait` runs one in the command's own process. Both create each group's deployment through
`deployer`, the one place where a reserved record becomes a deployment.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.cloud.bulk.create import BatchDeployer
from edge.cloud.bulk.runner import BulkRunner, Deploy, input_reader
from edge.cloud.bulk.sqlstore import Run, inline
from edge.cloud.bulk.store import BulkStore
from edge.cloud.bulk.supervisor import ADOPT_EVERY_SECONDS, BulkSupervisor
from edge.cloud.config import CloudConfig
from edge.cloud.db import Database


def owner_name() -> str:
    """This process's name as a lease owner: its host and pid, and a random part.

    The random part keeps a restarted process that reuses a pid from passing for its
    predecessor.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def deployer(
    config: CloudConfig,
    db: Database,
    signing_key: Ed25519PrivateKey,
    drain: Callable[[], None],
    *,
    run: Run | None = None,
) -> Deploy:
    """Create reserved records' deployments, a batch at once, queued in the outbox.

    The deployments and their outbox rows commit together, and an id that exists already is
    taken as done: a runner taken over after a SIGKILL neither loses a deployment nor makes a
    second one. `drain` wakes the process's outbox drain. The database work goes through `run`
    (the process's database thread; without one, `db` on the calling thread).
    """
    return BatchDeployer(config, db, signing_key, drain, run or inline(db))


def supervisor(config: CloudConfig, store: BulkStore, deploy: Deploy, owner: str) -> BulkSupervisor:
    """A supervisor running, as `owner`, every bulk deployment no live replica runs.

    It looks for orphans every `ADOPT_EVERY_SECONDS`, or every third of a lease shorter than
    three times that, so that a dead replica's bulk deployment waits about its lease, no more.
    """
    read = input_reader(config.aws)
    lease = config.cloud.bulk_lease_seconds
    return BulkSupervisor(
        store=store,
        runner=lambda bulk_id: BulkRunner(
            store=store, bulk_id=bulk_id, owner=owner, deploy=deploy, read=read, lease_seconds=lease
        ),
        interval=min(ADOPT_EVERY_SECONDS, lease / 3),
    )
