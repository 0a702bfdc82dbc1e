# SPDX-License-Identifier: Apache-2.0
"""The core's one MQTT connection: reconnects forever, resubscribes, and never drops a status.

The broker may be down when the core starts and may go away at any time; the core must keep
serving from its store meanwhile. `MqttLink.run` re-enters one reusable aiomqtt client (the
aiomqtt 2.x reconnection idiom) with jittered, capped exponential backoff. Outgoing messages go
through an outbox that survives disconnections, so a status produced while offline is published
once the broker is back. The session is persistent (clean_session=False, a stable client id), so
the broker queues QoS 1 deployments published while the core was offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiomqtt
from structlog.typing import FilteringBoundLogger

from edge.config import MqttSettings
from edge.log import get_logger

MessageHandler = Callable[[str, bytes], Awaitable[None]]

#: First retry delay after a lost connection; doubles up to `reconnect_max_seconds`.
_INITIAL_BACKOFF_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message waiting in the outbox."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


def backoff_delays(initial: float, maximum: float) -> Callable[[int], float]:
    """Return attempt -> delay: exponential, capped, with full jitter in [delay/2, delay]."""

    def delay(attempt: int) -> float:
        base: float = min(maximum, initial * 2.0 ** min(attempt, 30))
        return base / 2 + random.random() * base / 2  # noqa: S311 - jitter, not cryptography

    return delay


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """Build the TLS context for an mqtts:// url (server verification, optional client cert)."""
    if not settings.tls:
        return None
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if settings.cert_file and settings.key_file:
        context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    return context


class MqttLink:
    """Owns the connection, the subscriptions and the outbox."""

    def __init__(
        self,
        *,
        settings: MqttSettings,
        client_id: str,
        subscriptions: Sequence[str],
        on_message: MessageHandler,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._settings = settings
        self._subscriptions = tuple(subscriptions)
        self._extra: tuple[str, ...] = ()
        self._on_message = on_message
        self._log = logger or get_logger("mqtt")
        self._outbox: deque[OutgoingMessage] = deque()
        self._outbox_ready = asyncio.Event()
        self._drained = asyncio.Event()
        self.connected = asyncio.Event()
        self._client = aiomqtt.Client(
            settings.host,
            settings.port,
            identifier=client_id,
            clean_session=False,
            keepalive=settings.keepalive_seconds,
            tls_context=tls_context(settings),
            timeout=10,
        )

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Queue a message; it is sent now if connected, else as soon as the broker is back."""
        self._outbox.append(OutgoingMessage(topic, payload, qos, retain))
        self._drained.clear()
        self._outbox_ready.set()

    async def flush(self, *, within: float) -> bool:
        """Wait until the outbox is empty (if connected), at most `within` seconds."""
        if self._outbox and self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._drained.wait()
        return not self._outbox

    async def set_extra_subscriptions(self, topics: Sequence[str]) -> None:
        """Subscribe to these filters besides the fixed ones (now, and after every reconnect)."""
        wanted = tuple(dict.fromkeys(topics))
        old, self._extra = set(self._extra), wanted
        if not self.connected.is_set():
            return  # the next session subscribes to them
        try:
            for topic in wanted:
                if topic not in old:
                    await self._client.subscribe(topic, qos=1)
            for topic in old - set(wanted):
                await self._client.unsubscribe(topic)
        except aiomqtt.MqttError as exc:
            # The reconnect loop resubscribes everything in `_extra` when it is back.
            self._log.warning("mqtt.subscribe_failed", error=str(exc))

    @property
    def pending(self) -> int:
        """Messages waiting in the outbox."""
        return len(self._outbox)

    async def run(self) -> None:
        """Connect, subscribe, receive and publish until cancelled; reconnect on any failure."""
        delay = backoff_delays(_INITIAL_BACKOFF_SECONDS, self._settings.reconnect_max_seconds)
        attempt = 0
        while True:
            error: str | None = None
            try:
                async with self._client:
                    attempt = 0
                    await self._session()
            # The session's tasks run in a TaskGroup, so a lost connection arrives wrapped.
            except* aiomqtt.MqttError as group:
                error = "; ".join(str(e) for e in group.exceptions)
            finally:
                self.connected.clear()
            wait = delay(attempt)
            attempt += 1
            self._log.warning(
                "mqtt.disconnected", url=self._settings.url, error=error, retry_in=round(wait, 2)
            )
            await asyncio.sleep(wait)

    async def _session(self) -> None:
        for topic in (*self._subscriptions, *self._extra):
            await self._client.subscribe(topic, qos=1)
        self.connected.set()
        self._log.info(
            "mqtt.connected", url=self._settings.url, subscriptions=list(self._subscriptions)
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._drain_outbox(), name="mqtt-outbox")
            tg.create_task(self._receive(), name="mqtt-receive")

    async def _receive(self) -> None:
        async for message in self._client.messages:
            payload = message.payload
            data = (
                payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
            )
            await self._on_message(message.topic.value, bytes(data))

    async def _drain_outbox(self) -> None:
        while True:
            await self._outbox_ready.wait()
            while self._outbox:
                item = self._outbox[0]
                # Only dropped from the outbox once the broker has acknowledged it (QoS 1);
                # a disconnect mid-publish leaves it at the head for the next session.
                await self._client.publish(
                    item.topic, item.payload, qos=item.qos, retain=item.retain
                )
                self._outbox.popleft()
            self._outbox_ready.clear()
            self._drained.set()
