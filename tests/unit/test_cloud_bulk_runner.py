"""The bulk runner against the in-memory store: paced, aborted, stopped, taken over, never twice.

Time is a fake clock that `sleep` advances, so pacing is checked exactly and nothing waits.
The deploy callable plays the part of the per-group deployment code plus an instant core: it
records the call and reports the deployment's outcome to the store.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from edge.cloud.bulk import api
from edge.cloud.bulk.input import entries
from edge.cloud.bulk.memory import MemoryBulkStore
from edge.cloud.bulk.records import BulkDeployment
from edge.cloud.bulk.rollout import AbortRule, Counts, RolloutSettings, current_rate
from edge.cloud.bulk.runner import BulkRunner, Deploy, Deployed
from edge.cloud.bulk.state import BulkEvent, BulkState
from edge.cloud.bulk.store import LeaseLostError, Reserved
from edge.cloud.errors import BrokerError, BulkInputError, NotFoundError
from edge.cloud.ids import Arns

ARNS = Arns("us-east-1", "123456789012")


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class Fleet:
    """Deploys by recording the call; each group's core answers at once."""

    def __init__(self, store: MemoryBulkStore, time: FakeTime, failing: set[str] = frozenset()):
        self.store, self.time, self.failing = store, time, failing
        self.calls: list[tuple[str, str, float]] = []
        self.errors: dict[str, list[Exception]] = {}

    async def deploy(self, record: Reserved) -> None:
        queued = self.errors.get(record.group_id)
        if queued:
            raise queued.pop(0)
        self.calls.append((record.group_id, record.deployment_id, self.time.now))
        outcome = "Failure" if record.group_id in self.failing else "Success"
        self.store.report(record.deployment_id, outcome)

    def ids_by_group(self) -> dict[str, set[str]]:
        ids: dict[str, set[str]] = defaultdict(set)
        for group, deployment_id, _ in self.calls:
            ids[group].add(deployment_id)
        return ids


def each(deploy_one: Callable[[Reserved], Awaitable[None]]) -> Deploy:
    """A batch deployer deploying one record at a time, each record's error its own."""

    async def deploy(batch: Sequence[Reserved]) -> Deployed:
        created, failed = [], []
        for record in batch:
            try:
                await deploy_one(record)
            except Exception as exc:  # noqa: BLE001 - the runner sorts them
                failed.append((record, exc))
            else:
                created.append(record.line)
        return Deployed(created, failed)

    return deploy


def input_file(groups: list[str], extra: bytes = b"") -> bytes:
    lines = [
        json.dumps({"GroupId": g, "GroupVersionId": "v1", "DeploymentType": "NewDeployment"})
        for g in groups
    ]
    return "\n".join(lines).encode() + b"\n" + extra


def reader(data: bytes) -> Any:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 64):
            yield data[i : i + 64]

    def read(_bulk: BulkDeployment, after: int) -> AsyncIterator[Any]:
        return entries(chunks(), start_after=after)

    return read


async def new_bulk(store: MemoryBulkStore, **tags: str) -> BulkDeployment:
    request = api.start_request(
        {
            "ExecutionRoleArn": "arn:aws:iam::123456789012:role/bulk",
            "InputFileUri": "s3://in/groups.jsonl",
            "tags": {f"edge:{k.replace('_', '-')}": v for k, v in tags.items()},
        }
    )
    bulk = api.new_bulk_deployment(request, ARNS)
    await store.create(bulk)
    return bulk


def runner(store: MemoryBulkStore, bulk: BulkDeployment, fleet: Fleet, data: bytes, **kw: Any):
    return BulkRunner(
        store=store,
        bulk_id=bulk.id,
        owner=kw.pop("owner", "replica-a"),
        deploy=each(kw.pop("deploy", fleet.deploy)),
        read=reader(data),
        clock=fleet.time.clock,
        sleep=fleet.time.sleep,
        **kw,
    )


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def store(time: FakeTime) -> MemoryBulkStore:
    return MemoryBulkStore(clock=time.clock)


async def test_a_bulk_deployment_deploys_every_group_once_and_completes(
    store: MemoryBulkStore, time: FakeTime
) -> None:
    """Every valid line is deployed once; invalid lines are counted and reported by line."""
    groups = [f"g{i}" for i in range(25)]
    bulk = await new_bulk(store)
    fleet = Fleet(store, time)
    data = input_file(groups, extra=b"{not json\n" + input_file(["x"]).replace(b"New", b"Re"))
    assert await runner(store, bulk, fleet, data).run() is BulkState.COMPLETED
    assert sorted(g for g, _, _ in fleet.calls) == sorted(groups)
    status = api.status_answer(await store.get(bulk.id))
    assert status["BulkDeploymentStatus"] == "Completed"
    assert status["BulkDeploymentMetrics"] == {
        "InvalidInputRecords": 2,
        "RecordsProcessed": 27,
        "RetryAttempts": 0,
    }
    report = api.report_answer(await store.results(bulk.id, 0, 100), ARNS, None)["Deployments"]
    assert [r["DeploymentStatus"] for r in report[:25]] == ["Success"] * 25
    assert report[25]["ErrorMessage"].startswith("line 26: not JSON")
    assert report[26]["ErrorMessage"].startswith("line 27: DeploymentType must be NewDeployment")
    assert store.lease_owner(bulk.id) is None


async def test_max_per_second_paces_the_starts(store: MemoryBulkStore, time: FakeTime) -> None:
    """At 5 per second, 20 groups start over about four seconds, the first at once."""
    bulk = await new_bulk(store, max_per_second="5")
    fleet = Fleet(store, time)
    await runner(store, bulk, fleet, input_file([f"g{i}" for i in range(20)])).run()
    times = [t for _, _, t in fleet.calls]
    assert times[0] == 0.0
    assert 3.6 <= times[-1] <= 4.2
    per_second = defaultdict(int)
    for t in times:
        per_second[int(t)] += 1
    assert max(per_second.values()) <= 6


async def test_the_abort_rule_stops_the_rest(store: MemoryBulkStore, time: FakeTime) -> None:
    """When half of the first four fail, the others are never started and it ends Stopped."""
    groups = [f"g{i}" for i in range(40)]
    bulk = await new_bulk(
        store, max_per_second="2", abort_failure_percent="50", abort_min_finished="4"
    )
    fleet = Fleet(store, time, failing={"g0", "g2", "g3"})
    with capture_logs() as logs:
        assert await runner(store, bulk, fleet, input_file(groups)).run() is BulkState.STOPPED
    aborted = [e for e in logs if e["event"] == "cloud.bulk.aborted"]
    assert [e["bulk_deployment_id"] for e in aborted] == [bulk.id]
    assert len(fleet.calls) < 8
    record = await store.get(bulk.id)
    assert record.error_message is not None
    assert record.error_message.startswith("Stopped by the abort rule: 3 of 4 finished")
    assert (await store.tally(bulk.id)).pending == 40 - len(fleet.calls)


async def test_stop_bulk_deployment_stops_starting_groups(
    store: MemoryBulkStore, time: FakeTime
) -> None:
    """A stop request mid-run: no group starts after it, and the state ends Stopped."""
    bulk = await new_bulk(store, max_per_second="1")
    fleet = Fleet(store, time)
    plain = fleet.deploy

    async def deploy_then_stop(record: Reserved) -> None:
        await plain(record)
        if len(fleet.calls) == 3:
            current = await store.get(bulk.id)
            assert await store.transition(bulk.id, None, BulkEvent.STOP) is api.stop(current)

    data = input_file([f"g{i}" for i in range(50)])
    final = await runner(store, bulk, fleet, data, deploy=deploy_then_stop).run()
    assert final is BulkState.STOPPED
    assert len(fleet.calls) == 3


async def test_errors_are_retried_or_make_the_record_invalid(
    store: MemoryBulkStore, time: FakeTime
) -> None:
    """A broker error is retried (RetryAttempts); a missing group makes its line invalid."""
    bulk = await new_bulk(store)
    fleet = Fleet(store, time)
    fleet.errors["flaky"] = [BrokerError("mqtt://x", "down"), BrokerError("mqtt://x", "down")]
    fleet.errors["gone"] = [NotFoundError("group", "gone", "list-groups lists them")]
    fleet.errors["dead"] = [BrokerError("mqtt://x", "down")] * 5
    data = input_file(["ok", "flaky", "gone", "dead"])
    assert await runner(store, bulk, fleet, data).run() is BulkState.COMPLETED
    assert sorted(g for g, _, _ in fleet.calls) == ["flaky", "ok"]
    record = await store.get(bulk.id)
    assert (record.retry_attempts, record.invalid_input_records) == (6, 2)
    rows = {r.line: r for r in await store.results(bulk.id, 0, 10)}
    assert rows[3].error_message is not None
    assert rows[3].error_message.startswith("group 'gone' does not exist")
    assert rows[4].error_message is not None
    assert rows[4].error_message.startswith("gave up after 5 attempts")


async def test_an_unreadable_input_file_fails_the_bulk_deployment(
    store: MemoryBulkStore, time: FakeTime
) -> None:
    bulk = await new_bulk(store)

    async def broken(_bulk: BulkDeployment, _after: int) -> AsyncIterator[Any]:
        raise BulkInputError("s3://in/groups.jsonl", "there is no such object (or bucket)")
        yield  # pragma: no cover - makes this an async generator

    final = await BulkRunner(
        store=store,
        bulk_id=bulk.id,
        owner="a",
        deploy=each(Fleet(store, time).deploy),
        read=broken,
        clock=time.clock,
        sleep=time.sleep,
    ).run()
    assert final is BulkState.FAILED
    record = await store.get(bulk.id)
    assert record.error_message == (
        "--input-file-uri: s3://in/groups.jsonl: there is no such object (or bucket)"
    )


async def test_another_replica_takes_over_and_no_group_gets_two_ids(
    store: MemoryBulkStore, time: FakeTime
) -> None:
    """A runner hangs mid-batch; once its lease expires another finishes, each group one id."""
    groups = [f"g{i}" for i in range(30)]
    data = input_file(groups)
    bulk = await new_bulk(store)
    fleet = Fleet(store, time)
    stuck = asyncio.Event()

    async def dies_at_g12(record: Reserved) -> None:
        await fleet.deploy(record)  # published, then the replica is killed before recording
        if record.group_id == "g12":
            stuck.set()
            await asyncio.Event().wait()

    first = asyncio.create_task(
        runner(store, bulk, fleet, data, owner="a", deploy=dies_at_g12, batch=10).run()
    )
    await asyncio.wait_for(stuck.wait(), timeout=10)
    assert await runner(store, bulk, fleet, data, owner="b").run() is None  # lease still live
    time.now += 31
    assert await store.orphans() == [bulk.id]
    assert await runner(store, bulk, fleet, data, owner="b").run() is BulkState.COMPLETED
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await store.get(bulk.id)).state is BulkState.COMPLETED
    ids = fleet.ids_by_group()
    assert sorted(ids) == sorted(groups)
    assert all(len(one) == 1 for one in ids.values()), ids
    report = await store.results(bulk.id, 0, 100)
    assert all(r.deployment_status == "Success" for r in report)


async def test_a_runner_that_lost_its_lease_writes_nothing_more(
    store: MemoryBulkStore, time: FakeTime
) -> None:
    """Paused past its lease while another took over, a runner stops without touching state."""
    bulk = await new_bulk(store)
    fleet = Fleet(store, time)
    plain = fleet.deploy

    async def paused(record: Reserved) -> None:
        await plain(record)
        if record.group_id == "g1":
            time.now += 31
            assert await store.acquire(bulk.id, "b", 30) is not None

    data = input_file([f"g{i}" for i in range(5)])
    assert await runner(store, bulk, fleet, data, owner="a", deploy=paused).run() is None
    assert store.lease_owner(bulk.id) == "b"
    assert (await store.get(bulk.id)).state is BulkState.RUNNING
    with pytest.raises(LeaseLostError):
        await store.transition(bulk.id, "a", BulkEvent.FINISHED)


async def test_a_ramp_up_starts_slowly(store: MemoryBulkStore, time: FakeTime) -> None:
    """From 1/s doubling every 4 started, up to 16/s: the first four take 3 s, the last fast."""
    bulk = await new_bulk(
        store, ramp_up_from="1", ramp_up_factor="2", ramp_up_every="4", max_per_second="16"
    )
    assert bulk.rollout == RolloutSettings(
        max_per_second=16, ramp_up=bulk.rollout.ramp_up, abort=None
    )
    fleet = Fleet(store, time)
    await runner(store, bulk, fleet, input_file([f"g{i}" for i in range(60)])).run()
    times = [t for _, _, t in fleet.calls]
    assert times[3] - times[0] >= 2.5
    assert times[59] - times[43] <= 1.5


def test_abort_settings_come_from_tags() -> None:
    tags = {"edge:abort-failure-percent": "50", "edge:abort-min-finished": "4"}
    assert api.rollout_from_tags(tags).abort == AbortRule(50, 4)


async def test_a_batch_never_exceeds_what_the_rollout_allows(
    store: MemoryBulkStore, time: FakeTime
) -> None:
    """Each batch handed to the deployer fits the rollout's allowance when it is handed over.

    Ramping from 2/s, doubling every 4 started, up to 8/s: no batch holds more starts than the
    token bucket holds at the current rate (one second's worth, at least one).
    """
    bulk = await new_bulk(
        store, ramp_up_from="2", ramp_up_factor="2", ramp_up_every="4", max_per_second="8"
    )
    fleet = Fleet(store, time)
    plain = each(fleet.deploy)
    batches: list[tuple[float, int, int]] = []

    async def deploy(batch: Sequence[Reserved]) -> Deployed:
        started = (await store.tally(bulk.id)).counts.started - len(batch)
        batches.append((time.now, started, len(batch)))
        return await plain(batch)

    final = await BulkRunner(
        store=store,
        bulk_id=bulk.id,
        owner="a",
        deploy=deploy,
        read=reader(input_file([f"g{i}" for i in range(60)])),
        clock=time.clock,
        sleep=time.sleep,
    ).run()
    assert final is BulkState.COMPLETED
    assert sum(size for _, _, size in batches) == 60
    assert batches[0] == (0.0, 0, 1)
    for _, started, size in batches:
        rate = current_rate(bulk.rollout, Counts(started=started))
        assert rate is not None
        assert 1 <= size <= max(1.0, rate), (started, size, rate)
