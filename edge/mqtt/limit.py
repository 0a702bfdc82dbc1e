# SPDX-License-Identifier: Apache-2.0
"""A maximum size for the MQTT packets the core reads: larger ones are skipped, not buffered.

paho-mqtt (under aiomqtt 2.x) reads a whole packet into memory before it hands it over, with no
limit: six 100 MB publishes on the deployments topic took the core to 472 MB. MQTT 5 has a
Maximum Packet Size the client can announce, but the core speaks MQTT 3.1.1 (so do brokers such
as the demo's amqtt), where only the client can enforce one. `limit_packet_size` does that
inside paho's read loop: once a packet's fixed header says it is too large, the rest of it is
read from the socket in small chunks and thrown away, keeping only the topic and packet id. A
QoS 1 publish is then acknowledged, so the broker doesn't send it again on every reconnect (a
deployment that size could never be applied), and the drop is reported to the caller.

This reaches into paho's private read state (`_in_packet`, `_sock_recv`, `_send_puback`), the
same way `edge.mqtt.link` already drives its manual acknowledgements; the layout is that of
paho-mqtt 2.x, which pyproject.toml pins through aiomqtt 2.x.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from paho.mqtt.enums import MQTTErrorCode

from edge.envelope import MAX_ENVELOPE_BYTES
from edge.mqtt.imports import paho

if TYPE_CHECKING:
    from paho.mqtt.client import _InPacket

#: The largest packet body (after the fixed header) the core reads: a signed deployment
#: envelope (the largest thing published to it), plus the longest topic MQTT allows (a 2-byte
#: length and 65,535 bytes) and a packet id. About 1.46 MB.
MAX_PACKET_BYTES = MAX_ENVELOPE_BYTES + 2 + 65535 + 2
#: How much of a skipped packet is read from the socket at a time.
_SKIP_CHUNK = 64 * 1024
_PUBLISH = 0x30
# MQTT's remaining length is at most 4 bytes of 7 bits each (268,435,455).
_MAX_LENGTH_BYTES = 4

Dropped = Callable[[str, int], None]


def _fresh_in_packet() -> _InPacket:
    """Paho's idle read state, as `_packet_read` resets it after every packet."""
    return {
        "command": 0,
        "have_remaining": 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": 0,
        "packet": bytearray(b""),
        "to_process": 0,
        "pos": 0,
    }


@dataclass
class _Skip:
    """An oversized packet being read past: its size, what is left, and its first bytes."""

    command: int
    size: int
    left: int
    head: bytearray = field(default_factory=bytearray)

    def head_needed(self) -> int:
        """Bytes of variable header to keep: topic length, topic and (QoS > 0) packet id."""
        if len(self.head) < 2:  # noqa: PLR2004 - the topic's 2-byte length
            return 2
        topic_length = int.from_bytes(self.head[:2], "big")
        return 2 + topic_length + (2 if self.qos else 0)

    @property
    def qos(self) -> int:
        return (self.command >> 1) & 0x03

    def topic(self) -> str:
        topic_length = int.from_bytes(self.head[:2], "big")
        return bytes(self.head[2 : 2 + topic_length]).decode("utf-8", "replace")

    def packet_id(self) -> int | None:
        if not self.qos or len(self.head) < self.head_needed():
            return None
        return int.from_bytes(self.head[self.head_needed() - 2 : self.head_needed()], "big")


class _PacketLimit:
    """Stands in for one paho client's `_packet_read` (see the module docstring)."""

    def __init__(self, client: paho.Client, limit: int, dropped: Dropped) -> None:
        self._client = client
        self._read_packet = client._packet_read  # noqa: SLF001
        self._limit = limit
        self._dropped = dropped
        self._skip: _Skip | None = None

    def packet_read(self) -> MQTTErrorCode:
        if self._skip is None:
            rc = self._read_fixed_header()
            if rc is not None:
                return rc
            state = self._client._in_packet  # noqa: SLF001
            if state["remaining_length"] <= self._limit:
                return self._read_packet()  # paho reads the body as usual
            if state["command"] & 0xF0 != _PUBLISH:
                return MQTTErrorCode.MQTT_ERR_PROTOCOL  # only a publish can be that big
            size = state["remaining_length"]
            self._skip = _Skip(command=state["command"], size=size, left=size)
        return self._skip_body(self._skip)

    def _recv(self, size: int) -> bytes | MQTTErrorCode:
        try:
            data = self._client._sock_recv(size)  # noqa: SLF001
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:
            # Logged as paho does: a TLS alert (a refused client certificate) is only ever
            # seen here, and edge.mqtt.link reads the cause of a failed connect from this log.
            self._client._easy_log(  # noqa: SLF001
                paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err
            )
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        return data or MQTTErrorCode.MQTT_ERR_CONN_LOST

    def _read_fixed_header(self) -> MQTTErrorCode | None:
        """Read the command and remaining length into paho's state, as paho would."""
        state = self._client._in_packet  # noqa: SLF001
        if state["command"] == 0:
            data = self._recv(1)
            if isinstance(data, MQTTErrorCode):
                return data
            state["command"] = data[0]
        while not state["have_remaining"]:
            data = self._recv(1)
            if isinstance(data, MQTTErrorCode):
                return data
            state["remaining_count"].append(data[0])
            if len(state["remaining_count"]) > _MAX_LENGTH_BYTES:
                return MQTTErrorCode.MQTT_ERR_PROTOCOL
            state["remaining_length"] += (data[0] & 0x7F) * state["remaining_mult"]
            state["remaining_mult"] *= 128
            if not data[0] & 0x80:
                state["have_remaining"] = 1
                state["to_process"] = state["remaining_length"]
        return None

    def _skip_body(self, skip: _Skip) -> MQTTErrorCode:
        while skip.left > 0:
            data = self._recv(min(skip.left, _SKIP_CHUNK))
            if isinstance(data, MQTTErrorCode):
                return data
            skip.left -= len(data)
            offset = 0
            # Twice at most: the topic's length first, then the topic and packet id it implies.
            while offset < len(data) and len(skip.head) < skip.head_needed():
                take = skip.head_needed() - len(skip.head)
                skip.head += data[offset : offset + take]
                offset += take
            with self._client._msgtime_mutex:  # noqa: SLF001 - as paho: keepalive bookkeeping
                self._client._last_bytes_received = time.monotonic()  # noqa: SLF001
        self._skip = None
        self._client._in_packet = _fresh_in_packet()  # noqa: SLF001
        mid = skip.packet_id()
        if skip.qos == 1 and mid is not None:
            # Acknowledged, so the broker forgets it: it would be dropped again every time.
            self._client._send_puback(mid)  # noqa: SLF001
        self._dropped(skip.topic(), skip.size)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


def limit_packet_size(client: paho.Client, *, limit: int, dropped: Dropped) -> None:
    """Make `client` skip, and report through `dropped(topic, size)`, packets over `limit`."""
    guard = _PacketLimit(client, limit, dropped)
    # An instance attribute: paho's loop_read calls self._packet_read().
    client._packet_read = guard.packet_read  # type: ignore[method-assign]  # noqa: SLF001
