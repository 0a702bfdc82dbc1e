# SPDX-License-Identifier: Apache-2.0
"""`edge cloud simulate-cores`: many simulated cores on one broker, to load-test a control plane.

A simulated core answers its deployments topic as a real core does, without fetching secrets
or running functions: it opens the signed envelope with `edge.signing` (the control plane's
public key, as a core's `[deployments] trusted_keys`), parses the document with `edge.model`,
publishes `InProgress` and then `Success`, or `Failure` at the rate asked for, retained and
with QoS 1 on its status topic. A redelivered `DeploymentId` is a duplicate: the outcome
already reported is published again, nothing new. An envelope that doesn't verify gets no
status at all, and a document that doesn't parse gets a `Failure` when it names its id.

Cores are spread over `--processes` processes. Within a process, all cores share one MQTT
connection unless `--cores-per-connection K` (or `--connection-per-core`, K = 1) is given: the
connection subscribes to each core's own deployments topic (several topics per SUBSCRIBE) and
hands each message to the core whose thing name is in its topic. One connection per process
keeps a 10,000-core simulation within the broker's and the machine's limits; a few thousand
cores per connection keep a burst of deployments within what a broker queues for one client
(Mosquitto drops past `max_queued_messages`, 1,000 by default); a connection per core measures
the broker's cost of a real fleet's connections too. The connections keep their sessions
(clean_session false, a stable client id made of the first thing name and the process number),
so deployments sent while the simulation is down arrive when it comes back, as they do to real
cores.

This module is the whole command but its options, which `edge.cloud.cliparser` defines (so
that parsing any `edge cloud` command doesn't import the MQTT client and the core's modules):
`run` takes what it parsed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiomqtt

from edge.cloud.config import CloudConfig
from edge.cloud.errors import CloudUsageError
from edge.config import MqttSettings
from edge.deploy.agent import status_document
from edge.deploy.state import DeploymentState
from edge.errors import DeploymentInvalidError, SignatureError
from edge.model import parse_deployment
from edge.mqtt.link import backoff_delays, tls_context
from edge.signing import key_id, load_public_key, open_envelope

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

#: Topics per SUBSCRIBE packet: Mosquitto and amqtt take far more, but a packet of 10,000
#: topics is ~500 kB, past many brokers' default packet limit.
TOPICS_PER_SUBSCRIBE: Final = 200
#: Outcomes each simulated core remembers for duplicate detection; a real core keeps its
#: history on disk, a load test needs only the recent ones.
HISTORY_PER_CORE: Final = 64
#: How often a process reports its counts to the parent, and the parent checks for them.
REPORT_SECONDS: Final = 0.5
#: How long a process may take to stop and report its last counts before it is killed.
STOP_SECONDS: Final = 10.0
#: Seconds to connect or subscribe before the attempt counts as failed.
OPERATION_SECONDS: Final = 10.0
#: DetailedErrorCode of a Failure the simulation chose to report.
SIMULATED_FAILURE: Final = "SimulatedFailure"
_FORBIDDEN_IN_NAMES: Final = frozenset("/+#\n\0")


class Outcome(Enum):
    """What a simulated core made of one message on its deployments topic."""

    SUCCESS = "Success"
    FAILURE = "Failure"
    DUPLICATE = "Duplicates"
    #: The envelope did not verify: no status, as a real core.
    REFUSED = "Refused"
    #: No deployment id to answer: logged by a real core, counted here.
    REJECTED = "Rejected"


@dataclass(slots=True)
class Tally:
    """Counts of one process, or of all of them."""

    deployments: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {o.value: 0 for o in Outcome})

    def add(self, outcome: Outcome) -> None:
        """Count one message's outcome."""
        self.deployments += 1
        self.counts[outcome.value] += 1

    def as_dict(self) -> dict[str, int]:
        """The counts with their output names."""
        return {"Deployments": self.deployments, **self.counts}


class SimulatedCore:
    """One thing's deployment handling, as `edge.deploy.agent` does it, minus the work."""

    def __init__(
        self,
        thing_name: str,
        trusted: Mapping[str, Ed25519PublicKey],
        *,
        failure_rate: float,
        rng: random.Random,
    ) -> None:
        self.thing_name = thing_name
        self._trusted = trusted
        self._failure_rate = failure_rate
        self._rng = rng
        self._history: OrderedDict[str, bytes] = OrderedDict()

    def handle(self, payload: bytes) -> tuple[Outcome, list[bytes]]:
        """Answer one deployments-topic message: its outcome and the status documents to send."""
        try:
            # In this process, as a fleet of simulated cores is the control plane's tool.
            document = open_envelope(payload, self._trusted, thing_name=self.thing_name).document
        except SignatureError:
            return Outcome.REFUSED, []
        try:
            deployment = parse_deployment(document)
        except DeploymentInvalidError as exc:
            if exc.deployment_id is None:
                return Outcome.REJECTED, []
            failed = status_document(
                exc.deployment_id,
                "Unknown",
                DeploymentState.FAILURE,
                str(exc),
                code=type(exc).__name__,
            )
            return Outcome.FAILURE, [self._remember(exc.deployment_id, failed)]
        earlier = self._history.get(deployment.deployment_id)
        if earlier is not None:
            return Outcome.DUPLICATE, [earlier]
        kind = deployment.deployment_type.value
        started = status_document(deployment.deployment_id, kind, DeploymentState.IN_PROGRESS)
        if self._rng.random() < self._failure_rate:
            outcome = Outcome.FAILURE
            final = status_document(
                deployment.deployment_id,
                kind,
                DeploymentState.FAILURE,
                "simulated failure (edge cloud simulate-cores --failure-rate)",
                code=SIMULATED_FAILURE,
            )
        else:
            outcome = Outcome.SUCCESS
            final = status_document(deployment.deployment_id, kind, DeploymentState.SUCCESS)
        return outcome, [_encode(started), self._remember(deployment.deployment_id, final)]

    def _remember(self, deployment_id: str, status: dict[str, Any]) -> bytes:
        encoded = _encode(status)
        self._history[deployment_id] = encoded
        while len(self._history) > HISTORY_PER_CORE:
            self._history.popitem(last=False)
        return encoded


def _encode(status: dict[str, Any]) -> bytes:
    return json.dumps(status).encode()


@dataclass(frozen=True, slots=True)
class Simulation:
    """What every process of one `simulate-cores` run needs (picklable, for spawned processes)."""

    mqtt: MqttSettings
    trusted_keys: tuple[Path, ...]
    failure_rate: float
    #: Cores sharing one MQTT connection; None: all of a process's cores on one.
    cores_per_connection: int | None = None
    seed: int | None = None


def thing_names(*, count: int | None, prefix: str, names_file: Path | None) -> list[str]:
    """The simulated things: `prefix` + 0..count-1, or the names in a file (one a line).

    Raises:
        CloudUsageError: No names, a name repeated, or one a topic can't carry.
    """
    if names_file is not None:
        try:
            lines = names_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeError) as exc:
            raise CloudUsageError("--things-file", f"can't read {names_file}: {exc}") from None
        names = [line.strip() for line in lines if line.strip()]
        if count is not None:
            names = names[:count]
        option = "--things-file"
    else:
        names = [f"{prefix}{index}" for index in range(count or 0)]
        option = "--prefix"
    if not names:
        raise CloudUsageError("--count", "simulate at least one core")
    for name in names:
        if _FORBIDDEN_IN_NAMES & set(name):
            raise CloudUsageError(option, f"{name!r} can't be a thing name (/, +, # or newline)")
    if len(set(names)) != len(names):
        raise CloudUsageError(option, "a thing name is listed twice")
    return names


def _thing_of(topic: str, settings: MqttSettings) -> str | None:
    """The thing name of a deployments topic (None if the topic is not one)."""
    head, _, tail = settings.deployments_topic("\0").partition("\0")
    if not (topic.startswith(head) and topic.endswith(tail)):
        return None
    thing = topic[len(head) : len(topic) - len(tail)]
    return thing or None


async def run_share(
    sim: Simulation,
    things: Sequence[str],
    *,
    number: int,
    report: Callable[[str, dict[str, int]], None],
    stop: asyncio.Event,
) -> Tally:
    """Run one process's share of the cores until `stop` is set; report counts as they change.

    `report` gets ("ready", counts) once every connection has subscribed, then ("tally",
    counts) whenever they changed.
    """
    keys = {key_id(k): k for k in (load_public_key(path) for path in sim.trusted_keys)}
    rng = random.Random(None if sim.seed is None else sim.seed * 1000 + number)  # noqa: S311
    cores = {
        name: SimulatedCore(name, keys, failure_rate=sim.failure_rate, rng=rng) for name in things
    }
    tally = Tally()
    per = sim.cores_per_connection or len(things)
    groups = [list(things[start : start + per]) for start in range(0, len(things), per)]
    subscribed = [asyncio.Event() for _ in groups]
    running: list[asyncio.Task[None]] = []

    async def reporting() -> None:
        for event in subscribed:
            await event.wait()
        report("ready", tally.as_dict())
        last = tally.as_dict()
        while True:
            await asyncio.sleep(REPORT_SECONDS)
            if (current := tally.as_dict()) != last:
                report("tally", current)
                last = current

    async with asyncio.TaskGroup() as tasks:
        for index, group in enumerate(groups):
            share = {n: cores[n] for n in group}
            client_id = f"sim-{group[0]}-{number}"[:64]
            running.append(
                tasks.create_task(
                    _connection(sim.mqtt, share, tally, client_id, subscribed[index]),
                    name=f"simulate.connection.{index}",
                )
            )
        running.append(tasks.create_task(reporting(), name="simulate.report"))
        await stop.wait()
        for task in running:
            task.cancel()
    return tally


async def _connection(
    settings: MqttSettings,
    cores: dict[str, SimulatedCore],
    tally: Tally,
    client_id: str,
    subscribed: asyncio.Event,
) -> None:
    """One broker connection serving `cores`, reconnecting with backoff until cancelled."""
    delay = backoff_delays(0.5, settings.reconnect_max_seconds)
    topics = [(settings.deployments_topic(name), 1) for name in cores]
    client = aiomqtt.Client(
        settings.host,
        settings.port,
        identifier=client_id,
        clean_session=False,
        keepalive=settings.keepalive_seconds,
        tls_context=tls_context(settings),
        timeout=OPERATION_SECONDS,
    )
    # Statuses not yet acknowledged by the broker: sent again after a reconnection, as a real
    # core publishes what it produced while the broker was away.
    unsent: deque[tuple[str, bytes]] = deque()
    attempt = 0
    while True:
        try:
            async with client:
                for start in range(0, len(topics), TOPICS_PER_SUBSCRIBE):
                    chunk = topics[start : start + TOPICS_PER_SUBSCRIBE]
                    await client.subscribe(chunk, timeout=OPERATION_SECONDS)
                subscribed.set()
                attempt = 0
                wake = asyncio.Event()
                wake.set()
                # Statuses go out from a task of their own, so that the next deployment is
                # read while the broker acknowledges the last one's.
                flusher = asyncio.create_task(_flush(client, unsent, wake), name="simulate.flush")
                try:
                    async for message in client.messages:
                        core = cores.get(_thing_of(message.topic.value, settings) or "")
                        payload = message.payload
                        if core is None or not isinstance(payload, bytes | bytearray):
                            continue
                        outcome, statuses = core.handle(bytes(payload))
                        tally.add(outcome)
                        status_topic = settings.status_topic(core.thing_name)
                        unsent.extend((status_topic, status) for status in statuses)
                        wake.set()
                        if flusher.done():
                            raise aiomqtt.MqttError("publishing statuses failed")
                finally:
                    flusher.cancel()
                    await asyncio.gather(flusher, return_exceptions=True)
        except (aiomqtt.MqttError, OSError, TimeoutError):
            attempt += 1
            await asyncio.sleep(delay(attempt))


async def _flush(
    client: aiomqtt.Client, unsent: deque[tuple[str, bytes]], wake: asyncio.Event
) -> None:
    """Publish what waits, in order, several in flight; drop each once it is acknowledged."""
    while True:
        await wake.wait()
        wake.clear()
        while unsent:
            batch = list(unsent)
            results = await asyncio.gather(
                *(
                    client.publish(topic, status, qos=1, retain=True, timeout=OPERATION_SECONDS)
                    for topic, status in batch
                ),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    return  # the connection broke: what is left goes after the reconnection
                unsent.popleft()


def _child(
    sim: Simulation, things: list[str], number: int, conn: multiprocessing.connection.Connection
) -> None:
    """A spawned process: run its share until SIGTERM/SIGINT, then send its last counts."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tally = await run_share(
            sim, things, number=number, report=lambda kind, d: conn.send((kind, d)), stop=stop
        )
        conn.send(("done", tally.as_dict()))

    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        asyncio.run(main())


@dataclass(slots=True)
class _Share:
    """The parent's view of one process's share."""

    counts: dict[str, int] = field(default_factory=dict)
    ready: bool = False
    done: bool = False


class _Progress:
    """Aggregates the shares' counts and prints progress lines on stderr."""

    def __init__(self, shares: int, cores: int, connections: int, every: float) -> None:
        self.shares = [_Share() for _ in range(shares)]
        self._cores = cores
        self._connections = connections
        self._every = every
        self._began = time.monotonic()
        self._printed: dict[str, int] = {}
        self._next = 0.0
        self._announced = False

    def update(self, number: int, kind: str, counts: dict[str, int]) -> None:
        share = self.shares[number]
        share.counts = counts
        share.ready = share.ready or kind in {"ready", "tally", "done"}
        share.done = share.done or kind == "done"
        if not self._announced and all(s.ready for s in self.shares):
            self._announced = True
            _err(
                f"simulate-cores: {self._cores} cores ready on {self._connections} "
                f"connection(s) in {len(self.shares)} process(es)"
            )

    def total(self) -> dict[str, int]:
        keys = Tally().as_dict()
        return {k: sum(s.counts.get(k, 0) for s in self.shares) for k in keys}

    def tick(self, *, force: bool = False) -> None:
        now = time.monotonic()
        total = self.total()
        if (force or now >= self._next) and total != self._printed:
            self._next = now + self._every
            self._printed = total
            text = ", ".join(f"{k.lower()} {v}" for k, v in total.items())
            _err(f"simulate-cores: {now - self._began:.1f} s: {text}")


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


async def _supervise(
    sim: Simulation, shares: list[list[str]], progress: _Progress, stop: asyncio.Event
) -> None:
    """Run the shares: in this process when there is one, else one spawned process each."""
    if len(shares) == 1:
        await _run_inline(sim, shares[0], progress, stop)
    else:
        await _run_spawned(sim, shares, progress, stop)


async def _run_inline(
    sim: Simulation, things: list[str], progress: _Progress, stop: asyncio.Event
) -> None:
    def report(kind: str, counts: dict[str, int]) -> None:
        progress.update(0, kind, counts)

    async with asyncio.TaskGroup() as tasks:
        share = tasks.create_task(
            run_share(sim, things, number=0, report=report, stop=stop),
            name="simulate.share",
        )
        while not stop.is_set():
            progress.tick()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPORT_SECONDS):
                    await stop.wait()
    progress.update(0, "done", share.result().as_dict())


async def _run_spawned(
    sim: Simulation, shares: list[list[str]], progress: _Progress, stop: asyncio.Event
) -> None:
    ctx = multiprocessing.get_context("spawn")
    pipes: list[multiprocessing.connection.Connection] = []
    procs: list[Any] = []
    try:
        for number, things in enumerate(shares):
            mine, theirs = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_child, args=(sim, things, number, theirs), name=f"simulate-{number}"
            )
            proc.start()
            theirs.close()
            pipes.append(mine)
            procs.append(proc)
        while not stop.is_set():
            _drain(pipes, progress)
            if any(not p.is_alive() for p in procs):
                _err("simulate-cores: a process stopped unexpectedly; stopping")
                break
            progress.tick()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPORT_SECONDS):
                    await stop.wait()
    finally:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        while time.monotonic() < deadline and not all(
            s.done or not p.is_alive() for s, p in zip(progress.shares, procs, strict=True)
        ):
            _drain(pipes, progress)
            await asyncio.sleep(0.05)
        _drain(pipes, progress)
        for proc in procs:
            proc.join(timeout=0.5)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _drain(pipes: Iterable[multiprocessing.connection.Connection], progress: _Progress) -> None:
    for number, pipe in enumerate(pipes):
        with contextlib.suppress(EOFError, OSError):
            while pipe.poll():
                kind, counts = pipe.recv()
                progress.update(number, kind, counts)


def run(config: CloudConfig, args: argparse.Namespace) -> int:
    """Run the simulation until SIGINT/SIGTERM; print the counts as JSON on stdout."""
    if args.count is None and args.things_file is None:
        raise CloudUsageError("--count", "give --count N or --things-file")
    if args.count is not None and args.count < 1:
        raise CloudUsageError("--count", "simulate at least one core")
    if not 0.0 <= args.failure_rate <= 1.0:
        raise CloudUsageError("--failure-rate", "must be between 0 and 1")
    if args.processes < 1:
        raise CloudUsageError("--processes", "must be at least 1")
    if args.cores_per_connection is not None and args.cores_per_connection < 1:
        raise CloudUsageError("--cores-per-connection", "must be at least 1")
    names = thing_names(count=args.count, prefix=args.prefix, names_file=args.things_file)
    keys = tuple(args.trusted_key) or (config.cloud.public_key,)
    for path in keys:
        load_public_key(path)  # a missing or wrong key stops the run before any process starts
    sim = Simulation(
        mqtt=config.mqtt,
        trusted_keys=keys,
        failure_rate=args.failure_rate,
        cores_per_connection=1 if args.connection_per_core else args.cores_per_connection,
        seed=args.seed,
    )
    processes = min(args.processes, len(names))
    shares = [names[i::processes] for i in range(processes)]
    per = sim.cores_per_connection
    connections = sum(-(-len(share) // (per or len(share))) for share in shares)
    progress = _Progress(processes, len(names), connections, args.progress_seconds)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await _supervise(sim, shares, progress, stop)

    asyncio.run(main())
    progress.tick(force=True)
    sys.stdout.write(json.dumps({"Cores": len(names), **progress.total()}, indent=4) + "\n")
    sys.stdout.flush()
    return 0


__all__ = ["Outcome", "SimulatedCore", "Simulation", "Tally", "run"]
