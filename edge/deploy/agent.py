# SPDX-License-Identifier: Apache-2.0
"""The deployment agent: takes documents from MQTT, applies them one at a time, reports status.

Applying is all-or-nothing. Every secret version is fetched first; only when all succeeded is
the new store written (atomically) and made live. Any failure leaves the previous store and
the running state untouched and is reported as a `Failure` whose ErrorMessage says what to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog
from structlog.typing import FilteringBoundLogger

from edge.deploy.journal import History, Inbox, InboxEntry
from edge.deploy.state import DeploymentEvent, DeploymentState, next_state
from edge.deploy.trust import DeploymentTrust
from edge.envelope import MAX_ENVELOPE_BYTES, check_fresh
from edge.errors import (
    DeploymentInvalidError,
    EdgeError,
    SameTimeDeploymentError,
    SignatureError,
    StaleDeploymentError,
)
from edge.log import get_logger, set_group_file, set_group_level
from edge.model import MAX_DOCUMENT_BYTES, Deployment, DeploymentType, parse_deployment
from edge.model.loggers import LoggingPlan, plan_logging
from edge.redaction import REDACTOR
from edge.secrets.contents import DeploymentRecord, StoreContents
from edge.secrets.index import Reader
from edge.secrets.live import LiveSecrets, Rotation
from edge.secrets.source import SecretSource, held_versions

Publisher = Callable[[bytes], None]


class Prepared(Protocol):
    """What a workload prepared for a deployment: where each function's code is, who reads what."""

    @property
    def code_dirs(self) -> Mapping[str, Path]:
        """Qualified function ARN -> unpacked code directory."""
        ...

    @property
    def workers(self) -> Sequence[Reader]:
        """Every function and connector to run, with the secrets each may read."""
        ...


_P = TypeVar("_P", bound=Prepared)


class DeploymentHooks(Protocol[_P]):
    """The group's running part (functions, routes), switched with the store."""

    async def prepare(self, deployment: Deployment) -> _P:
        """Get everything ready without changing what runs; raise EdgeError to fail."""
        ...

    async def activate(self, contents: StoreContents, prepared: _P) -> None:
        """Switch to the new deployment's routes and workers (after its secrets went live)."""
        ...


#: Logged at start and for every unsigned document when [deployments] allow_unsigned is true.
_UNSIGNED_WARNING = (
    "UNSIGNED DEPLOYMENTS ARE ACCEPTED: anyone who can publish to this core's deployments topic "
    "can deploy to it; set [deployments] allow_unsigned = false outside development"
)

#: DeploymentType reported for a document too broken to say which type it was.
_UNKNOWN_TYPE = "Unknown"

#: Received documents waiting to be applied, at most. Each is at most MAX_ENVELOPE_BYTES, so
#: the queue holds at most ~22 MB. When it is full, `receive` waits for room: the MQTT link
#: then withholds the QoS 1 acknowledgement of the message in hand (and reads no other), so
#: the broker keeps it, and nothing is lost. Dropping would lose a genuine deployment that
#: arrived in a flood; no operator sends 16 deployments to one core faster than it applies them.
INTAKE_QUEUE_LIMIT = 16


def check_not_replayed(deployment: Deployment, applied: DeploymentRecord | None) -> None:
    """Refuse a document created before the applied one, or at its instant under another id.

    The same DeploymentId at the same instant passes: it is a redelivery, answered from the
    history. CreatedAt values are compared as instants, so "12:00:00Z" and "12:00:00.000+00:00"
    are one time.

    Raises:
        StaleDeploymentError: `deployment` is older than `applied`.
        SameTimeDeploymentError: It has another id and the same CreatedAt.
    """
    if applied is None:
        return
    check_fresh(deployment.deployment_id, deployment.created_at, applied.created_at)
    if deployment.deployment_id == applied.deployment_id:
        return
    try:
        same = _instant(deployment.created_at) == _instant(applied.created_at)
    except ValueError:
        return  # as check_fresh: a record that can't be compared refuses nothing
    if same:
        raise SameTimeDeploymentError(
            deployment.deployment_id, deployment.created_at, applied.deployment_id
        )


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def utc_now() -> str:
    """Current time as ISO-8601 UTC with millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_document(
    deployment_id: str,
    deployment_type: str,
    state: DeploymentState,
    error: str | None = None,
    *,
    code: str = "InternalError",
) -> dict[str, Any]:
    """Build the status document published on the status topic.

    A failure carries its message twice, as AWS's GetDeploymentStatus does: `ErrorMessage`,
    and one `ErrorDetails` entry whose `DetailedErrorCode` names the kind of failure (the
    exception's class, such as `SecretNotFoundError`).
    """
    doc: dict[str, Any] = {
        "DeploymentId": deployment_id,
        "DeploymentType": deployment_type,
        "DeploymentStatus": state.value,
        "UpdatedAt": utc_now(),
    }
    if error is not None:
        # Defence in depth: an error from a library could quote a value back at us.
        message = REDACTOR.mask(error)
        doc["ErrorMessage"] = message
        doc["ErrorDetails"] = [{"DetailedErrorCode": code, "DetailedErrorMessage": message}]
    return doc


def build_contents(
    deployment: Deployment,
    secrets: StoreContents | None = None,
    code_dirs: Mapping[str, Path] | None = None,
) -> StoreContents:
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
    return StoreContents(
        deployment=record,
        group=deployment.raw_group,
        secrets=secrets.secrets,
        code_dirs={arn: str(path) for arn, path in (code_dirs or {}).items()},
    )


class DeploymentAgent:
    """Serialises deployments: one at a time, in arrival order, each recorded durably."""

    def __init__(
        self,
        *,
        secrets: LiveSecrets,
        source: SecretSource,
        inbox: Inbox,
        history: History,
        publish_status: Publisher,
        republish_status: Publisher | None = None,
        hooks: DeploymentHooks[Any] | None = None,
        logger: FilteringBoundLogger | None = None,
        trust: DeploymentTrust | None = None,
        log_file: Path | None = None,
    ) -> None:
        #: The live secrets it rotates; the refresher commits to them only between deployments.
        self.secrets = secrets
        #: Where a group's FileSystem GreengrassSystem logger has the log copied (None: nowhere).
        self._log_file = log_file
        self._source = source
        self._inbox = inbox
        self._history = history
        self._publish = publish_status
        # Statuses sent again for an outcome already reported (the latest one at start, a
        # redelivered deployment's): the same topic, but not a new report (metrics).
        self._republish = republish_status or publish_status
        self._hooks = hooks
        self._log = logger or get_logger("deploy")
        # Whose signatures to accept (edge.deploy.trust). None: payloads are plain documents, for
        # embedding and tests; `Core` always passes the [deployments] settings.
        self._trust = trust
        if trust is not None and trust.allow_unsigned:
            self._log.warning("deploy.unsigned_allowed", warning=_UNSIGNED_WARNING)
        elif trust is not None and not trust.keys:
            self._log.warning(
                "deploy.no_trusted_keys",
                warning="every deployment will be rejected; set "
                "[deployments] trusted_keys to the control plane's public key",
            )
        self._queue: asyncio.Queue[InboxEntry] = asyncio.Queue(INTAKE_QUEUE_LIMIT)
        #: The last document refused (for `edge status`): `{"Reason": "size"|"signature"|
        #: "invalid"|"replay", "Error", "At"}`; many get no status document at all.
        self.last_refused: dict[str, Any] | None = None
        #: The largest payload worth keeping: a signed envelope, or a bare document when
        #: signatures aren't checked (embedding and tests).
        self.max_payload = MAX_DOCUMENT_BYTES if trust is None else MAX_ENVELOPE_BYTES
        # Left over from before a restart: file names only; each is read when its turn comes.
        self._backlog = inbox.pending_paths()
        #: Set whenever the queue is empty and nothing is being applied (for tests and demo).
        self.idle = asyncio.Event()
        if not self._backlog:
            self.idle.set()

    @property
    def last_outcome(self) -> dict[str, Any] | None:
        """The status document of the last deployment that ended (Success or Failure)."""
        return self._history.latest()

    def apply_stored_logging(self) -> None:
        """Take the loggers of the group in the live store (at start, after it is loaded)."""
        self._apply_logging(self.secrets.contents.group, announce=False)

    async def receive(self, _topic: str, payload: bytes) -> None:
        """MQTT handler: check the size, persist the document, then queue it for `run`.

        An oversized payload is dropped and logged before anything is written or queued: no
        valid deployment is that big, and an unchecked one costs disk and memory. With the
        queue full this waits for room (see INTAKE_QUEUE_LIMIT). A document the inbox can't
        hold (a full or read-only disk) is still applied, from memory: the deployment then
        fails or succeeds on its own merits and reports so, instead of the error escaping into
        the MQTT link and stopping the core.
        """
        if len(payload) > self.max_payload:
            self._log.warning("deploy.payload_too_large", size=len(payload), limit=self.max_payload)
            self._note_refused(
                "size", f"{len(payload)} bytes, over the {self.max_payload}-byte limit"
            )
            return
        try:
            entry = await asyncio.to_thread(self._inbox.put, payload)
        except OSError as exc:
            self._log.warning(
                "deploy.inbox_unwritable",
                path=str(self._inbox.directory),
                error=exc.strerror or type(exc).__name__,
            )
            entry = InboxEntry(None, payload)
        self.idle.clear()
        await self._queue.put(entry)

    async def run(self) -> None:
        """Report the last recorded outcome again, then apply queued deployments, one by one."""
        latest = self._history.latest()
        if latest is not None:
            # A crash between recording an outcome and the broker acknowledging its status
            # would otherwise leave that deployment looking InProgress forever: statuses are
            # retained, so sending the latest one again at start costs nothing.
            self._republish(json.dumps(latest).encode())
        while self._backlog:
            # Older than anything received since the start: applied first, one in memory at a
            # time (a core that was flooded before a restart must not read them all at once).
            path = self._backlog.popleft()
            entry = await asyncio.to_thread(self._load_backlog, path)
            if entry is not None:
                await self._process(entry)
        while True:
            if self._queue.empty():
                self.idle.set()
            await self._process(await self._queue.get())

    def _load_backlog(self, path: Path) -> InboxEntry | None:
        try:
            return self._inbox.load(path, max_size=self.max_payload)
        except OSError as exc:
            self._log.warning(
                "deploy.inbox_unreadable", path=str(path), error=exc.strerror or str(exc)
            )
            with contextlib.suppress(OSError):
                path.unlink()  # too big or unreadable: it could never be applied
            return None

    async def _process(self, entry: InboxEntry) -> None:
        try:
            await self._handle(entry.payload)
        except Exception:  # noqa: BLE001 - the core must survive any one bad deployment
            self._log.exception("deploy.crashed")
        finally:
            try:
                self._inbox.done(entry)
            except OSError as exc:
                # Its outcome is already reported; after a restart it is answered from
                # the history, or applied again if the history couldn't be written.
                self._log.warning(
                    "deploy.inbox_unremovable",
                    path=str(entry.path),
                    error=exc.strerror or type(exc).__name__,
                )

    async def _handle(self, payload: bytes) -> None:
        if self._trust is not None:
            try:
                opened = await self._trust.open(payload)
            except SignatureError as exc:
                # No status: nothing in an unverified document is believed, not its DeploymentId
                # either; a Failure recorded under an id someone chose would pre-empt (through
                # the history) the genuine deployment with that id.
                self._log.warning("deploy.signature_rejected", error=str(exc), size=len(payload))
                self._note_refused("signature", str(exc))
                return
            if opened.key_id is None:
                self._log.warning("deploy.unsigned_accepted", warning=_UNSIGNED_WARNING)
            payload = opened.document
        try:
            deployment = parse_deployment(payload)
        except DeploymentInvalidError as exc:
            self._reject(payload, exc)
            return
        previous = self._history.get(deployment.deployment_id)
        applied = self.secrets.contents.deployment
        try:
            check_not_replayed(deployment, applied)
        except StaleDeploymentError as exc:
            # Its id is genuine (signed): one never seen gets a Failure saying why; a replay of
            # one already handled only gets this line, so it can't rewrite the retained status.
            self._log.warning(
                "deploy.replay_rejected", deployment_id=deployment.deployment_id, error=str(exc)
            )
            self._note_refused("replay", str(exc), deployment.deployment_id)
            if previous is None:
                state = next_state(DeploymentState.RECEIVED, DeploymentEvent.FAIL)
                dep_type = deployment.deployment_type.value
                self._finish(
                    status_document(
                        deployment.deployment_id, dep_type, state, str(exc), code=type(exc).__name__
                    )
                )
            return
        if previous is not None:
            # A redelivery (QoS 1 is at-least-once): answer with the outcome we already had.
            self._log.info(
                "deploy.duplicate",
                deployment_id=deployment.deployment_id,
                status=previous.get("DeploymentStatus"),
            )
            self._republish(json.dumps(previous).encode())
            return
        if applied is not None and applied.deployment_id == deployment.deployment_id:
            # The store already holds it: the core died after the rotation and before the
            # outcome was recorded (the inbox hands it back on start). The store is only saved
            # on the way to Success and the workers were restored from it, so report that
            # instead of fetching and rotating the same deployment a second time.
            self._log.info("deploy.already_applied", deployment_id=deployment.deployment_id)
            state = next_state(DeploymentState.RECEIVED, DeploymentEvent.START)
            state = next_state(state, DeploymentEvent.SUCCEED)
            dep_type = deployment.deployment_type.value
            self._finish(status_document(deployment.deployment_id, dep_type, state))
            return
        with structlog.contextvars.bound_contextvars(deployment_id=deployment.deployment_id):
            # Held for the whole application: a refresh can't commit under it.
            async with self.secrets.rotation() as rotation:
                await self._apply(deployment, rotation)

    def _note_refused(self, reason: str, error: str, deployment_id: str | None = None) -> None:
        self.last_refused = {
            "Reason": reason,
            "Error": error,
            "DeploymentId": deployment_id,
            "At": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def _reject(self, payload: bytes, exc: DeploymentInvalidError) -> None:
        self._note_refused("invalid", str(exc), exc.deployment_id)
        if exc.deployment_id is None:
            self._log.warning("deploy.rejected", error=str(exc), size=len(payload))
            return
        dep_type = _peek_type(payload)
        state = next_state(DeploymentState.RECEIVED, DeploymentEvent.FAIL)
        self._log.warning("deploy.rejected", deployment_id=exc.deployment_id, error=str(exc))
        self._finish(
            status_document(exc.deployment_id, dep_type, state, str(exc), code=type(exc).__name__)
        )

    async def _apply(self, deployment: Deployment, rotation: Rotation) -> None:
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
            plan = plan_logging(deployment.raw_group)
            fetched, prepared = await _concurrently(
                self._fetch(deployment, rotation), self._prepare(deployment)
            )
            contents = build_contents(deployment, fetched, prepared.code_dirs if prepared else None)
            await rotation.commit(contents, readers=prepared.workers if prepared else None)
        except Exception as exc:  # noqa: BLE001 - every failure must end in a Failure status
            code = type(exc).__name__ if isinstance(exc, EdgeError) else "InternalError"
            if isinstance(exc, EdgeError):
                message = str(exc)
                self._log.warning("deploy.failed", error_type=type(exc).__name__, error=message)
            else:
                message = f"internal error ({type(exc).__name__}); see the core's log"
                self._log.exception("deploy.failed", error_type=type(exc).__name__)
            state = next_state(state, DeploymentEvent.FAIL)
            self._finish(
                status_document(deployment.deployment_id, dep_type, state, message, code=code)
            )
            return
        if self._hooks is not None and prepared is not None:
            # The store is the source of truth from here on: a failure to start a worker is
            # the worker's problem (it is retried), not the deployment's.
            try:
                await self._hooks.activate(contents, prepared)
            except Exception:  # noqa: BLE001 - logged; the deployment itself is applied
                self._log.exception("deploy.activate_failed")
        self._apply_logging(deployment.raw_group, plan=plan)
        state = next_state(state, DeploymentEvent.SUCCEED)
        self._log.info("deploy.complete", secrets=len(contents.secrets))
        self._finish(status_document(deployment.deployment_id, dep_type, state))

    def _apply_logging(
        self, group: Mapping[str, Any], *, plan: LoggingPlan | None = None, announce: bool = True
    ) -> None:
        """Take the group's GreengrassSystem FileSystem logger's level; warn of what is ignored."""
        if plan is None:
            try:
                plan = plan_logging(group)
            except DeploymentInvalidError as exc:
                # A stored group was checked when it was deployed; keep [log] level.
                self._log.warning("deploy.loggers_unreadable", error=str(exc))
                return
        if self._log_file is not None:
            try:
                set_group_file(
                    self._log_file if plan.space_kb else None,
                    None if plan.space_kb is None else plan.space_kb * 1024,
                )
            except OSError as exc:
                self._log.warning(
                    "deploy.log_file_failed", path=str(self._log_file), error=str(exc)
                )
        # Both said before the change, so they show whatever level the group asks for.
        if announce and plan.note is not None:
            self._log.warning("deploy.ignored", note=plan.note)
        if plan.level is not None:
            self._log.info("deploy.log_level", log_level=plan.level)
        set_group_level(plan.level)

    async def _fetch(self, deployment: Deployment, rotation: Rotation) -> StoreContents:
        resources = deployment.group.secret_resources
        if deployment.deployment_type is DeploymentType.RESET or not resources:
            return StoreContents()
        # Versions the store holds are immutable in Secrets Manager: the source reuses them.
        held = held_versions(rotation.base.contents)
        fetched = StoreContents(secrets=await self._source.fetch(resources, held=held))
        # Mask new values before anything else can mention them.
        rotation.mask(fetched.values())
        return fetched

    async def _prepare(self, deployment: Deployment) -> Prepared | None:
        return None if self._hooks is None else await self._hooks.prepare(deployment)

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


_A = TypeVar("_A")
_B = TypeVar("_B")


async def _concurrently(first: Awaitable[_A], second: Awaitable[_B]) -> tuple[_A, _B]:
    """Run two steps concurrently; the first failure cancels the other and is raised as is."""
    a = asyncio.ensure_future(first)
    b = asyncio.ensure_future(second)
    try:
        await asyncio.gather(a, b)
    except BaseException:
        for task in (a, b):
            task.cancel()
        await asyncio.gather(a, b, return_exceptions=True)
        raise
    return a.result(), b.result()
