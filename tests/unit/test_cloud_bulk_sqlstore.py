"""`SqlBulkStore` on PostgreSQL and SQLite: the runner's guarantees, by the database's clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.cloud.bulk import api
from edge.cloud.bulk.input import InputRecord, InvalidRecord
from edge.cloud.bulk.records import BulkDeployment, RecordState
from edge.cloud.bulk.runner import BulkRunner
from edge.cloud.bulk.sqlstore import SqlBulkStore, inline
from edge.cloud.bulk.state import BulkEvent, BulkState
from edge.cloud.bulk.store import LeaseLostError, Outcomes, Reserved
from edge.cloud.db import Database
from edge.cloud.errors import NotFoundError
from edge.cloud.ids import Arns
from tests.unit.test_cloud_bulk_runner import each, input_file, reader

pytestmark = pytest.mark.network

ARNS = Arns("us-east-1", "123456789012")


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    where: Path | str = tmp_path / "cloud.db"
    if request.param == "postgresql":
        where = request.getfixturevalue("postgres_url")
    with Database.open(where) as opened:
        yield opened


async def new_bulk(store: SqlBulkStore, **tags: str) -> BulkDeployment:
    request = api.start_request(
        {
            "ExecutionRoleArn": "arn:aws:iam::123456789012:role/bulk",
            "InputFileUri": "s3://in/groups.jsonl",
            "tags": {
                "team": "fleet",
                **{f"edge:{k.replace('_', '-')}": v for k, v in tags.items()},
            },
        }
    )
    bulk = api.new_bulk_deployment(request, ARNS)
    await store.create(bulk)
    return bulk


async def test_a_runner_completes_on_the_database_with_each_line_stored_once(db: Database) -> None:
    """Every valid line is reserved once under one id; invalid lines count; the lists page."""
    store = SqlBulkStore(inline(db))
    bulk = await new_bulk(store, max_per_second="1000")
    deployed: list[Reserved] = []

    async def deploy(record: Reserved) -> None:
        deployed.append(record)

    groups = [f"g{i}" for i in range(30)]
    runner = BulkRunner(
        store=store,
        bulk_id=bulk.id,
        owner="a",
        deploy=each(deploy),
        read=reader(input_file(groups, extra=b"{not json\n")),
        batch=7,
    )
    assert await runner.run() is BulkState.COMPLETED
    assert sorted(r.group_id for r in deployed) == sorted(groups)
    assert len({r.deployment_id for r in deployed}) == len(groups)
    status = api.status_answer(await store.get(bulk.id))
    assert status["BulkDeploymentMetrics"] == {
        "InvalidInputRecords": 1,
        "RecordsProcessed": 31,
        "RetryAttempts": 0,
    }
    assert status["tags"]["edge:max-per-second"] == "1000"
    rows = await store.results(bulk.id, 29, 10)
    assert [(r.line, r.state) for r in rows] == [
        (30, RecordState.CREATED),
        (31, RecordState.INVALID),
    ]
    assert rows[0].deployment_status == "Building"  # no core reported (no deployments row)
    assert rows[1].error_message
    tally = await store.tally(bulk.id)
    assert (tally.created, tally.invalid, tally.to_start) == (30, 1, 0)
    # Ended: nobody adopts it, and loading it again is refused (no lease).
    assert await store.orphans() == []
    assert await store.acquire(bulk.id, "b", 30) is None


async def test_leases_are_fenced_by_the_database_clock(db: Database) -> None:
    """A live lease keeps others out; once it lapses, another replica takes it over.

    The first replica's writes are refused from then on, and a reserved id is handed out
    again, never a new one.
    """
    store = SqlBulkStore(inline(db))
    bulk = await new_bulk(store)
    assert await store.orphans() == [bulk.id]
    assert await store.acquire(bulk.id, "a", 0.5) is not None
    assert await store.orphans() == []
    assert await store.acquire(bulk.id, "b", 30) is None
    entries = [InputRecord(1, "g1", "v1"), InputRecord(2, "g2", "v1"), InvalidRecord(3, "bad")]
    await store.load(bulk.id, "a", entries, 3)
    await store.load(bulk.id, "a", entries, 3)  # a second read of the file adds nothing
    await store.transition(bulk.id, "a", BulkEvent.LOADED)
    first = await store.reserve(bulk.id, "a", 1)
    assert [r.line for r in first] == [1]
    deadline = time.monotonic() + 10
    while await store.orphans() != [bulk.id]:
        assert time.monotonic() < deadline, "the lease never lapsed"
        await asyncio.sleep(0.1)
    taken = await store.acquire(bulk.id, "b", 30)
    assert taken is not None
    assert (taken.lines_loaded, taken.invalid_input_records) == (3, 1)
    with pytest.raises(LeaseLostError):
        await store.record(bulk.id, "a", Outcomes(created=[1]))
    assert not await store.renew(bulk.id, "a", 30)
    again = await store.reserve(bulk.id, "b", 5)
    assert [r.line for r in again] == [1, 2]
    assert again[0].deployment_id == first[0].deployment_id
    await store.record(
        bulk.id, "b", Outcomes(created=[1], invalid=[(2, "no such group")], retries=2)
    )
    got = await store.get(bulk.id)
    assert (got.records_processed, got.invalid_input_records, got.retry_attempts) == (3, 2, 2)
    # StopBulkDeployment holds no lease.
    assert await store.transition(bulk.id, None, BulkEvent.STOP) is BulkState.STOPPING
    assert await store.renew(bulk.id, "b", 30)
    await store.release(bulk.id, "b")
    assert await store.orphans() == [bulk.id]


async def test_listing_is_newest_first_and_unknown_ids_are_not_found(db: Database) -> None:
    store = SqlBulkStore(inline(db))
    made = [await new_bulk(store) for _ in range(3)]
    listed = await store.listing(0, 10)
    assert [b.id for b in listed] == [b.id for b in reversed(made)]
    assert [b.id for b in await store.listing(1, 1)] == [made[1].id]
    with pytest.raises(NotFoundError):
        await store.get("nope")
    with pytest.raises(NotFoundError):
        await store.tally("nope")
