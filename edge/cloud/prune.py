# SPDX-License-Identifier: Apache-2.0
"""`edge cloud prune`: remove what a control plane run for years piles up.

Deployments (with their status events) and finished bulk deployments (with their records and
tags) created before a cut-off go, as do client tokens and applied request signatures past
their expiry. A group's last deployment stays whatever its age, with its events, so that
GetDeploymentStatus, `reset-deployments` and a redeployment keep working; definitions, groups
and their versions are never touched (a group's latest version is what the next deployment
deploys). A bulk deployment still running stays until it ends.

The work runs in batches of a bounded number of rows, each batch its own write transaction, so
the control plane's write lock is held for milliseconds at a time and `edge cloud serve`
replicas keep answering while a big database is pruned. A batch interrupted rolls back alone;
running the command again finishes the job. There is no REST operation for it: AWS's API has
none, and pruning is an operator's job, run from the CLI (a cron job or a timer).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from edge.cloud.config import CloudConfig
from edge.cloud.errors import CloudUsageError
from edge.cloud.ids import precise_timestamp, timestamp

if TYPE_CHECKING:
    from edge.cloud.db import Connection, Database

# The database code (SQLAlchemy) is imported when the command runs (PLC0415 below): `edge
# cloud`'s parser adds this command's options, and `--help` must not pay for it.

#: Rows a batch removes at most (of the kind it removes): small enough that a batch holds the
#: write lock for milliseconds on a busy PostgreSQL server.
DEFAULT_BATCH: Final = 500
_DURATION: Final = re.compile(r"([1-9][0-9]{0,5})([dhm])")
_UNITS: Final = {"d": "days", "h": "hours", "m": "minutes"}
#: Deployments created before the cut-off, but for the last one of each group (the order
#: `groups.last_deployment` reads: newest created_at, then highest id).
_OLD_DEPLOYMENTS: Final = (
    "SELECT d.id FROM deployments AS d WHERE d.created_at < :cutoff AND EXISTS ("
    " SELECT 1 FROM deployments AS n WHERE n.group_id = d.group_id AND (n.created_at >"
    " d.created_at OR (n.created_at = d.created_at AND n.id > d.id)))"
)
#: Bulk deployments created before the cut-off that have ended (`BulkState`'s final states).
_OLD_BULKS: Final = (
    "SELECT id, arn FROM bulk_deployments WHERE created_at < :cutoff"
    " AND state IN ('Completed', 'Failed', 'Stopped')"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's options."""
    p.add_argument(
        "--older-than",
        required=True,
        metavar="AGE",
        help="remove what was created longer ago than AGE: 90d, 12h or 30m",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print what would be removed; remove nothing"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH,
        metavar="N",
        help=f"rows per transaction (default {DEFAULT_BATCH})",
    )


def parse_age(value: str) -> timedelta:
    """A duration as `--older-than` takes it: a whole number of days, hours or minutes.

    Raises:
        CloudUsageError: Anything else.
    """
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise CloudUsageError(
            "--older-than", f"must be a duration such as 90d, 12h or 30m, not {value!r}"
        )
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


@dataclass(slots=True)
class Removed:
    """How many rows of each kind went (or would go, on a dry run)."""

    deployments: int = 0
    deployment_events: int = 0
    bulk_deployments: int = 0
    bulk_records: int = 0
    client_tokens: int = 0
    applied_signatures: int = 0
    dry_run: bool = field(default=False)

    def output(self) -> dict[str, object]:
        """The command's answer, in the API's case."""
        return {
            "DryRun": self.dry_run,
            "Deployments": self.deployments,
            "DeploymentEvents": self.deployment_events,
            "BulkDeployments": self.bulk_deployments,
            "BulkDeploymentRecords": self.bulk_records,
            "ClientTokens": self.client_tokens,
            "AppliedSignatures": self.applied_signatures,
        }


def run(config: CloudConfig, args: argparse.Namespace) -> int:
    """`edge cloud prune`: check the arguments, then prune (or count) and print the counts."""
    age = parse_age(args.older_than)
    if args.batch_size < 1:
        raise CloudUsageError("--batch-size", f"must be at least 1, not {args.batch_size}")
    from edge.cloud.db import open_database  # noqa: PLC0415 - see the imports

    with open_database(config) as db:
        now = datetime.now(UTC)
        if args.dry_run:
            removed = count(db, now - age, now=now)
        else:
            removed = prune(db, now - age, now=now, batch=args.batch_size, progress=_progress)
    sys.stdout.write(json.dumps(removed.output(), indent=4) + "\n")
    return 0


def _progress(line: str) -> None:
    sys.stderr.write(f"prune: {line}\n")
    sys.stderr.flush()


def count(db: Database, cutoff: datetime, *, now: datetime) -> Removed:
    """What `prune` would remove, counted in one snapshot."""
    binds = _binds(cutoff, now)
    with db.read() as conn:
        old = f"({_OLD_DEPLOYMENTS})"
        bulks = f"(SELECT id FROM ({_OLD_BULKS}) AS b)"  # noqa: S608 - constants

        def number(sql: str) -> int:
            return int(conn.execute(sql, binds).scalar() or 0)

        return Removed(
            deployments=number(f"SELECT count(*) FROM deployments WHERE id IN {old}"),  # noqa: S608
            deployment_events=number(
                f"SELECT count(*) FROM deployment_events WHERE deployment_id IN {old}"  # noqa: S608
            ),
            bulk_deployments=number(f"SELECT count(*) FROM bulk_deployments WHERE id IN {bulks}"),  # noqa: S608
            bulk_records=number(f"SELECT count(*) FROM bulk_records WHERE bulk_id IN {bulks}"),  # noqa: S608
            client_tokens=number("SELECT count(*) FROM client_tokens WHERE created_at < :expired"),
            applied_signatures=number(
                "SELECT count(*) FROM applied_signatures WHERE expires_at < :now_seconds"
            ),
            dry_run=True,
        )


def prune(
    db: Database,
    cutoff: datetime,
    *,
    now: datetime,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[str], None] = lambda _line: None,
) -> Removed:
    """Remove what is older than `cutoff` (see the module docstring), a batch per transaction."""
    pruner = _Pruner({**_binds(cutoff, now), "batch": batch}, batch, progress)
    for step in (pruner.deployments, pruner.bulks, pruner.tokens, pruner.signatures):
        # One write transaction per batch: the lock is let go between two.
        while True:
            with db.write() as conn:
                more = step(conn)
            if not more:
                break
    return pruner.removed


@dataclass(slots=True)
class _Pruner:
    """One kind of row per method, a batch of it per call; True while there may be more."""

    binds: dict[str, object]
    batch: int
    progress: Callable[[str], None]
    removed: Removed = field(default_factory=Removed)

    def deployments(self, conn: Connection) -> bool:
        ids = [r["id"] for r in conn.execute(f"{_OLD_DEPLOYMENTS} LIMIT :batch", self.binds)]
        if not ids:
            return False
        self.removed.deployment_events += conn.execute(
            "DELETE FROM deployment_events WHERE deployment_id IN :ids", {"ids": ids}
        ).rowcount
        self.removed.deployments += conn.execute(
            "DELETE FROM deployments WHERE id IN :ids", {"ids": ids}
        ).rowcount
        self.progress(
            f"{self.removed.deployments} deployments, {self.removed.deployment_events} events"
        )
        return True

    def bulks(self, conn: Connection) -> bool:
        bulk = conn.execute(f"{_OLD_BULKS} LIMIT 1", self.binds).fetchone()
        if bulk is None:
            return False
        # A bulk deployment's records go a batch at a time; the bulk deployment itself goes
        # with the last of them, so an interrupted run leaves it to the next one.
        gone = conn.execute(
            "DELETE FROM bulk_records WHERE bulk_id = :id AND line IN (SELECT line FROM"
            " bulk_records WHERE bulk_id = :id ORDER BY line LIMIT :batch)",
            {"id": bulk["id"], "batch": self.batch},
        ).rowcount
        self.removed.bulk_records += gone
        if gone < self.batch:
            conn.execute("DELETE FROM tags WHERE resource_arn = :arn", {"arn": bulk["arn"]})
            conn.execute("DELETE FROM bulk_deployments WHERE id = :id", {"id": bulk["id"]})
            self.removed.bulk_deployments += 1
        self.progress(
            f"{self.removed.bulk_deployments} bulk deployments, {self.removed.bulk_records} records"
        )
        return True

    def tokens(self, conn: Connection) -> bool:
        return self._expired(
            conn,
            "DELETE FROM client_tokens WHERE (operation, token) IN (SELECT operation, token"
            " FROM client_tokens WHERE created_at < :expired LIMIT :batch)",
            "client_tokens",
            "expired client tokens",
        )

    def signatures(self, conn: Connection) -> bool:
        return self._expired(
            conn,
            "DELETE FROM applied_signatures WHERE signature IN (SELECT signature FROM"
            " applied_signatures WHERE expires_at < :now_seconds LIMIT :batch)",
            "applied_signatures",
            "expired request signatures",
        )

    def _expired(self, conn: Connection, sql: str, kind: str, label: str) -> bool:
        gone = conn.execute(sql, self.binds).rowcount
        total = getattr(self.removed, kind) + gone
        setattr(self.removed, kind, total)
        if gone:
            self.progress(f"{total} {label}")
        return gone == self.batch


def _binds(cutoff: datetime, now: datetime) -> dict[str, object]:
    from edge.cloud.db import CLIENT_TOKEN_LIFETIME  # noqa: PLC0415 - see the imports

    return {
        # Deployments carry microseconds, bulk deployments milliseconds: the longer form
        # compares right against both.
        "cutoff": precise_timestamp(cutoff),
        "expired": timestamp(now - CLIENT_TOKEN_LIFETIME),
        "now_seconds": int(now.timestamp()),
    }
