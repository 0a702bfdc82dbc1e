"""A deployment is acknowledged to the broker only once the core has it: a crash loses nothing."""

from __future__ import annotations

import asyncio
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttSettings
from edge.fixtures.services import Mosquitto
from edge.mqtt.link import MqttLink

TOPIC = "edge/things/ack-test/deployments"


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


async def test_a_message_whose_handler_never_finished_is_delivered_again(broker: Mosquitto) -> None:
    """The core dies while handling a deployment: the broker still has it for the next start."""
    client_id = f"core-{uuid.uuid4().hex[:8]}"
    first: list[bytes] = []
    stuck = asyncio.Event()

    async def crash_while_handling(_topic: str, payload: bytes) -> None:
        first.append(payload)
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
    async with asyncio.timeout(15):
        while not first:
            await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    again: list[bytes] = []

    async def handle(_topic: str, payload: bytes) -> None:
        again.append(payload)

    restarted = MqttLink(
        settings=settings(broker), client_id=client_id, subscriptions=[TOPIC], on_message=handle
    )
    task = asyncio.create_task(restarted.run())
    try:
        async with asyncio.timeout(15):
            while not again:
                await asyncio.sleep(0.05)
        assert again == [b"deployment-1"]
        # Handled this time, so acknowledged: a third start gets nothing more.
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    third: list[bytes] = []

    async def count(_topic: str, payload: bytes) -> None:
        third.append(payload)

    last = MqttLink(
        settings=settings(broker), client_id=client_id, subscriptions=[TOPIC], on_message=count
    )
    task = asyncio.create_task(last.run())
    try:
        await asyncio.wait_for(last.connected.wait(), 15)
        await asyncio.sleep(1.5)
        assert third == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
