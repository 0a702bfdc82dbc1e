# SPDX-License-Identifier: Apache-2.0
"""The deployment agent: takes documents from MQTT, applies them one at a time, reports status.

Applying is all-or-nothing. Every secret version is fetched first; only when all succeeded is
the new store written (atomically) and made live. Any failure leaves the previous store and
the running state untouched and is reported as a `Failure` whose ErrorMessage says what to fix.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

from edge.deploy.journal import History, Inbox, InboxEntry
from edge.deploy.state import DeploymentEvent, DeploymentState, next_state
from edge.errors import DeploymentInvalidError, EdgeError
from edge.log import REDACTOR, get_logger
from edge.model import Deployment, DeploymentType, parse_deployment
from edge.secrets.contents import DeploymentRecord, StoreContents
from edge.secrets.source import SecretSource
from edge.secrets.store import SecretStore

Publisher = Callable[[bytes], None]
Listener = Callable[[StoreContents], None]

#: DeploymentType reported for a document too broken to say which type it was.
_UNKNOWN_TYPE = "Unknown"


def utc_now() -> str:
    """Current time as ISO-8601 UTC with millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_document(
    deployment_id: str, deployment_type: str, state: DeploymentState, error: str | None = None
) -> dict[str, Any]:
    """Build the status document published on the status topic."""
    doc: dict[str, Any] = {
        "DeploymentId": deployment_id,
        "DeploymentType": deployment_type,
        "DeploymentStatus": state.value,
        "UpdatedAt": utc_now(),
    }
    if error is not None:
        # Defence in depth: an error from a library could quote a value back at us.
        doc["ErrorMessage"] = REDACTOR.mask(error)
    return doc


def build_contents(deployment: Deployment, secrets: StoreContents | None = None) -> StoreContents:
    """The store a deployment produces (empty for a ResetDeployment)."""
    record = DeploymentRecord(
        deployment_id=deployment.deployment_id,
        deployment_type=deployment.deployment_type.value,
        group_id=deployment.group_id,
        group_version_id=deployment.group_version_id,
        created_at=deployment.created_at,
    )
    if deployment.deployment_type is DeploymentType.RESET or secrets is None:
        return StoreContents(deployment=record)
    return StoreContents(deployment=record, group=deployment.raw_group, secrets=secrets.secrets)


class DeploymentAgent:
    """Serialises deployments: one at a time, in arrival order, each recorded durably."""

    def __init__(
        self,
        *,
        store: SecretStore,
        source: SecretSource,
        inbox: Inbox,
        history: History,
        publish_status: Publisher,
        contents: StoreContents,
        on_applied: Listener | None = None,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._store = store
        self._source = source
        self._inbox = inbox
        self._history = history
        self._publish = publish_status
        self._on_applied = on_applied
        self._log = logger or get_logger("deploy")
        self._queue: asyncio.Queue[InboxEntry] = asyncio.Queue()
        self.contents = contents
        #: Set whenever the queue is empty and nothing is being applied (for tests and demo).
        self.idle = asyncio.Event()
        self.idle.set()
        for entry in inbox.pending():
            self._enqueue(entry)

    def _enqueue(self, entry: InboxEntry) -> None:
        self.idle.clear()
        self._queue.put_nowait(entry)

    async def receive(self, _topic: str, payload: bytes) -> None:
        """MQTT handler: persist the document first, then queue it for `run`."""
        entry = await asyncio.to_thread(self._inbox.put, payload)
        self._enqueue(entry)

    async def run(self) -> None:
        """Apply queued deployments forever, one at a time."""
        while True:
            entry = await self._queue.get()
            try:
                await self._handle(entry.payload)
            except Exception:  # noqa: BLE001 - the core must survive any one bad deployment
                self._log.exception("deploy.crashed")
            finally:
                self._inbox.done(entry)
                if self._queue.empty():
                    self.idle.set()

    async def _handle(self, payload: bytes) -> None:
        try:
            deployment = parse_deployment(payload)
        except DeploymentInvalidError as exc:
            self._reject(payload, exc)
            return
        previous = self._history.get(deployment.deployment_id)
        if previous is not None:
            # A redelivery (QoS 1 is at-least-once): answer with the outcome we already had.
            self._log.info(
                "deploy.duplicate",
                deployment_id=deployment.deployment_id,
                status=previous.get("DeploymentStatus"),
            )
            self._publish(json.dumps(previous).encode())
            return
        with structlog.contextvars.bound_contextvars(deployment_id=deployment.deployment_id):
            await self._apply(deployment)

    def _reject(self, payload: bytes, exc: DeploymentInvalidError) -> None:
        if exc.deployment_id is None:
            self._log.warning("deploy.rejected", error=str(exc), size=len(payload))
            return
        dep_type = _peek_type(payload)
        state = next_state(DeploymentState.RECEIVED, DeploymentEvent.FAIL)
        self._log.warning("deploy.rejected", deployment_id=exc.deployment_id, error=str(exc))
        self._finish(status_document(exc.deployment_id, dep_type, state, str(exc)))

    async def _apply(self, deployment: Deployment) -> None:
        dep_type = deployment.deployment_type.value
        state = next_state(DeploymentState.RECEIVED, DeploymentEvent.START)
        self._publish(
            json.dumps(status_document(deployment.deployment_id, dep_type, state)).encode()
        )
        resources = deployment.group.secret_resources
        self._log.info(
            "deploy.started", type=dep_type, group_id=deployment.group_id, secrets=len(resources)
        )
        try:
            if deployment.deployment_type is DeploymentType.RESET or not resources:
                fetched = StoreContents()
            else:
                fetched = StoreContents(secrets=await self._source.fetch(resources))
                # Mask new values before anything else can mention them.
                REDACTOR.update([*self.contents.values(), *fetched.values()])
            contents = build_contents(deployment, fetched)
            await self._store.asave(contents)
        except Exception as exc:  # noqa: BLE001 - every failure must end in a Failure status
            if isinstance(exc, EdgeError):
                message = str(exc)
                self._log.warning("deploy.failed", error_type=type(exc).__name__, error=message)
            else:
                message = f"internal error ({type(exc).__name__}); see the core's log"
                self._log.exception("deploy.failed", error_type=type(exc).__name__)
            REDACTOR.update(self.contents.values())
            state = next_state(state, DeploymentEvent.FAIL)
            self._finish(status_document(deployment.deployment_id, dep_type, state, message))
            return
        self.contents = contents
        REDACTOR.update(contents.values())
        if self._on_applied is not None:
            self._on_applied(contents)
        state = next_state(state, DeploymentEvent.SUCCEED)
        self._log.info("deploy.complete", secrets=len(contents.secrets))
        self._finish(status_document(deployment.deployment_id, dep_type, state))

    def _finish(self, status: dict[str, Any]) -> None:
        try:
            self._history.record(status)
        except OSError as exc:
            # Costs only duplicate detection for this id; the status must still go out.
            self._log.warning("deploy.history_unwritable", error=str(exc))
        self._publish(json.dumps(status).encode())


def _peek_type(payload: bytes) -> str:
    """Best-effort DeploymentType of a rejected document, for its Failure status."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return _UNKNOWN_TYPE
    value = doc.get("DeploymentType") if isinstance(doc, dict) else None
    valid = {t.value for t in DeploymentType}
    return value if isinstance(value, str) and value in valid else _UNKNOWN_TYPE
