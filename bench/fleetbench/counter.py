# SPDX-License-Identifier: Apache-2.0
"""Watching the broker: a client on `#` that counts messages and notes each final status."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench.fleetbench.constants import PREFIX


@dataclass
class Counter:
    """A client on `#` (QoS 0) that counts messages by kind and notes each core's final status."""

    port: int
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    sizes: collections.Counter[str] = field(default_factory=collections.Counter)
    other_topics: collections.Counter[str] = field(default_factory=collections.Counter)
    #: thing -> (monotonic time, DeploymentStatus, ErrorMessage) of its first final status.
    finals: dict[str, tuple[float, str, str]] = field(default_factory=dict)
    #: thing -> how many Success/Failure documents it published.
    final_count: collections.Counter[str] = field(default_factory=collections.Counter)
    sys: dict[str, int] = field(default_factory=dict)
    #: When each deployment message reached the counter (monotonic): the outbox's pace.
    deployments_at: list[float] = field(default_factory=list)
    #: thing -> the DeploymentId of every deployment message sent to it, in order.
    delivered: dict[str, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    client: Any = None

    def connect(self) -> None:
        """Connect and subscribe to `#` and to Mosquitto's `$SYS` message counters."""
        import paho.mqtt.client as paho  # noqa: PLC0415
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        ready = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"fleet-counter-{os.getpid()}")
        client.on_connect = lambda c, *_: c.subscribe(
            [("#", 0), ("$SYS/broker/messages/#", 0), ("$SYS/broker/publish/messages/#", 0)]
        )
        client.on_subscribe = lambda *_: ready.set()
        client.on_message = self._on_message
        client.connect("127.0.0.1", self.port, keepalive=60)
        client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("the counter client could not subscribe")
        self.client = client

    def close(self) -> None:
        """Disconnect."""
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
            self.client = None

    def reset(self) -> None:
        """Forget what was counted so far (statuses included)."""
        with self.lock:
            self.kinds.clear()
            self.sizes.clear()
            self.other_topics.clear()
            self.finals.clear()
            self.final_count.clear()
            self.deployments_at.clear()
            self.delivered.clear()

    def publish_rate(self) -> float:
        """Deployments the broker delivered per second, first to last."""
        with self.lock:
            stamps = list(self.deployments_at)
        if len(stamps) < 2:
            return 0.0
        return (len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-6)

    def sys_snapshot(self) -> dict[str, int]:
        """Mosquitto's `$SYS` counters, at least one `sys_interval` fresh."""
        time.sleep(2.2)
        with self.lock:
            return dict(self.sys)

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        now = time.monotonic()
        topic: str = msg.topic
        if topic.startswith("$SYS/"):
            with contextlib.suppress(ValueError), self.lock:
                self.sys[topic.removeprefix("$SYS/broker/")] = int(msg.payload)
            return
        parts = topic.split("/")
        things = len(parts) >= 4 and parts[0] == PREFIX and parts[1] == "things"
        kind = "other"
        if things and parts[3:] == ["deployments"]:
            kind = "deployments"
        elif things and parts[3:] == ["deployments", "status"]:
            kind = "statuses"
        with self.lock:
            self.kinds[kind] += 1
            self.sizes[kind] += len(msg.payload)
            if kind == "deployments":
                self.deployments_at.append(now)
                self.delivered.setdefault(parts[2], []).append(deployment_id(msg.payload))
            if kind == "other":
                shape = [*parts[:2], "{thing}", *parts[3:]] if things else parts
                self.other_topics["/".join(shape)] += 1
            if kind != "statuses":
                return
            with contextlib.suppress(ValueError):
                doc = json.loads(msg.payload)
                status = doc.get("DeploymentStatus")
                if status in {"Success", "Failure"}:
                    self.final_count[parts[2]] += 1
                    self.finals.setdefault(
                        parts[2], (now, status, str(doc.get("ErrorMessage", "")))
                    )


def deployment_id(envelope: bytes) -> str:
    """The DeploymentId inside a signed deployment envelope (unverified), or "?"."""
    import base64  # noqa: PLC0415

    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        return str(json.loads(base64.b64decode(json.loads(envelope)["Document"]))["DeploymentId"])
    return "?"
