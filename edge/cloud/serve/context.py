# SPDX-License-Identifier: Apache-2.0
"""What every operation of the API is handed, and the shape of an operation's handler.

Its own module so that the tables of operations (`operations`, `lifecycle`, `stored`) and the
service that calls them can all name these types without importing each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.typing import FilteringBoundLogger

from edge.cloud.config import CloudConfig
from edge.cloud.db import Database
from edge.cloud.ids import Arns
from edge.cloud.publisher import Publisher
from edge.cloud.serve.dbthread import DatabaseThread


@dataclass(frozen=True, slots=True)
class Context:
    """What operations work with: the config, the database, the signing key."""

    config: CloudConfig
    arns: Arns
    db: DatabaseThread
    #: A connection for the event loop's thread, for the shared async code (CreateDeployment).
    loop_db: Database
    signing_key: Ed25519PrivateKey
    log: FilteringBoundLogger
    #: The service's one publishing connection (None: a connection per deployment).
    publisher: Publisher | None = None
    #: Tells the replica's bulk supervisor a bulk deployment was started.
    wake_bulk: Callable[[], None] = lambda: None
    #: Wakes the replica's outbox drain, which publishes queued deployments (None: each
    #: deployment is published by the request that made it).
    drain: Callable[[], None] | None = None


Result = dict[str, Any]
Handler = Callable[[Context, dict[str, Any]], Awaitable[Result]]
