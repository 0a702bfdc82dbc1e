"""A deployment is acknowledged to the broker only once the core has it: a crash loses nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttSettings
from edge.fixtures.services import Mosquitto
from edge.mqtt.link import MqttLink
from tests.support.tls import LoggingMosquitto, run_logging_mosquitto

TOPIC = "edge/things/ack-test/deployments"


@pytest.fixture
def logging_broker(tmp_path: Path) -> Iterator[LoggingMosquitto]:
    """A Mosquitto that persists its sessions and logs every packet (PUBACKs included)."""
    with run_logging_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


def settings(broker: Mosquitto) -> MqttSettings:
    return MqttSettings(
        url=broker.url,
        host="127.0.0.1",
        port=broker.port,
        tls=False,
        keepalive_seconds=5,
        reconnect_max_seconds=0.5,
    )


def publish(broker: Mosquitto, payload: bytes) -> None:
    """Publish at QoS 1 from a separate client and wait for the broker's acknowledgement."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.publish(TOPIC, payload, qos=1).wait_for_publish(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()


async def pubacks_received(broker: LoggingMosquitto, client_id: str, count: int) -> None:
    """Wait (15 s at most) until the broker logged `count` PUBACKs from the client."""
    async with asyncio.timeout(15):
        while broker.log_text().count(f"Received PUBACK from {client_id} ") < count:
            await asyncio.sleep(0.05)


class Received:
    """A link's message handler that records payloads and wakes whoever waits for one."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.arrived = asyncio.Event()

    async def __call__(self, _topic: str, payload: bytes) -> None:
        self.payloads.append(payload)
        self.arrived.set()

    async def until(self, payload: bytes) -> None:
        """Wait (15 s at most) until `payload` arrived."""
        async with asyncio.timeout(15):
            while payload not in self.payloads:
                self.arrived.clear()
                await self.arrived.wait()


async def test_a_message_whose_handler_never_finished_is_delivered_again(
    logging_broker: LoggingMosquitto,
) -> None:
    """The core dies while handling a deployment: the broker still has it for the next start."""
    broker = logging_broker
    client_id = f"core-{uuid.uuid4().hex[:8]}"
    handling = asyncio.Event()
    stuck = asyncio.Event()

    async def crash_while_handling(_topic: str, _payload: bytes) -> None:
        handling.set()
        await stuck.wait()  # never made durable: the "crash" comes first

    link = MqttLink(
        settings=settings(broker),
        client_id=client_id,
        subscriptions=[TOPIC],
        on_message=crash_while_handling,
    )
    task = asyncio.create_task(link.run())
    await asyncio.wait_for(link.connected.wait(), 15)
    await asyncio.to_thread(publish, broker, b"deployment-1")
    await asyncio.wait_for(handling.wait(), 15)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    again = Received()
    restarted = MqttLink(
        settings=settings(broker), client_id=client_id, subscriptions=[TOPIC], on_message=again
    )
    task = asyncio.create_task(restarted.run())
    try:
        await again.until(b"deployment-1")
        assert again.payloads == [b"deployment-1"]
        # Handled this time, so acknowledged: wait until the broker has the PUBACK.
        await pubacks_received(broker, client_id, 1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    # A third start gets nothing more: a message published after it connected arrives, and
    # nothing before it (the broker sends a session's queued messages first).
    third = Received()
    last = MqttLink(
        settings=settings(broker), client_id=client_id, subscriptions=[TOPIC], on_message=third
    )
    task = asyncio.create_task(last.run())
    try:
        await asyncio.wait_for(last.connected.wait(), 15)
        await asyncio.to_thread(publish, broker, b"sentinel")
        await third.until(b"sentinel")
        assert third.payloads == [b"sentinel"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
