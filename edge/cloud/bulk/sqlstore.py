# SPDX-License-Identifier: Apache-2.0
"""`BulkStore` on the control plane's database (SQLite or PostgreSQL), for replicas to share.

Two tables (migration 7): `bulk_deployments`, one row per bulk deployment with the lease of the
replica running it, and `bulk_records`, one row per input line keyed by (bulk id, line), with
the DeploymentId reserved for it (UNIQUE: an id is never handed out twice). A record's outcome
is read from the `deployments` row of its id, as the status follower records what the core
reported, so nothing is copied and nothing goes stale.

**Leases** are measured by the database server's clock (`_NOW`), never a replica's, so replicas
on machines whose clocks disagree still agree on who holds one. Every write of a lease holder
starts by locking its bulk deployment's row, checking that the lease is still its own and
unexpired (`_hold`), in the transaction that then writes; a replica that takes the lease over
waits for that transaction, and its successor's writes are refused (`LeaseLostError`) from then
on. On PostgreSQL these transactions take row locks (`FOR UPDATE`) rather than the control
plane's advisory lock, so a bulk deployment never holds up the API's other writes; SQLite has
one write lock for everything.

**Transactions.** Each call is one transaction on `Database`; the calls are blocking, so they
go through `run`, which the service points at its database thread (`DatabaseThread.call`)
and a command at the event loop itself (`inline`). `create` takes the control plane's lock:
under the API it is the write that records the request's client token and signature, so a
repeated StartBulkDeployment starts nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from edge.cloud.bulk.api import rollout_from_tags
from edge.cloud.bulk.input import Entry, InputRecord
from edge.cloud.bulk.records import (
    BulkDeployment,
    BulkDeploymentResult,
    ErrorDetail,
    RecordState,
)
from edge.cloud.bulk.state import FINAL, BulkEvent, BulkState, next_state
from edge.cloud.bulk.store import BulkStore, LeaseLostError, Outcomes, Reserved, Tally
from edge.cloud.db import Connection, Database, Row
from edge.cloud.errors import NotFoundError
from edge.cloud.ids import new_id, precise_timestamp
from edge.cloud.status import BUILDING, FAILURE, SUCCESS

_T = TypeVar("_T")


class Run(Protocol):
    """Runs one blocking call on a `Database` and awaits its result."""

    def __call__(self, fn: Callable[[Database], _T], /) -> Awaitable[_T]:
        """`fn(database)`'s result."""
        ...


#: The database server's clock in Unix seconds, as each engine spells it.
_NOW: Final = {
    "postgresql": "SELECT extract(epoch from clock_timestamp())",
    "sqlite": "SELECT (julianday('now') - 2440587.5) * 86400.0",
}
_SELECT: Final = "SELECT * FROM bulk_deployments WHERE id = :id"
_SELECT_LOCKED: Final = _SELECT + " FOR UPDATE"
_FINAL_STATES: Final = tuple(sorted(s.value for s in FINAL))
_S = RecordState


def inline(db: Database) -> Run:
    """A `run` that calls on the event loop's own thread (a command, a test)."""

    async def run(fn: Callable[[Database], _T]) -> _T:
        return fn(db)

    return run


class SqlBulkStore:
    """Bulk deployments in the control plane's database (see the module docstring)."""

    def __init__(self, run: Run, *, ids: Callable[[], str] = new_id) -> None:
        """Keep bulk deployments through `run` (`DatabaseThread.call`, or `inline(db)`)."""
        self._run = run
        self._ids = ids

    async def create(self, bulk: BulkDeployment) -> None:
        """Record a new bulk deployment, in the transaction of the request's claim."""

        def create(db: Database) -> None:
            with db.write() as conn:
                conn.execute(
                    "INSERT INTO bulk_deployments (id, arn, created_at, input_uri,"
                    " execution_role_arn, input_etag, state, tags, retry_attempts, lines_loaded,"
                    " error_message, error_details) VALUES (:id, :arn, :created_at, :input_uri,"
                    " :role, :etag, :state, :tags, 0, 0, NULL, '[]')",
                    {
                        "id": bulk.id,
                        "arn": bulk.arn,
                        "created_at": bulk.created_at,
                        "input_uri": bulk.input_uri,
                        "role": bulk.execution_role_arn,
                        "etag": bulk.input_etag,
                        "state": bulk.state.value,
                        "tags": json.dumps(bulk.tags, sort_keys=True),
                    },
                )

        await self._run(create)

    async def get(self, bulk_id: str) -> BulkDeployment:
        """The bulk deployment, its metrics counted from its records. Raises NotFoundError."""

        def get(db: Database) -> BulkDeployment:
            with db.read() as conn:
                return _bulk(conn, _row(conn, bulk_id))

        return await self._run(get)

    async def acquire(
        self, bulk_id: str, owner: str, lease_seconds: float
    ) -> BulkDeployment | None:
        """Take the lease if it is free, expired or already `owner`'s."""

        def acquire(db: Database) -> BulkDeployment | None:
            with db.write(lock=None) as conn:
                row = _row(conn, bulk_id, lock=True)
                if BulkState(row["state"]).is_final or _live_holder(conn, row) not in {None, owner}:
                    return None
                conn.execute(
                    "UPDATE bulk_deployments SET lease_owner = :owner,"
                    " lease_expires = :expires WHERE id = :id",
                    {"owner": owner, "expires": _clock(conn) + lease_seconds, "id": bulk_id},
                )
                return _bulk(conn, row)

        return await self._run(acquire)

    async def renew(self, bulk_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend `owner`'s live lease; False if it is no longer `owner`'s."""

        def renew(db: Database) -> bool:
            with db.write(lock=None) as conn:
                now = _clock(conn)
                changed = conn.execute(
                    "UPDATE bulk_deployments SET lease_expires = :expires"
                    " WHERE id = :id AND lease_owner = :owner AND lease_expires > :now",
                    {"owner": owner, "expires": now + lease_seconds, "now": now, "id": bulk_id},
                )
                return changed.rowcount == 1

        return await self._run(renew)

    async def release(self, bulk_id: str, owner: str) -> None:
        """Give the lease up, if it is `owner`'s."""

        def release(db: Database) -> None:
            with db.write(lock=None) as conn:
                conn.execute(
                    "UPDATE bulk_deployments SET lease_owner = NULL, lease_expires = NULL"
                    " WHERE id = :id AND lease_owner = :owner",
                    {"owner": owner, "id": bulk_id},
                )

        await self._run(release)

    async def orphans(self) -> list[str]:
        """Bulk deployments not ended whose lease is free or expired, oldest first."""

        def orphans(db: Database) -> list[str]:
            with db.read() as conn:
                rows = conn.execute(
                    "SELECT id FROM bulk_deployments WHERE state NOT IN :final"
                    " AND (lease_owner IS NULL OR lease_expires <= :now) ORDER BY created_at",
                    {"final": list(_FINAL_STATES), "now": _clock(conn)},
                )
                return [str(r["id"]) for r in rows]

        return await self._run(orphans)

    async def load(self, bulk_id: str, owner: str, entries: Sequence[Entry], through: int) -> None:
        """Add the records and invalid lines not stored yet; mark lines up to `through` read."""
        rows = [_record_row(bulk_id, entry) for entry in entries]

        def load(db: Database) -> None:
            with db.write(lock=None) as conn:
                _hold(conn, bulk_id, owner)
                conn.executemany(
                    "INSERT INTO bulk_records (bulk_id, line, state, group_id, group_version_id,"
                    " deployment_type, error_message) VALUES (:bulk_id, :line, :state,"
                    " :group_id, :group_version_id, :deployment_type, :error_message)"
                    " ON CONFLICT (bulk_id, line) DO NOTHING",
                    rows,
                )
                conn.execute(
                    "UPDATE bulk_deployments SET lines_loaded = :through"
                    " WHERE id = :id AND lines_loaded < :through",
                    {"through": through, "id": bulk_id},
                )

        await self._run(load)

    async def reserve(self, bulk_id: str, owner: str, limit: int) -> list[Reserved]:
        """STARTED records first, then PENDING ones given a fresh DeploymentId, in line order."""

        def reserve(db: Database) -> list[Reserved]:
            with db.write(lock=None) as conn:
                _hold(conn, bulk_id, owner)
                select = (
                    "SELECT line, group_id, group_version_id, deployment_type, deployment_id"
                    " FROM bulk_records WHERE bulk_id = :id AND state = :state"
                    " ORDER BY line LIMIT :limit"
                )
                chosen = conn.execute(
                    select, {"id": bulk_id, "state": _S.STARTED.value, "limit": limit}
                ).fetchall()
                fresh = conn.execute(
                    select, {"id": bulk_id, "state": _S.PENDING.value, "limit": limit - len(chosen)}
                ).fetchall()
                given = [{**dict(r), "deployment_id": self._ids()} for r in fresh]
                conn.executemany(
                    "UPDATE bulk_records SET state = :state, deployment_id = :deployment_id"
                    " WHERE bulk_id = :bulk_id AND line = :line",
                    [
                        {
                            "state": _S.STARTED.value,
                            "deployment_id": r["deployment_id"],
                            "bulk_id": bulk_id,
                            "line": r["line"],
                        }
                        for r in given
                    ],
                )
            return [
                Reserved(
                    int(r["line"]),
                    str(r["group_id"]),
                    str(r["group_version_id"]),
                    str(r["deployment_type"]),
                    str(r["deployment_id"]),
                )
                for r in [*chosen, *given]
            ]

        return await self._run(reserve)

    async def record(self, bulk_id: str, owner: str, outcomes: Outcomes) -> None:
        """Store what became of reserved records."""
        created_at = precise_timestamp()

        def record(db: Database) -> None:
            with db.write(lock=None) as conn:
                _hold(conn, bulk_id, owner)
                conn.executemany(
                    "UPDATE bulk_records SET state = :state, created_at = :created_at"
                    " WHERE bulk_id = :bulk_id AND line = :line",
                    [
                        {
                            "state": _S.CREATED.value,
                            "created_at": created_at,
                            "bulk_id": bulk_id,
                            "line": line,
                        }
                        for line in outcomes.created
                    ],
                )
                conn.executemany(
                    "UPDATE bulk_records SET state = :state, deployment_id = NULL,"
                    " error_message = :reason WHERE bulk_id = :bulk_id AND line = :line",
                    [
                        {
                            "state": _S.INVALID.value,
                            "reason": reason,
                            "bulk_id": bulk_id,
                            "line": line,
                        }
                        for line, reason in outcomes.invalid
                    ],
                )
                if outcomes.retries:
                    conn.execute(
                        "UPDATE bulk_deployments SET retry_attempts = retry_attempts + :retries"
                        " WHERE id = :id",
                        {"retries": outcomes.retries, "id": bulk_id},
                    )

        await self._run(record)

    async def tally(self, bulk_id: str) -> Tally:
        """The records by state, and their deployments' reported outcomes."""

        def tally(db: Database) -> Tally:
            with db.read() as conn:
                _row(conn, bulk_id)
                rows = conn.execute(
                    "SELECT r.state AS state, d.status AS status, count(*) AS n"
                    " FROM bulk_records r LEFT JOIN deployments d ON d.id = r.deployment_id"
                    " WHERE r.bulk_id = :id GROUP BY r.state, d.status",
                    {"id": bulk_id},
                ).fetchall()
            counts = dict.fromkeys(RecordState, 0)
            outcomes = {SUCCESS: 0, FAILURE: 0}
            for r in rows:
                state, n = RecordState(r["state"]), int(r["n"])
                counts[state] += n
                if state is _S.CREATED and r["status"] in outcomes:
                    outcomes[r["status"]] += n
            return Tally(
                pending=counts[_S.PENDING],
                unconfirmed=counts[_S.STARTED],
                created=counts[_S.CREATED],
                invalid=counts[_S.INVALID],
                succeeded=outcomes[SUCCESS],
                failed=outcomes[FAILURE],
            )

        return await self._run(tally)

    async def transition(
        self, bulk_id: str, owner: str | None, event: BulkEvent, error_message: str | None = None
    ) -> BulkState:
        """Move the bulk deployment by the state table; the new state."""

        def transition(db: Database) -> BulkState:
            with db.write(lock=None) as conn:
                row = _hold(conn, bulk_id, owner) if owner else _row(conn, bulk_id, lock=True)
                state = next_state(BulkState(row["state"]), event)
                details = json.loads(row["error_details"])
                if error_message is not None:
                    details.append({"code": event.value, "message": error_message})
                conn.execute(
                    "UPDATE bulk_deployments SET state = :state, error_message = :message,"
                    " error_details = :details WHERE id = :id",
                    {
                        "state": state.value,
                        "message": error_message or row["error_message"],
                        "details": json.dumps(details),
                        "id": bulk_id,
                    },
                )
                return state

        return await self._run(transition)

    async def results(
        self, bulk_id: str, after_line: int, limit: int
    ) -> list[BulkDeploymentResult]:
        """Lines after `after_line`, in order, with their deployments' reported status."""

        def results(db: Database) -> list[BulkDeploymentResult]:
            with db.read() as conn:
                _row(conn, bulk_id)
                rows = conn.execute(
                    "SELECT r.*, d.status AS reported, d.error_message AS reported_error"
                    " FROM bulk_records r LEFT JOIN deployments d ON d.id = r.deployment_id"
                    " WHERE r.bulk_id = :id AND r.line > :after ORDER BY r.line LIMIT :limit",
                    {"id": bulk_id, "after": after_line, "limit": limit},
                ).fetchall()
            return [_result(r) for r in rows]

        return await self._run(results)

    async def listing(self, after: int, limit: int) -> list[BulkDeployment]:
        """One page of bulk deployments, newest first."""

        def listing(db: Database) -> list[BulkDeployment]:
            with db.read() as conn:
                rows = conn.execute(
                    "SELECT * FROM bulk_deployments ORDER BY created_at DESC, id DESC"
                    " LIMIT :limit OFFSET :after",
                    {"limit": limit, "after": after},
                ).fetchall()
                return [_bulk(conn, r) for r in rows]

        return await self._run(listing)


def _row(conn: Connection, bulk_id: str, *, lock: bool = False) -> Row:
    """The bulk deployment's row (locked for the transaction on PostgreSQL with `lock`)."""
    # SQLite has no row locks: its write transactions hold the whole file's lock already.
    sql = _SELECT_LOCKED if lock and conn.dialect == "postgresql" else _SELECT
    row = conn.execute(sql, {"id": bulk_id}).fetchone()
    if row is None:
        raise NotFoundError(
            "bulk deployment", bulk_id, "`edge cloud list-bulk-deployments` lists them"
        )
    return row


def _live_holder(conn: Connection, row: Row) -> str | None:
    """Who holds the row's live lease, by the database's clock."""
    if row["lease_owner"] is None:
        return None
    return str(row["lease_owner"]) if float(row["lease_expires"]) > _clock(conn) else None


def _clock(conn: Connection) -> float:
    """The database server's clock, in Unix seconds."""
    return float(conn.execute(_NOW[conn.dialect]).scalar())


def _hold(conn: Connection, bulk_id: str, owner: str) -> Row:
    """Lock the bulk deployment's row; raise LeaseLostError unless `owner` holds a live lease."""
    row = _row(conn, bulk_id, lock=True)
    if _live_holder(conn, row) != owner:
        raise LeaseLostError(bulk_id, owner)
    return row


def _bulk(conn: Connection, row: Row) -> BulkDeployment:
    """A bulk deployment from its row, with RecordsProcessed and InvalidInputRecords counted."""
    counts = conn.execute(
        "SELECT sum(CASE WHEN state = :invalid THEN 1 ELSE 0 END) AS invalid,"
        " sum(CASE WHEN state <> :pending THEN 1 ELSE 0 END) AS processed"
        " FROM bulk_records WHERE bulk_id = :id",
        {"invalid": _S.INVALID.value, "pending": _S.PENDING.value, "id": row["id"]},
    ).fetchone()
    tags: dict[str, str] = json.loads(row["tags"])
    processed = invalid = 0
    if counts is not None:
        processed, invalid = int(counts["processed"] or 0), int(counts["invalid"] or 0)
    return BulkDeployment(
        id=row["id"],
        arn=row["arn"],
        created_at=row["created_at"],
        input_uri=row["input_uri"],
        execution_role_arn=row["execution_role_arn"],
        input_etag=row["input_etag"],
        state=BulkState(row["state"]),
        tags=tags,
        rollout=rollout_from_tags(tags),
        records_processed=processed,
        invalid_input_records=invalid,
        retry_attempts=int(row["retry_attempts"]),
        lines_loaded=int(row["lines_loaded"]),
        error_message=row["error_message"],
        error_details=tuple(
            ErrorDetail(d["code"], d["message"]) for d in json.loads(row["error_details"])
        ),
    )


def _record_row(bulk_id: str, entry: Entry) -> dict[str, Any]:
    if isinstance(entry, InputRecord):
        return {
            "bulk_id": bulk_id,
            "line": entry.line,
            "state": _S.PENDING.value,
            "group_id": entry.group_id,
            "group_version_id": entry.group_version_id,
            "deployment_type": entry.deployment_type,
            "error_message": None,
        }
    return {
        "bulk_id": bulk_id,
        "line": entry.line,
        "state": _S.INVALID.value,
        "group_id": None,
        "group_version_id": None,
        "deployment_type": None,
        "error_message": entry.reason,
    }


def _result(r: Row) -> BulkDeploymentResult:
    state = RecordState(r["state"])
    created = state is _S.CREATED and r["deployment_id"] is not None
    return BulkDeploymentResult(
        line=int(r["line"]),
        state=state,
        group_id=r["group_id"],
        group_version_id=r["group_version_id"],
        deployment_type=r["deployment_type"],
        deployment_id=r["deployment_id"],
        created_at=r["created_at"],
        deployment_status=(r["reported"] or BUILDING) if created else None,
        error_message=r["reported_error"] if created else r["error_message"],
    )


if TYPE_CHECKING:
    _IMPLEMENTS: type[BulkStore] = SqlBulkStore
