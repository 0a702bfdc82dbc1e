# SPDX-License-Identifier: Apache-2.0
"""The core's one MQTT connection: reconnects forever, resubscribes, and never drops a status.

The broker may be down when the core starts and may go away at any time; the core must keep
serving from its store meanwhile. `MqttLink.run` reconnects with jittered, capped exponential
backoff, with a new aiomqtt client after each lost session (see `run` for why not one client).
Outgoing messages go through an outbox that survives disconnections, so a status produced while
offline is published once the broker is back, and once only. The session is persistent
(clean_session=False, a stable client id), so the broker queues QoS 1 deployments published
while the core was offline. Packets larger than `edge.mqtt.limit.MAX_PACKET_BYTES` are read past
and dropped, never held in memory whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import stat
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from structlog.typing import FilteringBoundLogger

from edge.config import MqttSettings
from edge.errors import ConfigError, InsecurePermissionsError
from edge.log import get_logger
from edge.mqtt.imports import aiomqtt
from edge.mqtt.limit import MAX_PACKET_BYTES, limit_packet_size
from edge.secrets.keyref import TokenKeyRef

MessageHandler = Callable[[str, bytes], Awaitable[None]]

#: First retry delay after a lost connection; doubles up to `reconnect_max_seconds`.
_INITIAL_BACKOFF_SECONDS = 0.5
#: How long aiomqtt waits for CONNACK, SUBACK and PUBACK. A broker that drops us between the
#: TLS handshake and CONNACK (a refused client certificate) ends the attempt at once instead
#: (see `_fail_connect_on_disconnect`).
_TIMEOUT_SECONDS = 10
#: What a TLS private key must be, like the core key: nobody else may read it.
_PRIVATE_KEY_MODE = 0o600
#: OpenSSL's words for a refused handshake, and what the operator should check for each.
_TLS_HINTS: tuple[tuple[str, str], ...] = (
    (
        "certificate required",
        "the broker requires a client certificate: set [mqtt] cert_file and key_file",
    ),
    (
        "unknown ca",
        (
            "the broker does not trust the client certificate: [mqtt] cert_file must be issued "
            "by a CA the broker trusts"
        ),
    ),
    (
        "bad certificate",
        (
            "the broker rejected the client certificate ([mqtt] cert_file): expired, or not "
            "issued for client authentication"
        ),
    ),
    (
        "certificate_verify_failed",
        (
            "the broker's certificate is not trusted: [mqtt] ca_file must hold the CA that "
            "issued it, and the url's host must be in its names"
        ),
    ),
    ("ssl", "the TLS connection to the broker failed; check [mqtt] ca_file, cert_file, key_file"),
)


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
    """Build the TLS context for an mqtts:// url (server verification, optional client cert).

    Raises:
        InsecurePermissionsError: `key_file` is readable or writable by group or others.
        ConfigError: `ca_file`, `cert_file` or `key_file` is missing, unreadable or not PEM
            of the right kind, or the key does not belong to the certificate; for a key in a
            token, the token, its PIN, the key or OpenSSL's pkcs11-provider is missing.
    """
    if not settings.tls:
        return None
    if isinstance(settings.key_file, Path):
        _check_key_file(settings.key_file)
    try:
        context = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise _tls_file_error("ca_file", settings.ca_file, exc) from None
    if settings.cert_file and isinstance(settings.key_file, TokenKeyRef):
        # Only for a key in a token: its module brings ctypes.util (shutil, tempfile, bz2,
        # lzma) and the PKCS#11 key code, which a core with a key file never needs.
        from edge.mqtt.token_key import load_token_client_key  # noqa: PLC0415

        load_token_client_key(
            context, settings.cert_file, settings.key_file, setting="[mqtt] key_file"
        )
    elif settings.cert_file and settings.key_file:
        try:
            context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise _tls_file_error("cert_file", settings.cert_file, exc) from None
    return context


def _check_key_file(path: Path) -> None:
    """Refuse a TLS private key that other users can read (as the core key is refused)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return  # load_cert_chain reports it, naming the key
    if mode & 0o077:
        raise InsecurePermissionsError(str(path), mode, _PRIVATE_KEY_MODE)


def _tls_file_error(key: str, path: Path | None, exc: Exception) -> ConfigError:
    # ssl.SSLError's str() is "[X509: NO_CERTIFICATE_OR_CRL_FOUND] ... (_ssl.c:4149)"; the
    # reason and the strerror of an OSError are what a person can act on.
    detail = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
    what = "ca_file" if key == "ca_file" else "cert_file and key_file"
    return ConfigError(
        str(path),
        f"can't be used as [mqtt] {what}: {detail}; they must be readable PEM files, "
        "and the key must belong to the certificate",
    )


def explain_connect_error(error: str) -> str | None:
    """Say in words what to fix for a TLS failure seen while connecting; None if not TLS."""
    lowered = error.lower()
    for needle, hint in _TLS_HINTS:
        if needle in lowered:
            return hint
    return None


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _ClientErrors(logging.Handler):
    """Keeps the last error paho-mqtt logged, and passes warnings on to our structured log.

    A broker that refuses the client certificate does so with a TLS alert *after* the
    handshake (TLS 1.3), while aiomqtt waits for CONNACK: paho only logs the alert, and the
    connect attempt then ends in a bare "Operation timed out". This is where the cause is.
    """

    def __init__(self, log: FilteringBoundLogger, *, tls: bool) -> None:
        super().__init__(level=logging.WARNING)
        self._log = log
        self._tls = tls
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        """Remember an error; log it as a `mqtt.client_log` event, with the fix if it is TLS's."""
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            self.last = message
        hint = explain_connect_error(message) if self._tls else None
        self._log.warning(
            "mqtt.client_log",
            message=message,
            level_name=record.levelname,
            **({"fix": hint} if hint else {}),
        )


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
        self._stop_requested = False
        # Not registered with logging.getLogger: one private logger per link, whose handler
        # catches what paho-mqtt says about a failed connection (see _ClientErrors).
        self._client_errors = _ClientErrors(self._log, tls=settings.tls)
        self._client_logger = logging.Logger("edge.mqtt.client", logging.WARNING)  # noqa: LOG001
        self._client_logger.propagate = False
        self._client_logger.addHandler(self._client_errors)
        self._client_id = client_id
        # Built once, so a bad ca_file, cert_file or key_file stops the core at start.
        self._tls = tls_context(settings)
        self._client = self._new_client()

    def _new_client(self) -> aiomqtt.Client:
        client = aiomqtt.Client(
            self._settings.host,
            self._settings.port,
            identifier=self._client_id,
            clean_session=False,
            keepalive=self._settings.keepalive_seconds,
            tls_context=self._tls,
            timeout=_TIMEOUT_SECONDS,
            logger=self._client_logger,
        )
        # paho acknowledges a QoS 1 message as it arrives, before our handler has made it
        # durable (a deployment goes to the inbox first): a crash in between would lose it,
        # since the broker never sends an acknowledged message again. `_receive` acknowledges
        # once the handler returns. aiomqtt 2.x has no public switch for paho's manual_ack.
        client._client.manual_ack_set(on=True)  # noqa: SLF001
        self._fail_connect_on_disconnect(client)
        limit_packet_size(
            client._client,  # noqa: SLF001
            limit=MAX_PACKET_BYTES,
            dropped=self._packet_dropped,
        )
        return client

    def _fail_connect_on_disconnect(self, client: aiomqtt.Client) -> None:
        """End a connect attempt as soon as the connection is lost before CONNACK.

        aiomqtt ignores a disconnect before CONNACK and waits out its whole timeout, so a
        broker refusing the client certificate (a TLS 1.3 alert after the handshake) would
        cost `_TIMEOUT_SECONDS` per attempt, whatever `reconnect_max_seconds` says. paho
        reports the loss through on_disconnect, on the event loop (aiomqtt reads the socket
        there); failing aiomqtt's pending CONNACK future makes `__aenter__` raise at once.
        """
        paho = client._client  # noqa: SLF001 - aiomqtt 2.x has no hook for this
        forward: Callable[..., None] | None = paho.on_disconnect

        def on_disconnect(*args: Any) -> None:  # noqa: ANN401 - paho's callback signature
            connecting = client._connected  # noqa: SLF001
            # Only while `__aenter__` waits (it holds the lock), and on the event loop: from
            # another thread, aiomqtt's timeout still ends the attempt.
            attempt = client._lock.locked()  # noqa: SLF001
            if attempt and _on_event_loop() and not connecting.done():
                cause = self._client_errors.last or "the broker closed the connection"
                connecting.set_exception(aiomqtt.MqttError(f"{cause} (before CONNACK)"))
            if forward is not None:
                forward(*args)

        paho.on_disconnect = on_disconnect

    def _packet_dropped(self, topic: str, size: int) -> None:
        # Nothing of it was kept: no valid message on any of our topics is that large.
        self._log.warning(
            "mqtt.packet_too_large", topic=topic[:200], size=size, limit=MAX_PACKET_BYTES
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

    def stop(self, task: asyncio.Task[None]) -> None:
        """Stop `task`, the one running `run()`: it ends even if closing the connection fails."""
        self._stop_requested = True
        task.cancel()

    async def run(self) -> None:
        """Connect, subscribe, receive and publish until cancelled; reconnect on any failure."""
        delay = backoff_delays(_INITIAL_BACKOFF_SECONDS, self._settings.reconnect_max_seconds)
        attempt = 0
        while True:
            error: str | None = None
            established = False
            self._client_errors.last = None
            try:
                async with self._client:
                    attempt = 0
                    established = True
                    await self._session()
            # The session's tasks run in a TaskGroup, so a lost connection arrives wrapped.
            except* aiomqtt.MqttError as group:
                error = "; ".join(str(e) for e in group.exceptions)
            finally:
                self.connected.clear()
            if self._stop_requested:
                # Asked to stop while the client closed, and closing failed too: its MqttError
                # took the CancelledError's place (an async with's exit, or a TaskGroup that
                # raises its children's errors rather than the cancellation). Stop as asked;
                # reconnecting would leave whoever cancelled waiting forever. A flag, not
                # Task.cancelling(): Python 3.11's TaskGroup leaves that count raised after a
                # child fails, as every lost connection does here.
                raise asyncio.CancelledError
            if established:
                # After a session, a new client rather than the old one re-entered (aiomqtt's
                # idiom): paho keeps the unacknowledged QoS 1 publishes of a lost connection
                # and sends them again on reconnect, and so does the outbox, whose head stays
                # until acknowledged; with one client, a status in flight at a disconnect
                # reached the broker twice. The outbox alone redelivers what we send (the
                # broker, what it sent us). A failed connect has nothing in flight, and
                # re-entering its client closes the socket it may have left open.
                self._client = self._new_client()
            cause = self._client_errors.last
            if cause and cause not in (error or ""):
                # aiomqtt's "Operation timed out" hides why; paho logged the real cause.
                error = f"{cause} ({error})"
            wait = delay(attempt)
            attempt += 1
            hint = explain_connect_error(error or "") if self._settings.tls else None
            self._log.warning(
                "mqtt.disconnected",
                url=self._settings.url,
                error=error,
                retry_in=round(wait, 2),
                **({"fix": hint} if hint else {}),
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
            # Handled (for a deployment: in the inbox, fsynced): only now may the broker forget
            # it. A crash before this line gets the message delivered again on reconnect.
            self._client._client.ack(message.mid, message.qos)  # noqa: SLF001

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
