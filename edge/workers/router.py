# SPDX-License-Identifier: Apache-2.0
"""Route messages by the group's `Subscriptions[]`, as V1's local router did.

A subscription `{Id, Source, Subject, Target}` sends messages from Source on topics matching
Subject (MQTT wildcards allowed) to Target. Sources and targets are `cloud` (the broker), a
function ARN, or a connector ARN. A function's `iot-data.publish` goes to every matching
local target (invoked as an `Event`) and, where the target is `cloud`, to the broker; a broker
message on a subject some `cloud` subscription names invokes its local targets.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from structlog.typing import FilteringBoundLogger

from edge.log import get_logger
from edge.workers.manager import UnknownFunctionError, WorkerManager

CLOUD = "cloud"


@dataclass(frozen=True, slots=True)
class Route:
    """One subscription."""

    route_id: str
    source: str
    subject: str
    target: str


def topic_matches(subject: str, topic: str) -> bool:
    """Whether `topic` matches the MQTT topic filter `subject` (`+` one level, `#` the rest)."""
    filter_levels = subject.split("/")
    topic_levels = topic.split("/")
    # MQTT 3.1.1 4.7.2: a filter starting with a wildcard doesn't match `$` topics, so a `#`
    # route never forwards `$aws/things/.../shadow` traffic by accident.
    if topic.startswith("$") and filter_levels[0] in {"#", "+"}:
        return False
    for i, level in enumerate(filter_levels):
        if level == "#":
            # Every level before it matched; '#' also matches the parent level itself.
            return True
        if i >= len(topic_levels):
            return False
        if level not in {"+", topic_levels[i]}:
            return False
    return len(filter_levels) == len(topic_levels)


_UNQUALIFIED_PARTS = 7  # arn:partition:lambda:region:account:function:name


def same_function(a: str, b: str) -> bool:
    """ARNs equal, or Lambda ARNs, one unqualified and equal to the other without its qualifier.

    Anything else (a connector's ARN, `cloud`) matches only itself, exactly.
    """
    if a == b:
        return True
    pa, pb = a.split(":"), b.split(":")
    if not (_is_lambda(pa) and _is_lambda(pb)):
        return False
    unqualified = len(pa) == _UNQUALIFIED_PARTS or len(pb) == _UNQUALIFIED_PARTS
    return unqualified and pa[:_UNQUALIFIED_PARTS] == pb[:_UNQUALIFIED_PARTS]


def _is_lambda(parts: list[str]) -> bool:
    return len(parts) >= _UNQUALIFIED_PARTS and parts[2] == "lambda" and parts[5] == "function"


def parse_routes(subscriptions: Iterable[Mapping[str, Any]]) -> tuple[Route, ...]:
    """Routes from the group's Subscriptions (already validated by the model)."""
    return tuple(
        Route(str(s.get("Id", "")), str(s["Source"]), str(s["Subject"]), str(s["Target"]))
        for s in subscriptions
    )


class Router:
    """Delivers published messages to their subscribed targets."""

    def __init__(
        self,
        *,
        manager: WorkerManager,
        publish_cloud: Callable[[str, bytes], None],
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._manager = manager
        self._publish_cloud = publish_cloud
        self._log = logger or get_logger("router")
        self.routes: tuple[Route, ...] = ()

    def update(self, routes: tuple[Route, ...]) -> None:
        """Swap in a deployment's subscriptions."""
        self.routes = routes

    def cloud_subjects(self) -> list[str]:
        """Topic filters the core must subscribe to on the broker."""
        return sorted({r.subject for r in self.routes if r.source == CLOUD})

    async def from_function(self, source: str, topic: str, payload: bytes) -> int:
        """Deliver a function's publish; return how many targets got it."""
        targets = [
            r.target
            for r in self.routes
            if same_function(r.source, source) and topic_matches(r.subject, topic)
        ]
        await self._deliver(targets, source, topic, payload)
        return len(targets)

    async def from_cloud(self, topic: str, payload: bytes) -> int:
        """Deliver a broker message to local targets; return how many got it."""
        targets = [
            r.target for r in self.routes if r.source == CLOUD and topic_matches(r.subject, topic)
        ]
        await self._deliver([t for t in targets if t != CLOUD], CLOUD, topic, payload)
        return len(targets)

    async def _deliver(self, targets: list[str], source: str, topic: str, payload: bytes) -> None:
        context = base64.b64encode(
            json.dumps({"custom": {"subject": topic, "source": source}}).encode()
        ).decode()
        invokes = []
        for target in dict.fromkeys(targets):  # one delivery per target, in order
            if target == CLOUD:
                self._publish_cloud(topic, payload)
            else:
                invokes.append(self._invoke(target, payload, context, topic))
        await asyncio.gather(*invokes)
        if not targets:
            self._log.debug("router.no_route", source=source, topic=topic)

    async def _invoke(self, target: str, payload: bytes, context: str, topic: str) -> None:
        try:
            await self._manager.invoke(
                target, payload, client_context=context, invocation_type="Event"
            )
        except UnknownFunctionError:
            # Functions and connectors are both workers the manager knows by ARN; a target
            # that isn't deployed is a no-op.
            self._log.warning("router.unknown_target", target=target, topic=topic)
