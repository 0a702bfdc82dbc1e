"""The deployment agent after a crash: what the store already holds is not applied twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.deploy.agent import DeploymentAgent
from edge.deploy.journal import History, Inbox
from edge.model import SecretResource
from edge.secrets.contents import LocalSecret, SecretVersion, StoreContents
from edge.secrets.keys import generate_key
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


def document(deployment_id: str) -> bytes:
    return json.dumps(
        {
            "DeploymentId": deployment_id,
            "DeploymentType": "NewDeployment",
            "GroupId": "group-1",
            "GroupVersionId": "v1",
            "CreatedAt": "2026-11-28T12:00:00Z",
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
    agent = DeploymentAgent(
        store=store,
        source=source,
        inbox=Inbox(tmp_path / "inbox"),
        history=History(tmp_path / "deployments.json"),
        publish_status=lambda payload: published.append(json.loads(payload)),
        contents=store.load() or StoreContents(),
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
