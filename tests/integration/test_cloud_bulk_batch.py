"""A bulk deployment's batches of deployments, on the real database: once each, even when killed.

The runner and the deployer `edge cloud serve` runs (`replica.deployer`), on PostgreSQL (and
the embedded SQLite for the plain path), with groups made through the control plane's own
code. A replica is a real process, SIGKILLed while its batch's write transaction is open.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from edge.cloud.build import build_document
from edge.cloud.bulk import api, replica
from edge.cloud.bulk.input import entries
from edge.cloud.bulk.records import BulkDeployment, RecordState
from edge.cloud.bulk.runner import BulkRunner
from edge.cloud.bulk.sqlstore import SqlBulkStore, inline
from edge.cloud.bulk.state import BulkState
from edge.cloud.bulk.store import Reserved
from edge.cloud.config import CloudConfig
from edge.cloud.db import Database, open_database
from edge.cloud.ids import Arns
from edge.fixtures.fleetdb import fleet_config, make_fleet
from edge.model import parse_deployment
from edge.signing import key_id, load_signing_key, open_envelope

pytestmark = pytest.mark.network

REGION, ACCOUNT = "us-east-1", "123456789012"
ARNS = Arns(REGION, ACCOUNT)
#: What the killed replica runs: the bulk deployment given, with a short lease.
VICTIM = """
import asyncio, sys
from edge.cloud.bulk import replica
from edge.cloud.bulk.runner import BulkRunner
from edge.cloud.bulk.sqlstore import SqlBulkStore, inline
from edge.cloud.config import load_cloud_config
from edge.cloud.db import open_database
from edge.signing import load_signing_key
from tests.integration.test_cloud_bulk_batch import read_groups

config = load_cloud_config(sys.argv[1])
db = open_database(config)
runner = BulkRunner(
    store=SqlBulkStore(inline(db)),
    bulk_id=sys.argv[2],
    owner="victim",
    deploy=replica.deployer(config, db, load_signing_key(config.cloud.signing_key), lambda: None),
    read=read_groups(sys.argv[3]),
    lease_seconds=5.0,
)
asyncio.run(runner.run())
"""


def read_groups(path: str) -> Any:
    """A runner's `read`: the input file at `path` (the runner's own reader wants S3 or a URI)."""

    def read(_bulk: BulkDeployment, after: int) -> AsyncIterator[Any]:
        async def chunks() -> AsyncIterator[bytes]:
            yield Path(path).read_bytes()

        return entries(chunks(), start_after=after)

    return read


@pytest.fixture
def config(tmp_path: Path, cloud_database: str) -> CloudConfig:
    where = cloud_database if cloud_database.startswith("postgresql") else str(tmp_path / "c.db")
    return fleet_config(tmp_path, where, ARNS)


@pytest.fixture
def db(config: CloudConfig) -> Iterator[Database]:
    with open_database(config) as opened:
        yield opened


def make_groups(db: Database, count: int) -> list[tuple[str, str]]:
    """Groups sharing a resource and a function definition version, a core each."""
    return make_fleet(db, ARNS, count)


def input_file(path: Path, lines: list[tuple[str, str]]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"GroupId": g, "GroupVersionId": v, "DeploymentType": "NewDeployment"})
            + "\n"
            for g, v in lines
        )
    )
    return path


async def new_bulk(store: SqlBulkStore) -> BulkDeployment:
    request = api.start_request(
        {"ExecutionRoleArn": f"arn:aws:iam::{ACCOUNT}:role/b", "InputFileUri": "s3://in/g.jsonl"}
    )
    bulk = api.new_bulk_deployment(request, ARNS)
    await store.create(bulk)
    return bulk


def deployments(db: Database) -> list[dict[str, Any]]:
    with db.read() as conn:
        rows = conn.execute(
            "SELECT d.id, d.group_id, d.envelope, d.thing_name, d.created_at,"
            " d.group_version_id, o.topic FROM deployments d"
            " LEFT JOIN outbox o ON o.deployment_id = d.id"
        ).fetchall()
    return [dict(r) for r in rows]


@pytest.mark.parametrize("cloud_database", ["postgresql", "sqlite"], indirect=True)
async def test_batches_create_each_group_once_as_create_deployment_would(
    config: CloudConfig, db: Database, tmp_path: Path
) -> None:
    """Every group gets one deployment, queued, with the very document the per-group path builds.

    Records naming no group, or a version of another group, are invalid with the reason; the
    rest of their batch goes on. Creating a batch again under its ids adds nothing.
    """
    made = make_groups(db, 12)
    lines = [*made[:5], ("no-such-group", made[0][1]), (made[1][0], made[2][1]), *made[5:]]
    store = SqlBulkStore(inline(db))
    bulk = await new_bulk(store)
    woken = []
    key = load_signing_key(config.cloud.signing_key)
    deploy = replica.deployer(config, db, key, lambda: woken.append(1))
    runner = BulkRunner(
        store=store,
        bulk_id=bulk.id,
        owner="a",
        deploy=deploy,
        read=read_groups(str(input_file(tmp_path / "in.jsonl", lines))),
        batch=5,
    )
    assert await runner.run() is BulkState.COMPLETED
    rows = deployments(db)
    assert Counter(r["group_id"] for r in rows) == {g: 1 for g, _ in made}
    assert woken
    public = {key_id(key.public_key()): key.public_key()}
    with db.read() as conn:
        for row in rows:
            assert row["topic"] == config.mqtt.deployments_topic(row["thing_name"])
            opened = open_envelope(bytes(row["envelope"]), public, thing_name=row["thing_name"])
            assert parse_deployment(opened.document).deployment_id == row["id"]
            single = build_document(
                conn,
                group_id=row["group_id"],
                group_version_id=row["group_version_id"],
                deployment_type="NewDeployment",
                deployment_id=row["id"],
                created_at=row["created_at"],
            )
            assert opened.document == single.document
    report = await store.results(bulk.id, 0, 100)
    assert [r.state for r in report] == [RecordState.CREATED] * 5 + [RecordState.INVALID] * 2 + [
        RecordState.CREATED
    ] * 7
    assert {r.deployment_id for r in report if r.deployment_id} == {r["id"] for r in rows}
    assert report[5].error_message is not None
    assert report[5].error_message.startswith("group 'no-such-group' does not exist")
    assert report[6].error_message is not None
    assert report[6].error_message.startswith(f"group version '{made[2][1]}' does not exist")
    status = api.status_answer(await store.get(bulk.id))
    assert status["BulkDeploymentMetrics"]["InvalidInputRecords"] == 2
    # A runner taken over creates its STARTED batch again, under the same ids: nothing new.
    again = [
        Reserved(r.line, str(r.group_id), str(r.group_version_id), "NewDeployment", r.deployment_id)
        for r in report
        if r.deployment_id is not None
    ]
    result = await deploy(again)
    assert (sorted(result.created), result.failed) == (sorted(r.line for r in again), [])
    assert len(deployments(db)) == len(rows)


async def test_a_replica_killed_mid_batch_deploys_no_group_twice(
    config: CloudConfig, db: Database, tmp_path: Path, postgres_url: str
) -> None:
    """SIGKILL a replica while its batch's write transaction waits: the next one deploys all.

    The batch's deployments were never committed; the replica taking the lease over creates
    them under the ids reserved for them, each group once.
    """
    made = make_groups(db, 8)
    path = input_file(tmp_path / "in.jsonl", made)
    store = SqlBulkStore(inline(db))
    bulk = await new_bulk(store)
    # Holding the outbox's lock stops the batch's write after its deployments' INSERT.
    with psycopg.connect(postgres_url) as blocker:
        blocker.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
        victim = subprocess.Popen(
            [sys.executable, "-c", VICTIM, str(config.path), bulk.id, str(path)],
            cwd=Path(__file__).resolve().parents[2],
        )
        try:
            deadline = time.monotonic() + 30
            with psycopg.connect(postgres_url, autocommit=True) as watcher:
                while not watcher.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database() AND query LIKE 'INSERT INTO outbox%'"
                ).fetchone():
                    assert victim.poll() is None, "the replica ended before its batch was written"
                    assert time.monotonic() < deadline, "the batch never reached the outbox"
                    time.sleep(0.05)
            victim.send_signal(signal.SIGKILL)
            assert victim.wait(timeout=10) == -signal.SIGKILL
        finally:
            victim.kill()
            victim.wait()
        blocker.rollback()
    assert deployments(db) == []
    reserved = {r.line: r.deployment_id for r in await store.results(bulk.id, 0, 100)}
    assert all(reserved.values()), reserved
    deadline = time.monotonic() + 30
    while await store.orphans() != [bulk.id]:
        assert time.monotonic() < deadline, "the killed replica's lease never lapsed"
        await asyncio.sleep(0.1)
    heir = BulkRunner(
        store=store,
        bulk_id=bulk.id,
        owner="heir",
        deploy=replica.deployer(
            config, db, load_signing_key(config.cloud.signing_key), lambda: None
        ),
        read=read_groups(str(path)),
    )
    assert await heir.run() is BulkState.COMPLETED
    rows = deployments(db)
    assert Counter(r["group_id"] for r in rows) == {g: 1 for g, _ in made}
    assert {r["id"] for r in rows} == set(reserved.values())
    assert all(r["topic"] for r in rows)
