"""The control plane's long-lived publisher against a real Mosquitto, restarted mid-stream."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.cloud.config import Pacing
from edge.cloud.errors import BrokerError
from edge.cloud.publisher import Publisher
from edge.config import MqttSettings
from edge.fixtures.services import Mosquitto
from tests.support.tls import LoggingMosquitto, run_logging_mosquitto

pytestmark = pytest.mark.network

MESSAGES = 300


class Subscriber:
    """A persistent-session QoS 1 subscriber that collects payloads, reconnecting on its own."""

    def __init__(self, port: int, topic: str) -> None:
        self.payloads: set[bytes] = set()
        self.lock = threading.Lock()
        self.all_in = threading.Event()
        self.arrived = threading.Event()
        subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"collector-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.payloads.add(bytes(msg.payload))
            self.arrived.set()
            if len(self.payloads) >= MESSAGES:
                self.all_in.set()

    def wait_for(self, payload: bytes, timeout: float) -> bool:
        """Wait until `payload` arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if payload in self.payloads:
                    return True
            self.arrived.wait(0.05)
        return False

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LoggingMosquitto]:
    """A Mosquitto that keeps its sessions across a restart, also when tests run as root."""
    with run_logging_mosquitto(tmp_path / "mosquitto") as persistent:
        yield persistent


@pytest.fixture
def subscriber(broker: Mosquitto) -> Iterator[Subscriber]:
    collector = Subscriber(broker.port, "load/#")
    yield collector
    collector.close()


def _settings(broker: Mosquitto) -> MqttSettings:
    return MqttSettings(
        url=broker.url, host="127.0.0.1", port=broker.port, tls=False, reconnect_max_seconds=0.5
    )


async def test_a_broker_restart_mid_stream_loses_nothing(
    broker: Mosquitto, subscriber: Subscriber
) -> None:
    pacing = Pacing(rate=400.0, burst=10, queue_limit=MESSAGES)
    async with Publisher(_settings(broker), pacing) as publisher:
        acks = [publisher.submit(f"load/{i % 7}", f"message-{i}".encode()) for i in range(MESSAGES)]
        async with asyncio.timeout(30):
            while sum(a.done() for a in acks) < MESSAGES // 3:
                await asyncio.sleep(0.01)
        # Some are acknowledged, some in flight, the rest queued: the broker goes away.
        await asyncio.to_thread(broker.stop)
        assert not all(a.done() for a in acks)
        await asyncio.to_thread(broker.start)
        async with asyncio.timeout(60):
            await asyncio.gather(*acks)
    assert await asyncio.to_thread(subscriber.all_in.wait, 30)
    assert subscriber.payloads == {f"message-{i}".encode() for i in range(MESSAGES)}


async def test_while_the_broker_is_away_the_queue_is_bounded_and_withdrawals_hold(
    broker: Mosquitto, subscriber: Subscriber
) -> None:
    await asyncio.to_thread(broker.stop)
    pacing = Pacing(rate=100.0, burst=10, queue_limit=2)
    async with Publisher(_settings(broker), pacing) as publisher:
        first = publisher.submit("load/a", b"first")
        withdrawn = publisher.submit("load/a", b"withdrawn")
        with pytest.raises(BrokerError, match="publish_queue_limit"):
            publisher.submit("load/a", b"refused")
        withdrawn.cancel()
        last = publisher.submit("load/a", b"last")
        await asyncio.to_thread(broker.start)
        async with asyncio.timeout(30):
            await asyncio.gather(first, last)
    # One connection sends in order: once "last" arrived, "withdrawn" would have before it.
    assert await asyncio.to_thread(subscriber.wait_for, b"last", 30)
    assert subscriber.payloads == {b"first", b"last"}
