# SPDX-License-Identifier: Apache-2.0
"""Rotation-aware refresh: pick up a rotated secret without a redeploy.

Theory of operation. Every `[refresh] interval_seconds` (jittered ±10% so that a fleet started
together doesn't check together), the `Refresher` asks DescribeSecret where the labels of each
deployed secret point now, paced to `max_calls_per_second` (DescribeSecret is limited to 50
requests per second per account and region, shared by every device of the account) and within
the fetch's concurrency and deadline. A secret whose deployed label (AWSCURRENT or any
additional one) moved to another version is fetched incrementally (only the versions the core
lacks), and the store is rotated with the same deployment record and group, only the secrets
changed. The services' secret index is swapped; workers are not restarted. What changed (ids,
labels, VersionIds; never a value) is published on `{prefix}/things/{thing}/secrets/refreshed`.

A function may also ask for one secret to be refreshed first (`Refresh: true` on
get_secret_value): `Refresher.hint`, at most once per `hint_min_interval_seconds` per secret.

Deployments come first (see `edge.secrets.live`). A refresh reads the live contents and their
generation, fetches without holding anything, and hands `LiveSecrets.commit` the new contents
based on that generation. The commit is refused when a deployment holds the rotation lock or
committed since (`StaleBaseError`): the refresh then drops its result (`refresh.superseded`),
so it can never bring back a store older than the latest deployment. A refresh does not start
while a deployment is queued, which will fetch anyway. Refreshes run one at a time among
themselves (an interval check and a hint for another secret wait for each other), so one never
makes another's result stale. A refresh that got as far as writing
the store finishes first, and a deployment then builds on it. A failed refresh logs a warning
and keeps the old store; the next interval tries again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from structlog.typing import FilteringBoundLogger

from edge.config import RefreshSettings
from edge.errors import EdgeError
from edge.log import get_logger
from edge.model import SecretResource
from edge.secrets.contents import LocalSecret, StoreContents
from edge.secrets.live import LiveSecrets, StaleBaseError
from edge.secrets.source import AWSCURRENT, Described, SecretSource, held_versions

#: Fraction of the interval by which each wait is shortened or lengthened at random.
JITTER: Final = 0.1
#: Triggers named in the refreshed message and the logs.
TRIGGER_INTERVAL: Final = "interval"
TRIGGER_HINT: Final = "hint"


def refreshed_topic(prefix: str, thing_name: str) -> str:
    """Topic on which the core reports the secrets a refresh changed."""
    return f"{prefix}/things/{thing_name}/secrets/refreshed"


@dataclass(slots=True)
class RefreshCounts:
    """What refreshes did, for metrics: checks made, store rotations, failures, hints."""

    checks: int = 0
    rotations: int = 0
    failures: int = 0
    hints: int = 0
    #: Hints answered from the store because the secret was refreshed too recently.
    hints_limited: int = 0


@dataclass(frozen=True, slots=True)
class LabelChange:
    """One deployed label that a refresh moved to another version."""

    resource_id: str
    arn: str
    label: str
    old_version_id: str | None
    new_version_id: str

    def to_plain(self) -> dict[str, Any]:
        """The change with AWS-style key names, as published."""
        return {
            "ResourceId": self.resource_id,
            "ARN": self.arn,
            "Label": self.label,
            "OldVersionId": self.old_version_id,
            "NewVersionId": self.new_version_id,
        }


def moved_labels(secret: LocalSecret, described: Described) -> list[str]:
    """Return the secret's deployed labels that DescribeSecret places on another version.

    A label no version carries any more counts as moved: fetching it then reports the
    missing label precisely.
    """
    return [
        label
        for label, version_id in secret.labels.items()
        if described.version_of(label) != version_id
    ]


def label_changes(old: LocalSecret, new: LocalSecret) -> list[LabelChange]:
    """Return the labels whose version differs between two fetches of one secret (pure)."""
    return [
        LabelChange(
            resource_id=new.resource_id,
            arn=new.arn,
            label=label,
            old_version_id=old.labels.get(label),
            new_version_id=version_id,
        )
        for label, version_id in new.labels.items()
        if old.labels.get(label) != version_id
    ]


def resource_of(secret: LocalSecret) -> SecretResource:
    """The secret resource a stored secret was deployed from (its id, ARN and labels)."""
    extra = tuple(label for label in secret.labels if label != AWSCURRENT)
    return SecretResource(
        resource_id=secret.resource_id,
        name=secret.resource_id,
        arn=secret.arn,
        additional_labels=extra,
    )


def refreshed_message(
    contents: StoreContents, changes: Sequence[LabelChange], *, trigger: str
) -> bytes:
    """The JSON document published after a refresh rotated the store: ids and versions only."""
    doc = {
        "DeploymentId": contents.deployment.deployment_id if contents.deployment else None,
        "Trigger": trigger,
        "RefreshedAt": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "Changes": [change.to_plain() for change in changes],
    }
    return json.dumps(doc).encode()


class RateLimit:
    """Spaces calls at least `1 / per_second` seconds apart (an async pacer, no bursts)."""

    def __init__(self, per_second: float) -> None:
        """Allow `per_second` calls a second.

        Raises:
            ValueError: The rate is not positive.
        """
        if not per_second > 0:
            raise ValueError(f"the rate must be positive, not {per_second}")
        self._gap = 1.0 / per_second
        self._next = 0.0

    async def wait(self) -> None:
        """Wait for this call's slot."""
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self._gap
        if slot > now:
            await asyncio.sleep(slot - now)


class Refresher:
    """Checks the deployed secrets' stages and rotates the store when a label moved."""

    def __init__(
        self,
        *,
        source: SecretSource,
        secrets: LiveSecrets,
        idle: asyncio.Event,
        settings: RefreshSettings,
        publish: Callable[[bytes], None],
        deadline_seconds: float = 120.0,
        counts: RefreshCounts | None = None,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        """Connect the refresher; nothing runs before `run` or `hint`.

        Args:
            source: Where stages and versions come from.
            secrets: The live secrets a refresh reads and hands its new contents to.
            idle: Set when no deployment is queued or being applied (the agent's `idle`).
            settings: `[refresh]`.
            publish: Sends the refreshed message (QoS 1, not retained).
            deadline_seconds: Limit for one refresh, DescribeSecret and fetch included.
            counts: Where to count checks, rotations and failures.
            logger: Where to log refresh events.
        """
        self._source = source
        self._secrets = secrets
        self._idle = idle
        self.settings = settings
        self._publish = publish
        self._deadline = deadline_seconds
        self.counts = counts or RefreshCounts()
        self._log = logger or get_logger("refresh")
        self._rate = RateLimit(settings.max_calls_per_second)
        #: Resource id -> monotonic time of its last hinted refresh.
        self._hinted: dict[str, float] = {}
        #: Resource id -> the hinted refresh in flight, which later hints wait for.
        self._hint_tasks: dict[str, asyncio.Task[bool]] = {}
        self._one_at_a_time = asyncio.Lock()

    async def run(self) -> None:
        """Check every `interval_seconds` (jittered) until cancelled; return at once if off."""
        interval = self.settings.interval_seconds
        if interval <= 0:
            return
        self._log.info(
            "refresh.enabled",
            interval_seconds=interval,
            max_calls_per_second=self.settings.max_calls_per_second,
        )
        while True:
            await asyncio.sleep(interval * random.uniform(1 - JITTER, 1 + JITTER))  # noqa: S311
            await self.refresh(trigger=TRIGGER_INTERVAL)

    async def hint(self, resource_id: str) -> bool:
        """Refresh one secret now, unless it was refreshed within `hint_min_interval_seconds`.

        Concurrent hints for one secret share one refresh. Never raises: a failure is logged
        and the caller answers from the store.

        Returns:
            True if the secret was checked (whether or not it changed).
        """
        running = self._hint_tasks.get(resource_id)
        if running is not None:
            return await asyncio.shield(running)
        now = time.monotonic()
        last = self._hinted.get(resource_id)
        if last is not None and now - last < self.settings.hint_min_interval_seconds:
            self.counts.hints_limited += 1
            return False
        self._hinted[resource_id] = now
        self.counts.hints += 1
        task = asyncio.ensure_future(self.refresh(trigger=TRIGGER_HINT, only={resource_id}))
        self._hint_tasks[resource_id] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._hint_tasks.pop(resource_id, None)
            else:
                task.add_done_callback(lambda _t: self._hint_tasks.pop(resource_id, None))

    async def refresh(self, *, trigger: str, only: set[str] | None = None) -> bool:
        """Check the deployed secrets (or `only` these resource ids) and rotate if needed.

        Never raises (cancellation aside): failures are logged as `refresh.failed`, counted,
        and leave the store as it was.

        Returns:
            True if the check ran to its end (the store changed or didn't need to).
        """
        try:
            with structlog.contextvars.bound_contextvars(refresh_trigger=trigger):
                async with self._one_at_a_time:
                    await self._refresh(trigger, only)
        except Exception as exc:  # noqa: BLE001 - a refresh must never take the core down
            self.counts.failures += 1
            if isinstance(exc, EdgeError | TimeoutError):
                self._log.warning("refresh.failed", error_type=type(exc).__name__, error=str(exc))
            else:
                self._log.exception("refresh.failed", error_type=type(exc).__name__)
            return False
        return True

    async def _refresh(self, trigger: str, only: set[str] | None) -> None:
        snapshot = self._secrets.current
        base = snapshot.contents
        if not self._idle.is_set():
            self._log.info("refresh.skipped", reason="deployment in progress")
            return
        secrets = {rid: s for rid, s in base.secrets.items() if only is None or rid in only}
        if not secrets:
            return
        self.counts.checks += 1
        async with asyncio.timeout(self._deadline):
            fetched = await self._fetch_moved(base, secrets)
        if not fetched:
            self._log.debug("refresh.unchanged", secrets=len(secrets))
            return
        changes = [
            change
            for rid, secret in fetched.items()
            for change in label_changes(base.secrets[rid], secret)
        ]
        if not changes:
            return
        contents = dataclasses.replace(base, secrets={**base.secrets, **fetched})
        if not self._idle.is_set():
            # A deployment is queued: it fetches anyway, and its store will be the newer one.
            self._log.info("refresh.superseded", reason="deployment queued")
            return
        try:
            await self._secrets.commit(snapshot, contents)
        except StaleBaseError as exc:
            # A deployment got in first: its store is newer than ours.
            self._log.info("refresh.superseded", reason=str(exc))
            return
        self.counts.rotations += 1
        self._log.info(
            "refresh.rotated",
            changes=[c.to_plain() for c in changes],
            secrets=len(fetched),
        )
        self._publish(refreshed_message(contents, changes, trigger=trigger))

    async def _fetch_moved(
        self, base: StoreContents, secrets: Mapping[str, LocalSecret]
    ) -> dict[str, LocalSecret]:
        """Return, freshly fetched, the secrets whose deployed labels moved."""
        held = held_versions(base)
        if not self._source.describe_available:
            # No DescribeSecret for these credentials: fetch every checked secret (held
            # versions still can't be reused without knowing where labels point).
            resources = [resource_of(s) for s in secrets.values()]
            return await self._source.fetch(resources, held=held)
        arns = [s.arn for s in secrets.values()]
        described, errors = await self._source.describe(arns, pace=self._rate.wait)
        if not self._source.describe_available:
            # Refused just now: fall back as above, from the next check on too.
            resources = [resource_of(s) for s in secrets.values()]
            return await self._source.fetch(resources, held=held)
        for arn, error in errors.items():
            self.counts.failures += 1
            self._log.warning(
                "refresh.check_failed", arn=arn, error_type=type(error).__name__, error=str(error)
            )
        moved = {
            rid: s
            for rid, s in secrets.items()
            if s.arn in described and moved_labels(s, described[s.arn])
        }
        if not moved:
            return {}
        self._log.info(
            "refresh.labels_moved",
            secrets=[{"ResourceId": rid, "ARN": s.arn} for rid, s in moved.items()],
        )
        resources = [resource_of(s) for s in moved.values()]
        return await self._source.fetch(
            resources,
            held=held,
            described={s.arn: described[s.arn] for s in moved.values()},
            pace=self._rate.wait,
        )
