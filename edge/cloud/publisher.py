# SPDX-License-Identifier: Apache-2.0
"""One long-lived, paced MQTT connection that publishes for a long-running control plane.

`edge cloud serve` publishes every deployment through one `Publisher` instead of a connection
per deployment. Messages wait in a bounded queue, leave at most `[mqtt] publish_rate` per
second (a token bucket, so a burst of `publish_burst` goes at once), and each caller learns
when *its* message was acknowledged by the broker (QoS 1 PUBACK): a record may be marked sent
only then. When the broker goes away, the connection is re-established with jittered, capped
backoff; messages that were in flight without an acknowledgement go back to the head of the
queue, in their original order, and are sent again: delivery is at least once, and a core
answers a redelivered `DeploymentId` as a duplicate.

AWS IoT Core limits publishes per connection per second and connections per second per
account; pacing here and one connection per process keep a control plane within both.

The same connection follows the cores' status reports (`Following`), so a replica holds one
connection in all. Received messages wait in `received` for their consumer. With a shared
subscription group the connection speaks MQTT v5 and follows `$share/<group>/<filter>`, so each
report goes to one replica; since brokers don't deliver retained messages to shared
subscriptions, each connection first subscribes to the plain filter, reads the retained reports
until they stop coming (a quiet spell), then subscribes to the shared one and drops the plain
one. Reports seen twice meanwhile are recorded once (`edge.cloud.status.record`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

import aiomqtt
from structlog.typing import FilteringBoundLogger

from edge.cloud.config import Pacing
from edge.cloud.errors import BrokerError
from edge.cloud.publish import Received
from edge.config import MqttSettings
from edge.log import get_logger
from edge.mqtt.link import backoff_delays, tls_context

#: Seconds to connect or to have one publish acknowledged before the connection counts as
#: broken (and is made again).
OPERATION_TIMEOUT_SECONDS: Final = 10.0
#: First wait before reconnecting; doubled after each failure up to [mqtt]
#: reconnect_max_seconds.
FIRST_RETRY_SECONDS: Final = 0.5

#: What the publisher's observer hears: a message sent, and its PUBACK.
SENT: Final = "sent"
ACKNOWLEDGED: Final = "acknowledged"


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; the clock is injected for tests."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            msg = "rate must be positive and burst at least 1"
            raise ValueError(msg)
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> float:
        """Take one token; return how many seconds to wait before using it (0: now).

        A token taken before it is there is owed: the next callers wait for it too, so no
        sequence of calls gets more than `burst + rate * elapsed` tokens.
        """
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate


@dataclass(frozen=True, slots=True)
class Following:
    """What the connection subscribes to beside publishing."""

    #: The plain topic filter (every thing's status topic).
    topic: str
    #: The shared subscription group, or None for the plain subscription alone.
    shared_group: str | None = None
    #: How long no retained message must arrive before the catch-up counts as done.
    quiet_seconds: float = 1.0

    @property
    def shared_topic(self) -> str | None:
        """`$share/<group>/<filter>`, or None."""
        return None if self.shared_group is None else f"$share/{self.shared_group}/{self.topic}"


@dataclass(eq=False, slots=True)
class _Message:
    sequence: int
    topic: str
    payload: bytes
    acked: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Publisher:
    """Publishes through one connection it keeps open; an async context manager owning its task."""

    def __init__(
        self,
        settings: MqttSettings,
        pacing: Pacing,
        *,
        client_id_prefix: str = "edge-cloud-publisher",
        logger: FilteringBoundLogger | None = None,
        clock: Callable[[], float] = time.monotonic,
        following: Following | None = None,
        observer: Callable[[str], None] | None = None,
    ) -> None:
        # observer: hears "sent" for each message sent, "acknowledged" for each PUBACK.
        self._observer = observer
        self._settings = settings
        self._following = following
        #: Messages received on the followed topics, for one consumer to take.
        self.received: asyncio.Queue[Received] = asyncio.Queue()
        self._pacing = pacing
        self._log = logger or get_logger("cloud.publisher")
        self._bucket = TokenBucket(pacing.rate, pacing.burst, clock=clock)
        self._queue: deque[_Message] = deque()
        self._ready = asyncio.Event()
        self._sequence = itertools.count()
        prefix = settings.client_id or client_id_prefix
        self._client_id = f"{prefix}-{uuid.uuid4().hex[:12]}"
        # Built once, so a bad ca_file, cert_file or key_file stops the service at start.
        self._tls = tls_context(settings)
        self._client = self._new_client()
        self._task: asyncio.Task[None] | None = None
        #: Set while connected, for health reports and tests.
        self.connected = asyncio.Event()

    def _new_client(self) -> aiomqtt.Client:
        # A new client per connection: one whose connect timed out can't be entered again.
        # Clean session: what the broker has not acknowledged is sent again by this class.
        if self._following is not None and self._following.shared_group is not None:
            session: dict[str, Any] = {"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": True}
        else:
            session = {"clean_session": True}
        return aiomqtt.Client(
            self._settings.host,
            self._settings.port,
            identifier=self._client_id,
            **session,
            keepalive=self._settings.keepalive_seconds,
            tls_context=self._tls,
            timeout=OPERATION_TIMEOUT_SECONDS,
        )

    async def __aenter__(self) -> Self:
        """Start connecting in the background; publishes queue until connected."""
        self._task = asyncio.create_task(self._run(), name="cloud.publisher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop; messages not acknowledged by then fail with BrokerError."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)
            self._task = None
        error = BrokerError(self._settings.url, "the publisher stopped")
        while self._queue:
            message = self._queue.popleft()
            if not message.acked.done():
                message.acked.set_exception(error)
                # Retrieved here: a caller that no longer waits must not make asyncio log it.
                message.acked.exception()

    @property
    def queued(self) -> int:
        """Messages waiting to be sent (not those in flight)."""
        return len(self._queue)

    @property
    def room(self) -> int:
        """Messages that may still be queued before `submit` refuses one."""
        return self._pacing.queue_limit - len(self._queue)

    def submit(self, topic: str, payload: bytes) -> asyncio.Future[None]:
        """Queue a QoS 1 message; the future resolves when the broker acknowledged it.

        Cancelling the future withdraws the message if it has not been sent yet.

        Raises:
            BrokerError: The queue is full.
        """
        if len(self._queue) >= self._pacing.queue_limit:
            # Withdrawn messages leave the queue when their turn comes; make room now.
            self._queue = deque(m for m in self._queue if not m.acked.done())
        if len(self._queue) >= self._pacing.queue_limit:
            raise BrokerError(
                self._settings.url,
                f"{len(self._queue)} messages already wait for the broker "
                "([mqtt] publish_queue_limit)",
            )
        message = _Message(next(self._sequence), topic, payload)
        if self._observer is not None:
            message.acked.add_done_callback(self._observe_ack)
        self._queue.append(message)
        self._ready.set()
        return message.acked

    async def publish(self, topic: str, payload: bytes, *, wait_seconds: float) -> None:
        """Queue a message and wait until the broker acknowledged it.

        Raises:
            BrokerError: Not acknowledged within `wait_seconds` (withdrawn if not yet sent),
                or the queue is full.
        """
        acked = self.submit(topic, payload)
        try:
            async with asyncio.timeout(wait_seconds):
                await asyncio.shield(acked)
        except TimeoutError:
            acked.cancel()
            raise BrokerError(
                self._settings.url,
                f"publish to {topic}: no acknowledgement within {wait_seconds:g} s",
            ) from None

    async def _run(self) -> None:
        delay = backoff_delays(FIRST_RETRY_SECONDS, self._settings.reconnect_max_seconds)
        attempt = 0
        while True:
            problem = "the connection closed"
            self._client = self._new_client()
            try:
                async with asyncio.timeout(OPERATION_TIMEOUT_SECONDS):
                    await self._client.__aenter__()
            except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
                problem = str(exc) or type(exc).__name__
            else:
                attempt = 0
                self.connected.set()
                self._log.info("cloud.publisher.connected", url=self._settings.url)
                try:
                    problem = await self._serve_connection()
                finally:
                    self.connected.clear()
                    with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                        await self._client.__aexit__(None, None, None)
            attempt += 1
            wait = delay(attempt)
            self._log.warning(
                "cloud.publisher.unavailable",
                error=problem,
                retry_in_seconds=round(wait, 2),
                queued=len(self._queue),
            )
            await asyncio.sleep(wait)

    async def _serve_connection(self) -> str:
        """Send until the connection breaks; put unacknowledged messages back; say why."""
        link = _Link(self._client, self._pacing.in_flight, self.received)
        watcher = asyncio.create_task(link.watch(), name="cloud.publisher.watch")
        if self._following is not None:
            follower = asyncio.create_task(self._follow(link), name="cloud.publisher.follow")
            link.tasks.add(follower)
            follower.add_done_callback(link.tasks.discard)
        try:
            while not link.broken.done():
                message = await self._next(link.broken)
                if message is not None and not await link.send(message):
                    self._queue.appendleft(message)
                elif message is not None and self._observer is not None:
                    self._observer(SENT)
            return link.broken.result()
        finally:
            await link.close(watcher)
            self._queue.extendleft(reversed(link.unacknowledged()))

    async def reread_retained(self, topics: list[str]) -> bool:
        """Have the broker send these topics' retained messages again, into `received`.

        A plain subscription to each, held for a quiet spell, then dropped. False if not
        connected or the broker refused: the caller tries again later.
        """
        quiet = self._following.quiet_seconds if self._following is not None else 1.0
        if not topics or not self.connected.is_set():
            return False
        client = self._client
        filters = [(topic, 1) for topic in topics]
        try:
            await client.subscribe(filters, timeout=OPERATION_TIMEOUT_SECONDS)
            # The broker sends retained messages right after its SUBACK; a live report that
            # arrives meanwhile comes twice (here and shared), which recording makes harmless.
            await asyncio.sleep(quiet)
            await client.unsubscribe(topics, timeout=OPERATION_TIMEOUT_SECONDS)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            self._log.warning("cloud.publisher.reread_failed", error=str(exc) or type(exc).__name__)
            return False
        return True

    def _observe_ack(self, acked: asyncio.Future[None]) -> None:
        if self._observer is not None and not acked.cancelled() and acked.exception() is None:
            self._observer(ACKNOWLEDGED)

    async def _follow(self, link: _Link) -> None:
        """Subscribe to the followed topics on a new connection, catching up first if shared."""
        following = self._following
        assert following is not None  # noqa: S101 - only started with one
        shared = following.shared_topic
        try:
            await self._client.subscribe(following.topic, qos=1, timeout=OPERATION_TIMEOUT_SECONDS)
            if shared is None:
                return
            while True:
                link.arrived.clear()
                try:
                    async with asyncio.timeout(following.quiet_seconds):
                        await link.arrived.wait()
                except TimeoutError:
                    break  # a quiet spell: the retained reports are all read
            await self._client.subscribe(shared, qos=1, timeout=OPERATION_TIMEOUT_SECONDS)
            await self._client.unsubscribe(following.topic, timeout=OPERATION_TIMEOUT_SECONDS)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            link.mark_broken(f"subscribe: {exc or type(exc).__name__}")
            return
        self._log.info("cloud.publisher.shared", topic=shared)

    async def _next(self, broken: asyncio.Future[str]) -> _Message | None:
        """The next message still wanted, once its token is there; None if the link broke."""
        while True:
            while self._queue and self._queue[0].acked.done():
                self._queue.popleft()  # withdrawn by its caller
            if self._queue:
                break
            self._ready.clear()
            ready: asyncio.Future[Any] = asyncio.ensure_future(self._ready.wait())
            either: set[asyncio.Future[Any]] = {ready, broken}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if broken.done():
                return None
        wait = self._bucket.take()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await asyncio.shield(broken)
            if broken.done():
                return None
        while self._queue and self._queue[0].acked.done():
            self._queue.popleft()
        return self._queue.popleft() if self._queue else None


class _Link:
    """One connection's sending: a window of publishes in flight, and whether it broke."""

    def __init__(
        self, client: aiomqtt.Client, in_flight: int, received: asyncio.Queue[Received]
    ) -> None:
        self._client = client
        self._window = asyncio.Semaphore(in_flight)
        self._received = received
        self.tasks: set[asyncio.Task[None]] = set()
        #: Set whenever a message arrives.
        self.arrived = asyncio.Event()
        #: Sent and not yet acknowledged, by sequence number.
        self._unacked: dict[int, _Message] = {}
        #: Resolves with the reason once the connection broke.
        self.broken: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def send(self, message: _Message) -> bool:
        """Start publishing once the window has room; False if the connection broke first."""
        await self._window.acquire()
        if self.broken.done():
            self._window.release()
            return False
        self._unacked[message.sequence] = message
        task = asyncio.create_task(self._publish(message), name="cloud.publisher.send")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _publish(self, message: _Message) -> None:
        try:
            await self._client.publish(
                message.topic, message.payload, qos=1, timeout=OPERATION_TIMEOUT_SECONDS
            )
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            self.mark_broken(f"publish to {message.topic}: {exc or type(exc).__name__}")
            return
        finally:
            self._window.release()
        self._unacked.pop(message.sequence, None)
        if not message.acked.done():
            message.acked.set_result(None)

    async def watch(self) -> None:
        """Note when the connection drops: aiomqtt then ends its message iterator."""
        try:
            async for message in self._client.messages:
                self.arrived.set()
                payload = message.payload
                data = payload if isinstance(payload, bytes | bytearray) else b""
                self._received.put_nowait(
                    Received(message.topic.value, bytes(data), bool(message.retain))
                )
        except aiomqtt.MqttError as exc:
            self.mark_broken(str(exc) or "the connection closed")

    def mark_broken(self, reason: str) -> None:
        if not self.broken.done():
            self.broken.set_result(reason)

    async def close(self, watcher: asyncio.Task[None]) -> None:
        """Stop watching and sending."""
        watcher.cancel()
        pending = list(self.tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(watcher, *pending, return_exceptions=True)

    def unacknowledged(self) -> list[_Message]:
        """What was sent and not acknowledged (and is still wanted), oldest first."""
        wanted = (m for m in self._unacked.values() if not m.acked.done())
        return sorted(wanted, key=lambda m: m.sequence)
