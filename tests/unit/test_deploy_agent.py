"""The deployment agent after a crash: what the store already holds is not applied twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from edge.deploy.agent import INTAKE_QUEUE_LIMIT, DeploymentAgent
from edge.deploy.journal import History, Inbox
from edge.model import SecretResource
from edge.secrets.contents import LocalSecret, SecretVersion
from edge.secrets.keys import generate_key
from edge.secrets.live import LiveSecrets
from edge.secrets.source import StaticSecretSource
from edge.secrets.store import SecretStore

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf"


class CountingSource(StaticSecretSource):
    """A static source that counts its fetches."""

    fetches = 0

    async def fetch(
        self, resources: Sequence[SecretResource], **kwargs: Any
    ) -> dict[str, LocalSecret]:
        self.fetches += 1
        return await super().fetch(resources, **kwargs)


def document(deployment_id: str, created_at: str = "2026-11-28T12:00:00Z") -> bytes:
    return json.dumps(
        {
            "DeploymentId": deployment_id,
            "DeploymentType": "NewDeployment",
            "GroupId": "group-1",
            "GroupVersionId": "v1",
            "CreatedAt": created_at,
            "Group": {
                "Resources": [
                    {
                        "Id": "db",
                        "Name": "db",
                        "ResourceDataContainer": {"SecretsManagerSecretResourceData": {"ARN": ARN}},
                    }
                ],
                "Functions": [],
                "Connectors": [],
                "Subscriptions": [],
            },
        }
    ).encode()


async def run_agent(tmp_path: Path, store: SecretStore, source: CountingSource) -> list[Any]:
    """Start an agent on the state in tmp_path, let it drain its inbox, return its statuses."""
    published: list[Any] = []
    secrets = LiveSecrets(store)
    await secrets.load()
    agent = DeploymentAgent(
        secrets=secrets,
        source=source,
        inbox=Inbox(tmp_path / "inbox"),
        history=History(tmp_path / "deployments.json"),
        publish_status=lambda payload: published.append(json.loads(payload)),
    )
    task = asyncio.create_task(agent.run())
    await asyncio.sleep(0)
    await asyncio.wait_for(agent.idle.wait(), 10)
    task.cancel()
    return published


async def test_a_deployment_the_store_already_holds_is_reported_not_refetched(
    tmp_path: Path,
) -> None:
    """A crash after the rotation, before the outcome was recorded: Success, no second rotation.

    The inbox hands the document back on start and the history doesn't know it; the store was
    built from it. bench/core_crash.py found the core fetching and rotating it again.
    """
    tmp_path.chmod(0o700)
    store = SecretStore(path=tmp_path / "secrets.store", key=generate_key(tmp_path / "core.key"))
    version = SecretVersion("v-1", ("AWSCURRENT",), 1.7e9, secret_string="pw-1")
    source = CountingSource({ARN: [version]})
    Inbox(tmp_path / "inbox").put(document("d1"))
    first = await run_agent(tmp_path, store, source)
    assert [s["DeploymentStatus"] for s in first] == ["InProgress", "Success"]
    assert source.fetches == 1
    rotated = store.path.stat().st_mtime_ns

    # The crash: the document is still in the inbox, the history never recorded its outcome.
    Inbox(tmp_path / "inbox").put(document("d1"))
    (tmp_path / "deployments.json").unlink()
    again = await run_agent(tmp_path, store, source)

    assert [(s["DeploymentId"], s["DeploymentStatus"]) for s in again] == [("d1", "Success")]
    assert source.fetches == 1
    assert store.path.stat().st_mtime_ns == rotated
    assert History(tmp_path / "deployments.json").get("d1") == again[0]
    assert not list((tmp_path / "inbox").iterdir())


async def test_the_last_outcome_is_reported_again_at_start(tmp_path: Path) -> None:
    """A crash after recording Success, before the broker took the status: start re-sends it."""
    tmp_path.chmod(0o700)
    store = SecretStore(path=tmp_path / "secrets.store", key=generate_key(tmp_path / "core.key"))
    version = SecretVersion("v-1", ("AWSCURRENT",), 1.7e9, secret_string="pw-1")
    source = CountingSource({ARN: [version]})
    Inbox(tmp_path / "inbox").put(document("d1"))
    first = await run_agent(tmp_path, store, source)
    assert first[-1]["DeploymentStatus"] == "Success"

    restarted = await run_agent(tmp_path, store, source)

    assert restarted == [first[-1]]
    assert source.fetches == 1


def make_agent(tmp_path: Path, published: list[Any]) -> DeploymentAgent:
    """An agent on an empty store in tmp_path, with one secret its source can fetch."""
    tmp_path.chmod(0o700)
    store = SecretStore(path=tmp_path / "secrets.store", key=generate_key(tmp_path / "core.key"))
    version = SecretVersion("v-1", ("AWSCURRENT",), 1.7e9, secret_string="pw-1")
    return DeploymentAgent(
        secrets=LiveSecrets(store),
        source=CountingSource({ARN: [version]}),
        inbox=Inbox(tmp_path / "inbox"),
        history=History(tmp_path / "deployments.json"),
        publish_status=lambda payload: published.append(json.loads(payload)),
    )


async def drain(agent: DeploymentAgent) -> None:
    """Run the agent until everything received so far is applied."""
    task = asyncio.create_task(agent.run())
    await asyncio.sleep(0)
    await asyncio.wait_for(agent.idle.wait(), 10)
    task.cancel()


async def test_an_oversized_payload_is_dropped_before_the_inbox(tmp_path: Path) -> None:
    """A payload over the limit is logged and dropped: no inbox file, no status, no queue."""
    published: list[Any] = []
    agent = make_agent(tmp_path, published)
    inbox = tmp_path / "inbox"
    before = inbox.stat().st_mtime_ns
    with capture_logs() as logs:
        await agent.receive("t", b"{" + b" " * agent.max_payload + b"}")
    assert [e["event"] for e in logs] == ["deploy.payload_too_large"]
    assert logs[0]["limit"] == agent.max_payload
    assert list(inbox.iterdir()) == []
    assert inbox.stat().st_mtime_ns == before
    assert agent.idle.is_set()
    await agent.receive("t", document("d1"))
    await drain(agent)
    assert [s["DeploymentStatus"] for s in published] == ["InProgress", "Success"]


async def test_same_created_at_under_another_id_is_refused_same_id_is_a_duplicate(
    tmp_path: Path,
) -> None:
    """Another DeploymentId at the applied CreatedAt fails as a replay; the same id is answered."""
    published: list[Any] = []
    agent = make_agent(tmp_path, published)
    await agent.receive("t", document("d1", "2026-11-28T12:00:00Z"))
    await agent.receive("t", document("d2", "2026-11-28T12:00:00.000+00:00"))
    await agent.receive("t", document("d1", "2026-11-28T12:00:00Z"))
    await agent.receive("t", document("d3", "2026-11-28T12:00:00.000001Z"))
    await drain(agent)
    outcomes = [(s["DeploymentId"], s["DeploymentStatus"]) for s in published]
    assert outcomes == [
        ("d1", "InProgress"),
        ("d1", "Success"),
        ("d2", "Failure"),
        ("d1", "Success"),
        ("d3", "InProgress"),
        ("d3", "Success"),
    ]
    assert "the same instant as deployment d1" in published[2]["ErrorMessage"]
    assert agent.secrets.contents.deployment is not None
    assert agent.secrets.contents.deployment.deployment_id == "d3"


async def test_a_full_queue_holds_the_sender_until_there_is_room(tmp_path: Path) -> None:
    """Past INTAKE_QUEUE_LIMIT waiting documents, `receive` waits (the MQTT ack is withheld)."""
    published: list[Any] = []
    agent = make_agent(tmp_path, published)
    for i in range(INTAKE_QUEUE_LIMIT):
        await agent.receive("t", document(f"q{i}", f"2026-11-28T12:00:{i:02d}Z"))
    extra = asyncio.create_task(agent.receive("t", document("last", "2026-11-28T12:01:00Z")))
    # Its document reaches the inbox (durable), then it waits for room in the queue.
    async with asyncio.timeout(10):
        while len(list((tmp_path / "inbox").iterdir())) <= INTAKE_QUEUE_LIMIT:
            await asyncio.sleep(0.01)
    for _ in range(10):
        await asyncio.sleep(0)
    assert not extra.done()
    runner = asyncio.create_task(agent.run())
    await asyncio.wait_for(extra, 10)
    await asyncio.wait_for(agent.idle.wait(), 10)
    runner.cancel()
    assert (published[-1]["DeploymentId"], published[-1]["DeploymentStatus"]) == (
        "last",
        "Success",
    )


async def test_left_over_documents_are_read_one_at_a_time_and_big_ones_dropped(
    tmp_path: Path,
) -> None:
    """After a restart the inbox is applied in order; a file over the limit is removed unread."""
    inbox = Inbox(tmp_path / "inbox")
    inbox.put(document("old", "2026-11-28T12:00:00Z"))
    inbox.put(b"x" * (1024 * 1024 + 1))
    inbox.put(document("new", "2026-11-28T12:00:01Z"))
    published: list[Any] = []
    agent = make_agent(tmp_path, published)
    assert not agent.idle.is_set()
    with capture_logs() as logs:
        await drain(agent)
    assert [(s["DeploymentId"], s["DeploymentStatus"]) for s in published][1::2] == [
        ("old", "Success"),
        ("new", "Success"),
    ]
    assert [e for e in logs if e["event"] == "deploy.inbox_unreadable"]
    assert list((tmp_path / "inbox").iterdir()) == []
