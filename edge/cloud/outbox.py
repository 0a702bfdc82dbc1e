# SPDX-License-Identifier: Apache-2.0
"""The deployment outbox: deployments recorded, waiting for the broker's acknowledgement.

A deployment's `outbox` row is written in the same transaction as the deployment itself
(`enqueue`), so a deployment the control plane answered for is never lost: whoever dies after
the commit, the row is still there. Rows leave the outbox only once the broker acknowledged the
publish (`mark_sent`), so delivery is at least once; a core answers a `DeploymentId` it already
applied as a duplicate, so each deployment is applied once, and a deployment keeps its one id
however often it is sent.

Who publishes a row:

* Without a server (`edge cloud create-deployment`, `make demo`), the command that wrote the
  row publishes it through its own connection and marks it sent.
* Every `edge cloud serve` replica runs a drain (`edge.cloud.serve.drain`): it claims due
  rows (`claim`), publishes them through the replica's one connection (`Publisher`), and marks
  each sent on its PUBACK. It is woken by its own replica's inserts and polls for the
  others'. A claim is a lease (`[cloud] outbox_lease_seconds`): a replica that dies holding
  one only delays its rows by that much, then another replica takes them. Claims are made
  with `FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas claiming at once take different
  rows without waiting on each other; on SQLite the database's one write lock serialises
  them anyway.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from edge.cloud.db import Connection, Database
from edge.cloud.ids import timestamp

_CLAIM: Final = (
    "SELECT o.deployment_id, o.topic, d.envelope FROM outbox AS o JOIN deployments AS d"
    " ON d.id = o.deployment_id WHERE o.claimed_until <= :now"
    " ORDER BY o.claimed_until, o.created_at LIMIT :limit"
)


@dataclass(frozen=True, slots=True)
class Pending:
    """A claimed outbox row: what to publish where."""

    deployment_id: str
    topic: str
    envelope: bytes


def enqueue(conn: Connection, deployment_id: str, topic: str, *, claimed_until: int = 0) -> None:
    """Queue a recorded deployment (inside the write transaction that recorded it).

    Args:
        conn: The connection, in the deployment's write transaction.
        deployment_id: The deployment just inserted.
        topic: Where its envelope is published.
        claimed_until: Unix time before which no replica takes it over: a command that
            publishes the row itself claims it for as long as that takes.
    """
    enqueue_many(conn, [(deployment_id, topic)], claimed_until=claimed_until)


def enqueue_many(
    conn: Connection, rows: Sequence[tuple[str, str]], *, claimed_until: int = 0
) -> None:
    """Queue recorded deployments, `(deployment id, topic)` each, in one statement.

    As `enqueue`, for a batch recorded in one transaction (a bulk deployment's).
    """
    created_at = timestamp()
    conn.executemany(
        "INSERT INTO outbox (deployment_id, topic, created_at, claimed_until, attempts)"
        " VALUES (:deployment_id, :topic, :created_at, :claimed_until, 0)",
        [
            {
                "deployment_id": deployment_id,
                "topic": topic,
                "created_at": created_at,
                "claimed_until": claimed_until,
            }
            for deployment_id, topic in rows
        ],
    )


def claim(db: Database, *, limit: int, lease_seconds: float) -> list[Pending]:
    """Claim up to `limit` due rows, oldest first, for `lease_seconds`."""
    now = int(time.time())
    query = _CLAIM + (" FOR UPDATE OF o SKIP LOCKED" if db.dialect == "postgresql" else "")
    with db.write(lock=None) as conn:
        rows = conn.execute(query, {"now": now, "limit": limit}).fetchall()
        if not rows:
            return []
        ids = [r["deployment_id"] for r in rows]
        conn.execute(
            "UPDATE outbox SET claimed_until = :until, attempts = attempts + 1"
            " WHERE deployment_id IN :ids",
            {"until": now + max(1, round(lease_seconds)), "ids": ids},
        )
    return [Pending(r["deployment_id"], r["topic"], bytes(r["envelope"])) for r in rows]


def mark_sent(db: Database, deployment_ids: list[str]) -> None:
    """Remove acknowledged rows: the broker has their deployments."""
    if deployment_ids:
        with db.write(lock=None) as conn:
            conn.execute("DELETE FROM outbox WHERE deployment_id IN :ids", {"ids": deployment_ids})


def depth(db: Database) -> int:
    """Rows waiting in the outbox, claimed or not."""
    with db.read() as conn:
        return int(conn.execute("SELECT count(*) FROM outbox").scalar())
