"""The core's side of signed deployments: the agent verifies, refuses replays, reports or not."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from edge.deploy.agent import DeploymentAgent
from edge.deploy.journal import History, Inbox
from edge.deploy.trust import DeploymentTrust
from edge.secrets import seal_process
from edge.secrets.contents import DeploymentRecord, StoreContents
from edge.secrets.keys import generate_key
from edge.secrets.live import LiveSecrets
from edge.secrets.source import StaticSecretSource
from edge.secrets.store import SecretStore
from edge.signing import raw_public_key, seal

THING = "core-1"
KEY = Ed25519PrivateKey.generate()
APPLIED_AT = "2026-11-28T12:00:00.000000Z"


def document(deployment_id: str, created_at: str) -> bytes:
    return json.dumps(
        {
            "DeploymentId": deployment_id,
            "DeploymentType": "NewDeployment",
            "GroupId": "g",
            "GroupVersionId": "v",
            "CreatedAt": created_at,
            "Group": {"Resources": []},
        }
    ).encode()


class Core:
    """A deployment agent over a real store in tmp_path, with what it published."""

    def __init__(self, root: Path, *, allow_unsigned: bool = False) -> None:
        self.published: list[dict[str, Any]] = []
        self.history = History(root / "deployments.json")
        record = DeploymentRecord("applied", "NewDeployment", "g", "v0", APPLIED_AT)
        store = SecretStore(path=root / "secrets.store", key=generate_key(root / "core.key"))
        store.save(StoreContents(deployment=record))
        self.agent = DeploymentAgent(
            secrets=LiveSecrets(store),
            source=StaticSecretSource({}),
            inbox=Inbox(root / "inbox"),
            history=self.history,
            publish_status=lambda payload: self.published.append(json.loads(payload)),
            trust=DeploymentTrust.of(
                THING, [raw_public_key(KEY.public_key())], allow_unsigned=allow_unsigned
            ),
        )

    async def deliver(self, payload: bytes) -> None:
        runner = asyncio.create_task(self.agent.run())
        try:
            await self.agent.receive("t", payload)
            async with asyncio.timeout(10):
                await self.agent.idle.wait()
        finally:
            runner.cancel()


@pytest.fixture
async def core(tmp_path: Path) -> Core:
    core = Core(tmp_path)
    await core.agent.secrets.load()
    return core


async def test_a_signed_newer_document_is_applied(core: Core) -> None:
    """A verified document created after the applied one goes through to Success."""
    await core.deliver(
        seal(document("new", "2026-11-28T12:00:01Z"), signing_key=KEY, thing_name=THING)
    )
    assert [s["DeploymentStatus"] for s in core.published] == ["InProgress", "Success"]
    assert core.agent.secrets.contents.deployment is not None
    assert core.agent.secrets.contents.deployment.deployment_id == "new"


async def test_forged_and_unsigned_documents_get_no_status(core: Core) -> None:
    """Unverified documents are only logged: no status, no history, nothing applied."""
    forged = seal(
        document("f", "2027-01-01T00:00:00Z"),
        signing_key=Ed25519PrivateKey.generate(),
        thing_name=THING,
    )
    with capture_logs() as logs:
        await core.deliver(forged)
        await core.deliver(document("u", "2027-01-01T00:00:00Z"))
    assert core.published == []
    assert core.history.get("f") is None
    assert core.history.get("u") is None
    events = [e for e in logs if e["event"] == "deploy.signature_rejected"]
    assert len(events) == 2
    assert "not signed" in events[1]["error"]


async def test_a_signature_that_cannot_be_checked_is_refused_not_accepted(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crypto child that dies is never a yes: the document is refused like a forged one."""
    monkeypatch.setattr(seal_process, "SEALER_MODULE", "tests.support.faulty_sealer")
    monkeypatch.setenv("EDGE_TEST_SEALER_FAULT", "exit")
    with capture_logs() as logs:
        await core.deliver(
            seal(document("genuine", "2026-11-28T12:00:01Z"), signing_key=KEY, thing_name=THING)
        )
    assert core.published == []
    assert core.history.get("genuine") is None
    assert core.agent.secrets.contents.deployment is not None
    assert core.agent.secrets.contents.deployment.deployment_id == "applied"
    (event,) = [e for e in logs if e["event"] == "deploy.signature_rejected"]
    assert "could not be checked" in event["error"]
    assert "exit status 3" in event["error"]
    assert core.agent.last_refused is not None
    assert core.agent.last_refused["Reason"] == "signature"


async def test_a_stale_document_never_seen_gets_a_failure_saying_why(core: Core) -> None:
    """A genuine but older document is refused with a Failure, so its sender learns why."""
    await core.deliver(
        seal(document("old", "2026-11-28T11:00:00Z"), signing_key=KEY, thing_name=THING)
    )
    (status,) = core.published
    assert status["DeploymentStatus"] == "Failure"
    assert "before the deployment this core applied last" in status["ErrorMessage"]
    assert core.agent.secrets.contents.deployment is not None
    assert core.agent.secrets.contents.deployment.deployment_id == "applied"


async def test_a_replay_of_a_handled_deployment_is_only_logged(core: Core) -> None:
    """Replaying a document the core already handled publishes nothing, not even its old status.

    (The one status sent is the agent's start-up re-send of the latest recorded outcome.)
    """
    latest = {"DeploymentId": "old", "DeploymentStatus": "Success"}
    core.history.record(latest)
    with capture_logs() as logs:
        await core.deliver(
            seal(document("old", "2026-11-28T11:00:00Z"), signing_key=KEY, thing_name=THING)
        )
    assert core.published == [latest]
    assert [e["event"] for e in logs if e["event"].startswith("deploy.")] == [
        "deploy.replay_rejected"
    ]


async def test_allow_unsigned_accepts_plain_documents_loudly(tmp_path: Path) -> None:
    """With allow_unsigned, a plain document is applied, with a warning at start and for it."""
    with capture_logs() as logs:
        core = Core(tmp_path, allow_unsigned=True)
        await core.agent.secrets.load()
        await core.deliver(document("plain", "2026-11-28T12:00:01Z"))
    assert core.published[-1]["DeploymentStatus"] == "Success"
    events = [e["event"] for e in logs]
    assert "deploy.unsigned_allowed" in events
    assert "deploy.unsigned_accepted" in events
