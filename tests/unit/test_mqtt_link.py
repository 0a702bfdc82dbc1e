"""The MQTT link: TLS set-up, key permissions, what a refusal means, its packet limit, stopping."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tracemalloc
from pathlib import Path
from unittest import mock

import aiomqtt
import pytest
from structlog.testing import capture_logs

from edge.config import MqttSettings
from edge.errors import ConfigError, InsecurePermissionsError
from edge.fixtures.services import Mosquitto
from edge.mqtt.limit import MAX_PACKET_BYTES
from edge.mqtt.link import MqttLink, explain_connect_error, tls_context
from tests.support.tls import make_pki


def settings(**files: Path) -> MqttSettings:
    return MqttSettings(
        url="mqtts://127.0.0.1:8883", host="127.0.0.1", port=8883, tls=True, **files
    )


def test_client_certificate_and_key_make_a_context(tmp_path: Path) -> None:
    """A CA, a client certificate and its 0600 key give a context that verifies the broker."""
    pki = make_pki(tmp_path)
    context = tls_context(
        settings(ca_file=pki.ca.cert, cert_file=pki.client.cert, key_file=pki.client.key)
    )
    assert context is not None
    assert context.check_hostname


def test_key_others_can_read_is_refused_with_the_chmod(tmp_path: Path) -> None:
    """A group-readable client key is refused, and the message has the command that fixes it."""
    pki = make_pki(tmp_path)
    pki.client.key.chmod(0o640)
    with pytest.raises(InsecurePermissionsError, match=r"chmod 0600 .*test-client\.key"):
        tls_context(
            settings(ca_file=pki.ca.cert, cert_file=pki.client.cert, key_file=pki.client.key)
        )


@pytest.mark.parametrize("broken", ["ca_file", "cert_file"])
def test_unusable_files_are_config_errors_naming_the_file(tmp_path: Path, broken: str) -> None:
    """A missing CA file or certificate is a ConfigError naming it, not an ssl traceback."""
    pki = make_pki(tmp_path)
    files = {"ca_file": pki.ca.cert, "cert_file": pki.client.cert, "key_file": pki.client.key}
    files[broken] = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=rf"missing\.pem.*{broken}"):
        tls_context(settings(**files))


@pytest.mark.parametrize(
    ("error", "names"),
    [
        ("[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required", "cert_file"),
        ("[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca", "cert_file"),
        ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", "ca_file"),
    ],
)
def test_tls_refusals_say_which_setting_to_fix(error: str, names: str) -> None:
    """Each TLS refusal the broker or the handshake gives is explained with the key to fix."""
    hint = explain_connect_error(f"failed to receive on socket: {error} (_ssl.c:2580)")
    assert hint is not None
    assert f"[mqtt] {names}" in hint


def test_plain_network_errors_get_no_tls_hint() -> None:
    """A refused TCP connection is not a TLS problem and gets no TLS advice."""
    assert explain_connect_error("[Errno 111] Connection refused") is None


async def test_an_oversized_packet_is_read_past_acknowledged_and_not_held(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """A publish over MAX_PACKET_BYTES never reaches the handler or memory whole; later ones do.

    It is acknowledged, so the broker doesn't send it again when the session resumes.
    """
    received: list[tuple[str, bytes]] = []
    arrived = asyncio.Event()

    async def on_message(topic: str, payload: bytes) -> None:
        received.append((topic, payload))
        arrived.set()

    settings = MqttSettings(url=broker.url, host="127.0.0.1", port=broker.port, tls=False)

    def publish(path: Path) -> None:
        # Another process, so this one's memory holds only what the core's link keeps.
        subprocess.run(
            ["mosquitto_pub", "-p", str(broker.port), "-t", "big/t", "-q", "1", "-f", str(path)],
            check=True,
            timeout=30,
        )

    async def session(send: list[Path]) -> list[dict[str, object]]:
        arrived.clear()
        link = MqttLink(
            settings=settings, client_id="limit", subscriptions=["big/t"], on_message=on_message
        )
        with capture_logs() as logs:
            task = asyncio.create_task(link.run())
            await asyncio.wait_for(link.connected.wait(), 10)
            for path in send:
                await asyncio.to_thread(publish, path)
            await asyncio.wait_for(arrived.wait(), 20)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return logs

    big = 3 * MAX_PACKET_BYTES
    (tmp_path / "big").write_bytes(b"x" * big)
    (tmp_path / "small").write_bytes(b"small")
    (tmp_path / "after").write_bytes(b"after")
    tracemalloc.start()
    try:
        logs = await session([tmp_path / "big", tmp_path / "small"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == [("big/t", b"small")]
    dropped = [e for e in logs if e["event"] == "mqtt.packet_too_large"]
    assert [(e["topic"], e["size"] > big) for e in dropped] == [("big/t", True)]
    assert peak < big // 4

    # A new session: the broker has forgotten the dropped publish; only the next one comes.
    logs = await session([tmp_path / "after"])
    assert received[-1] == ("big/t", b"after")
    assert not [e for e in logs if e["event"] == "mqtt.packet_too_large"]


async def test_a_link_asked_to_stop_stops_even_when_closing_its_connection_fails(
    broker: Mosquitto,
) -> None:
    """Stopped while its close fails: the link ends, rather than reconnecting forever.

    The failure stands in for a broker whose DISCONNECT never completes in time (aiomqtt's
    "Operation timed out"), which a real broker can't be made to do on demand. Its MqttError
    replaces the CancelledError on the way out; the link must still stop, or `edge run`
    would ignore SIGTERM.
    """

    async def ignore(_topic: str, _payload: bytes) -> None:
        return None

    settings = MqttSettings(
        url=broker.url, host="127.0.0.1", port=broker.port, tls=False, reconnect_max_seconds=0.1
    )
    link = MqttLink(settings=settings, client_id="stop-test", subscriptions=[], on_message=ignore)

    async def failing_close(_client: object, *_exc: object) -> None:
        raise aiomqtt.MqttError("Operation timed out")

    # `async with` looks its exit up on entry: the fault is in place before the link connects.
    with mock.patch.object(aiomqtt.Client, "__aexit__", failing_close):
        task = asyncio.create_task(link.run())
        try:
            await asyncio.wait_for(link.connected.wait(), 15)
            link.stop(task)
            done, _ = await asyncio.wait({task}, timeout=10)
        finally:
            # Should it reconnect instead: with no broker, a cancel lands between attempts.
            if not task.done():
                broker.stop()
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=1)
    assert task in done, "the link reconnected instead of stopping"
    assert task.cancelled()
    assert not link.connected.is_set()
