# SPDX-License-Identifier: Apache-2.0
"""The control plane's MQTT: publish a signed deployment (QoS 1) and read status documents.

Each command opens its own short connection with a random client id and a clean session:
several `edge cloud` processes may run at once, and a shared id would make the broker drop
one of them. Nothing here needs a session to survive the command, because cores publish their
status documents *retained*: whoever subscribes later still gets the latest one.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

import aiomqtt

from edge.cloud.errors import BrokerError
from edge.config import MqttSettings
from edge.mqtt.link import tls_context

#: Seconds to connect, subscribe or have a publish acknowledged before giving up.
OPERATION_TIMEOUT_SECONDS: Final = 10.0


@dataclass(frozen=True, slots=True)
class Received:
    """A message from the broker: topic, payload, and whether it was a retained one."""

    topic: str
    payload: bytes
    retained: bool


class CloudMqtt:
    """One short-lived broker connection of one `edge cloud` command."""

    def __init__(self, settings: MqttSettings, *, client_id_prefix: str = "edge-cloud") -> None:
        self._settings = settings
        prefix = settings.client_id or client_id_prefix
        self._client = aiomqtt.Client(
            settings.host,
            settings.port,
            identifier=f"{prefix}-{uuid.uuid4().hex[:12]}",
            clean_session=True,
            keepalive=settings.keepalive_seconds,
            tls_context=tls_context(settings),
            timeout=OPERATION_TIMEOUT_SECONDS,
        )

    async def __aenter__(self) -> Self:
        """Connect to the broker.

        Raises:
            BrokerError: The broker can't be reached or refused the connection.
        """
        try:
            async with asyncio.timeout(OPERATION_TIMEOUT_SECONDS):
                await self._client.__aenter__()
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            raise BrokerError(self._settings.url, _describe(exc)) from None
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect; a broker that already went away is not an error here."""
        with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
            await self._client.__aexit__(exc_type, exc, tb)

    async def subscribe(self, topic: str) -> None:
        """Subscribe with QoS 1; retained messages on the topic arrive right after.

        Raises:
            BrokerError: The broker refused or didn't answer.
        """
        try:
            await self._client.subscribe(topic, qos=1, timeout=OPERATION_TIMEOUT_SECONDS)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            raise BrokerError(
                self._settings.url, f"subscribe to {topic}: {_describe(exc)}"
            ) from None

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1 and wait for the broker's acknowledgement.

        Raises:
            BrokerError: The broker did not acknowledge the message.
        """
        try:
            await self._client.publish(topic, payload, qos=1, timeout=OPERATION_TIMEOUT_SECONDS)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            raise BrokerError(self._settings.url, f"publish to {topic}: {_describe(exc)}") from None

    async def next_message(self, *, deadline: float) -> Received | None:
        """Wait for the next message until `deadline` (event loop time); None when it passed.

        A method rather than an async generator on purpose: a generator suspended inside a
        timeout would deliver the timeout's cancellation to whatever its consumer is awaiting.

        Raises:
            BrokerError: The connection broke.
        """
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return None
        try:
            async with asyncio.timeout(remaining):
                message = await anext(self._client.messages)
        except TimeoutError:
            return None
        except aiomqtt.MqttError as exc:
            raise BrokerError(self._settings.url, _describe(exc)) from None
        payload = message.payload
        data = payload if isinstance(payload, bytes | bytearray) else b""
        return Received(message.topic.value, bytes(data), bool(message.retain))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {OPERATION_TIMEOUT_SECONDS:g} s"
    return str(exc) or type(exc).__name__
