# SPDX-License-Identifier: Apache-2.0
"""The refresher against a real agent and store: rotations, failures, hints, deployments first."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from edge.config import RefreshSettings
from edge.deploy.agent import DeploymentAgent
from edge.deploy.journal import History, Inbox
from edge.errors import SecretFetchError
from edge.fixtures.core import next_created_at
from edge.ipc.protocol import OP_GET_SECRET_VALUE, OP_GET_SECRET_VALUE_V1, Request, Response
from edge.ipc.server import WorkerIdentity
from edge.secrets.contents import SecretVersion
from edge.secrets.keys import generate_key
from edge.secrets.live import LiveSecrets
from edge.secrets.refresh import Refresher
from edge.secrets.source import Described, StaticSecretSource
from edge.secrets.store import SecretStore
from edge.workers.services import CoreServices

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf"


def version(vid: str, *stages: str) -> SecretVersion:
    """A version whose value names it."""
    return SecretVersion(
        version_id=vid, version_stages=stages, created_date=1.0, secret_string=f"value-{vid}"
    )


def document(deployment_id: str) -> bytes:
    """A plain deployment document with one secret resource (AWSCURRENT + Label1)."""
    data = {"ARN": ARN, "AdditionalStagingLabelsToDownload": ["Label1"]}
    return json.dumps(
        {
            "DeploymentId": deployment_id,
            "DeploymentType": "NewDeployment",
            "GroupId": "group-1",
            "GroupVersionId": deployment_id,
            # Each one later than the last: the agent refuses another id at the same instant.
            "CreatedAt": next_created_at(),
            "Group": {
                "Resources": [
                    {
                        "Id": "db",
                        "Name": "db",
                        "ResourceDataContainer": {"SecretsManagerSecretResourceData": data},
                    }
                ],
                "Functions": [],
                "Connectors": [],
                "Subscriptions": [],
            },
        }
    ).encode()


class GatedSource(StaticSecretSource):
    """A static source whose DescribeSecret can be held until the test lets it go."""

    def __init__(self, secrets: Mapping[str, Sequence[SecretVersion]]) -> None:
        super().__init__(secrets)
        self.hold = asyncio.Event()
        self.hold.set()
        self.describing = asyncio.Event()

    async def describe(
        self, arns: Sequence[str], *, pace: Callable[[], Awaitable[None]] | None = None
    ) -> tuple[dict[str, Described], dict[str, SecretFetchError]]:
        self.describing.set()
        await self.hold.wait()
        return await super().describe(arns, pace=pace)


@dataclass(frozen=True)
class Grant:
    """A function allowed to read some secrets."""

    function_arn: str
    readable_resources: frozenset[str]


class World:
    """An agent and a refresher sharing one LiveSecrets over a real store, and a source."""

    def __init__(self, root: Path, *, hint_interval: float = 30.0) -> None:
        self.source = GatedSource({ARN: [version("v1", "AWSCURRENT"), version("v0", "Label1")]})
        self.store = SecretStore(path=root / "secrets.store", key=generate_key(root / "core.key"))
        self.statuses: list[dict[str, Any]] = []
        #: Set when a deployment reports InProgress (it holds the rotation lock then).
        self.applying = asyncio.Event()
        self.secrets = LiveSecrets(self.store)
        self.agent = DeploymentAgent(
            secrets=self.secrets,
            source=self.source,
            inbox=Inbox(root / "inbox"),
            history=History(root / "deployments.json"),
            publish_status=self._status,
        )
        self.messages: list[dict[str, Any]] = []
        self.refresher = Refresher(
            source=self.source,
            secrets=self.secrets,
            idle=self.agent.idle,
            settings=RefreshSettings(
                max_calls_per_second=1000, hint_min_interval_seconds=hint_interval
            ),
            publish=lambda p: self.messages.append(json.loads(p)),
        )

    def _status(self, payload: bytes) -> None:
        status = json.loads(payload)
        self.statuses.append(status)
        if status["DeploymentStatus"] == "InProgress":
            self.applying.set()

    async def deploy(self, deployment_id: str) -> None:
        """Apply one deployment through the agent and wait until it is done."""
        runner = asyncio.create_task(self.agent.run())
        try:
            await self.agent.receive("t", document(deployment_id))
            async with asyncio.timeout(10):
                await self.agent.idle.wait()
        finally:
            runner.cancel()

    def rotate(self) -> None:
        """AWSCURRENT moves to a new version v2; v1 becomes AWSPREVIOUS."""
        self.source.set_versions(
            ARN,
            [version("v2", "AWSCURRENT"), version("v1", "AWSPREVIOUS"), version("v0", "Label1")],
        )


@pytest.fixture
async def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    await w.deploy("d1")
    assert w.statuses[-1]["DeploymentStatus"] == "Success"
    return w


async def test_redeploy_of_an_unchanged_group_fetches_no_value(world: World) -> None:
    """The second deployment only describes: both versions are reused from the store."""
    before = world.source.calls["GetSecretValue"]
    await world.deploy("d2")
    assert world.statuses[-1]["DeploymentStatus"] == "Success"
    assert world.source.calls["GetSecretValue"] == before


async def test_a_rotated_label_is_fetched_stored_swapped_and_reported(world: World) -> None:
    """Only the new version is fetched; the store keeps the deployment record; no value sent."""
    world.rotate()
    calls = world.source.calls["GetSecretValue"]
    assert await world.refresher.refresh(trigger="interval")
    assert world.source.calls["GetSecretValue"] == calls + 1
    stored = world.store.load()
    assert stored is not None
    assert stored == world.secrets.contents
    assert world.secrets.current.generation == 2  # the deployment, then the refresh
    served = world.secrets.index.by_id[ARN].version_for("AWSCURRENT")
    assert served is not None
    assert served.secret_string == "value-v2"
    assert stored.deployment is not None
    assert stored.deployment.deployment_id == "d1"
    secret = stored.secrets["db"]
    assert secret.labels == {"AWSCURRENT": "v2", "Label1": "v0"}
    assert secret.version_for("AWSCURRENT").secret_string == "value-v2"  # type: ignore[union-attr]
    (message,) = world.messages
    assert message["DeploymentId"] == "d1"
    assert message["Changes"] == [
        {
            "ResourceId": "db",
            "ARN": ARN,
            "Label": "AWSCURRENT",
            "OldVersionId": "v1",
            "NewVersionId": "v2",
        }
    ]
    assert "value-" not in json.dumps(message)
    assert world.refresher.counts.rotations == 1
    # Nothing moved since: the next check rotates nothing.
    assert await world.refresher.refresh(trigger="interval")
    assert world.refresher.counts.rotations == 1
    assert len(world.messages) == 1


async def test_a_failed_refresh_keeps_the_store(world: World) -> None:
    """A secret gone from Secrets Manager: warning, failure counted, store byte for byte."""
    before = world.store.path.read_bytes()
    world.source.set_versions(ARN, [])  # no AWSCURRENT any more: "not found"
    assert await world.refresher.refresh(trigger="interval") is False
    assert world.refresher.counts.failures == 1
    assert world.store.path.read_bytes() == before
    assert world.messages == []


async def test_a_deployment_wins_over_a_refresh_in_flight(world: World) -> None:
    """A deployment starts while a refresh describes: the refresh's result is refused."""
    world.rotate()
    world.source.hold.clear()
    world.applying.clear()
    refresh = asyncio.create_task(world.refresher.refresh(trigger="interval"))
    await asyncio.wait_for(world.source.describing.wait(), 5)
    deploy = asyncio.create_task(world.deploy("d2"))
    await asyncio.wait_for(world.applying.wait(), 5)
    with capture_logs() as logs:
        world.source.hold.set()
        assert await asyncio.wait_for(refresh, 5) is True
        await asyncio.wait_for(deploy, 10)
    assert "refresh.superseded" in [e["event"] for e in logs]
    assert world.refresher.counts.rotations == 0
    assert world.statuses[-1]["DeploymentStatus"] == "Success"
    stored = world.store.load()
    assert stored is not None
    assert stored.deployment is not None
    assert stored.deployment.deployment_id == "d2"
    assert stored.secrets["db"].labels["AWSCURRENT"] == "v2"
    assert world.messages == []


async def test_a_refresh_never_replaces_a_newer_deployment(world: World) -> None:
    """Contents replaced (by a deployment) while the refresh fetched: the refresh is dropped."""
    world.rotate()
    world.source.hold.clear()
    refresh = asyncio.create_task(world.refresher.refresh(trigger="interval"))
    await asyncio.wait_for(world.source.describing.wait(), 5)
    # Simulate a deployment queued meanwhile (the agent is no longer idle).
    world.agent.idle.clear()
    world.source.hold.set()
    assert await asyncio.wait_for(refresh, 5) is True
    world.agent.idle.set()
    stored = world.store.load()
    assert stored is not None
    assert stored.secrets["db"].labels["AWSCURRENT"] == "v1"
    assert world.messages == []


async def test_a_refresh_skips_while_a_deployment_is_queued(world: World) -> None:
    """No check at all while the agent has work: the deployment will fetch anyway."""
    world.rotate()
    world.agent.idle.clear()
    assert await world.refresher.refresh(trigger="interval")
    world.agent.idle.set()
    assert world.refresher.counts.checks == 0
    assert world.source.calls["DescribeSecret"] == 0  # the first deployment held nothing


async def test_hints_are_rate_limited_per_secret(tmp_path: Path) -> None:
    """Two hints in a row: the first checks Secrets Manager, the second is answered as is."""
    world = World(tmp_path, hint_interval=60)
    await world.deploy("d1")
    world.rotate()
    describes = world.source.calls["DescribeSecret"]
    assert await world.refresher.hint("db") is True
    assert world.secrets.contents.secrets["db"].labels["AWSCURRENT"] == "v2"
    assert await world.refresher.hint("db") is False
    assert world.source.calls["DescribeSecret"] == describes + 1
    assert world.refresher.counts.hints == 1
    assert world.refresher.counts.hints_limited == 1


async def test_refresh_hint_on_the_ipc_v1_and_native(world: World) -> None:
    """`Refresh: true` (native arg or V1 JSON key) refreshes first; without it, no refresh."""
    reader = "arn:aws:lambda:us-east-1:123456789012:function:reader:1"
    services = CoreServices(manager=None, publish=None, secrets=world.secrets)  # type: ignore[arg-type]
    world.secrets.grant([Grant(reader, frozenset({"db"}))])
    hinted: list[str] = []

    async def hint(resource_id: str) -> bool:
        hinted.append(resource_id)
        world.rotate()
        await world.refresher.refresh(trigger="hint", only={resource_id})
        return True

    services.refresh_hint = hint
    plain = services(WorkerIdentity(reader), Request(1, OP_GET_SECRET_VALUE, {"SecretId": ARN}))
    assert isinstance(plain, Response)
    assert hinted == []
    v1 = json.dumps({"SecretId": ARN, "Refresh": True}).encode()
    pending = services(WorkerIdentity(reader), Request(2, OP_GET_SECRET_VALUE_V1, {"Payload": v1}))
    assert not isinstance(pending, Response)
    answer = await pending
    assert hinted == ["db"]
    assert json.loads(answer.result["Payload"])["VersionId"] == "v2"
    native = services(
        WorkerIdentity(reader),
        Request(3, OP_GET_SECRET_VALUE, {"SecretId": ARN, "Refresh": True}),
    )
    assert not isinstance(native, Response)
    assert (await native).result["VersionId"] == "v2"
    refused = services(
        WorkerIdentity("arn:aws:lambda:us-east-1:123456789012:function:other:1"),
        Request(4, OP_GET_SECRET_VALUE, {"SecretId": ARN, "Refresh": True}),
    )
    assert not isinstance(refused, Response)
    denied = await refused
    assert denied.error is not None
    assert denied.error["Status"] == 403
    assert hinted == ["db", "db"]
