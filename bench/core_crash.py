# SPDX-License-Identifier: Apache-2.0
"""Crash consistency of a whole core: SIGKILL `edge run` mid-deployment, again and again.

    .venv/bin/python bench/core_crash.py [--kills 200] [--seed 1] [--secrets 8] [--labels 2]
                                         [--delay-ms 20] [--keep]

One Mosquitto and one moto server (edge/fixtures/services.py) serve the whole run; with
`--delay-ms` above 0, bench/latency_proxy.py sits between the core and moto in a process of its
own, so that fetching takes as long as a round trip to a region would. The core is a real
`python -m edge run` with JSON logs, deployed unsigned by hand (edge/fixtures/core.Operator):
`--secrets` secrets with AWSCURRENT plus `--labels` additional staging labels each, and one
on-demand function (bench/functions/read_secrets.py with the unmodified greengrasssdk) granted
all of them. Each round:

 1. puts a new value under every (secret, label) in moto and publishes a new deployment;
 2. after a random delay, drawn so that kills land in each phase of a deployment (intake,
    fetch, rotation, status reporting, idle; phase lengths measured by --calibrate undisturbed
    rounds first), kills the core with SIGKILL;
 3. with the core dead, opens the store as `edge secrets list` does and checks that it is
    exactly the previous deployment's or exactly the new one's: deployment record, version ids
    and values of every pair, never a mix, never unreadable;
 4. restarts the core and invokes the function until it answers (recovery time: restart to
    serving); the values served must be one of the two stores;
 5. waits for the deployment's final status (Success after the journal or MQTT redelivery
    resumed it, or a Failure with a message); once it is final, the function must serve exactly
    the store that status implies;
 6. counts, from the core's JSON logs, how often each deployment completed (at most once) and
    whether an already rotated store was fetched and rotated again after the restart.

Where each kill landed is read from the killed core's last log events for that deployment
(deploy.started, fetch.complete, deploy.complete) and from the statuses the operator had
received at the kill. The summary prints kills, the phase histogram, old/new counts,
redeliveries, recovery times and violations; the exit status is 1 if there was any violation.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.cli_invoke import invoke_function
from edge.config import load_config
from edge.errors import EdgeError
from edge.secrets.contents import StoreContents
from edge.secrets.store import open_store

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
ACCOUNT = "123456789012"
THING = "crash-core"
READER_FILE = BENCH_DIR / "functions" / "read_secrets.py"
READER_ARN = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:read-secrets:1"
#: The phases a kill can land in, in the order a deployment goes through them.
PHASES = ("intake", "fetch", "rotate", "status", "idle")
#: How long a deployment may take to reach its final status after the restart.
FINAL_STATUS_TIMEOUT_SECONDS = 60.0
#: How long a restarted core may take to answer an invocation.
SERVE_TIMEOUT_SECONDS = 60.0
#: Each (secret, label) pair: (VersionId, SecretString).
Pairs = dict[tuple[str, str], tuple[str, str]]


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill delays")
    parser.add_argument("--secrets", type=int, default=8, help="secrets in the group")
    parser.add_argument(
        "--labels", type=int, default=2, help="additional staging labels per secret"
    )
    parser.add_argument(
        "--delay-ms", type=float, default=20.0, help="latency added to every call to moto (0: none)"
    )
    parser.add_argument(
        "--calibrate", type=int, default=3, help="undisturbed rounds that measure the phases"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    return parser.parse_args()


# --- the world: services, secrets, the core ---------------------------------------------------


def build_reader_package(path: Path) -> dict[str, str]:
    """Zip the reader with the unmodified greengrasssdk from site-packages; return its Code."""
    from edge.fixtures.reference import write_v1_package  # noqa: PLC0415

    data = write_v1_package(path, {READER_FILE.name: READER_FILE.read_bytes()})
    return {"Uri": path.as_uri(), "Sha256": hashlib.sha256(data).hexdigest()}


def write_core_config(path: Path, mqtt_url: str, endpoint_url: str) -> Path:
    """A core config as edge/fixtures/core.write_config's, logging at info level."""
    path.write_text(
        f'[core]\nthing_name = "{THING}"\nstate_dir = "state"\n\n'
        f'[mqtt]\nurl = "{mqtt_url}"\nreconnect_max_seconds = 1.0\nkeepalive_seconds = 5\n\n'
        f'[aws]\nregion = "us-east-1"\nendpoint_url = "{endpoint_url}"\n\n'
        '[log]\nlevel = "info"\nformat = "json"\n\n'
        "[deployments]\nallow_unsigned = true\n\n"
        # Its function packages are written next to it.
        '[workers]\nlocal_code_dirs = ["."]\n'
    )
    return path


@contextlib.contextmanager
def latency_proxy(upstream: str, delay_ms: float, log: Path) -> Iterator[str]:
    """bench/latency_proxy.py in a process of its own; yields its URL."""
    if delay_ms <= 0:
        yield upstream
        return
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(BENCH_DIR / "latency_proxy.py"),
                "--upstream",
                upstream,
                "--delay-ms",
                str(delay_ms),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None  # noqa: S101 - PIPE was asked for
        url = proc.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"latency proxy failed to start; see {log}")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class LogReader:
    """The core's JSON log, read incrementally (it is appended to across restarts)."""

    path: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0

    def refresh(self) -> list[dict[str, Any]]:
        """Read what was appended since last time; return every event so far."""
        if not self.path.exists():
            return self.events
        with self.path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        end = data.rfind(b"\n") + 1  # a line being written stays for next time
        self._offset += end
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    self.events.append(doc)
        return self.events


def event_time(event: dict[str, Any]) -> float:
    """The wall-clock time (epoch seconds) of a log event."""
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def pairs_of(contents: StoreContents, names: list[str], labels: list[str]) -> Pairs:
    """The (secret, label) -> (VersionId, value) pairs a store holds."""
    out: Pairs = {}
    by_name = {s.name: s for s in contents.secrets.values()}
    for name in names:
        secret = by_name.get(name)
        if secret is None:
            continue
        for label in labels:
            version = secret.version_for(label)
            if version is not None:
                out[name, label] = (version.version_id, str(version.secret_string))
    return out


@dataclass
class Stats:
    """What the run saw."""

    phases: collections.Counter[str] = field(default_factory=collections.Counter)
    store: collections.Counter[str] = field(default_factory=collections.Counter)
    outcome: collections.Counter[str] = field(default_factory=collections.Counter)
    recoveries: list[float] = field(default_factory=list)
    finals: list[float] = field(default_factory=list)
    inbox_resumed: int = 0
    duplicates: int = 0
    restarted_applies: int = 0
    mid_write: int = 0
    violations: list[str] = field(default_factory=list)


class World:
    """Mosquitto, moto (behind the proxy), the secrets, the operator and the core process."""

    def __init__(self, args: argparse.Namespace, root: Path, stack: contextlib.ExitStack) -> None:
        from edge.fixtures.core import CoreProcess, Operator, edge_cli  # noqa: PLC0415
        from edge.fixtures.services import (  # noqa: PLC0415
            run_mosquitto,
            run_moto,
        )

        self.root = root
        broker = stack.enter_context(run_mosquitto(root / "mosquitto"))
        moto = stack.enter_context(run_moto(root / "moto.log"))
        endpoint = stack.enter_context(latency_proxy(moto.url, args.delay_ms, root / "proxy.log"))
        self.sm = moto.client()
        self.names = [f"crash/secret-{i}" for i in range(args.secrets)]
        self.labels = ["AWSCURRENT", *(f"LABEL{i}" for i in range(1, args.labels + 1))]
        self.arns = [
            self.sm.create_secret(Name=name, SecretString=f"initial-{secrets.token_hex(8)}")["ARN"]
            for name in self.names
        ]
        self.config = write_core_config(root / "core.toml", broker.url, endpoint)
        init = edge_cli("init", "--config", str(self.config))
        if init.returncode != 0:
            raise RuntimeError(f"edge init failed: {init.stderr}")
        self.state_dir = root / "state"
        self.code = build_reader_package(root / "read_secrets.zip")
        self.core = CoreProcess(config=self.config, log_path=root / "core.log")
        self.log = LogReader(root / "core.log")
        self.operator = Operator(port=broker.port, prefix="edge", thing=THING)
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.expected: dict[str, Pairs] = {}
        stack.callback(self.close)

    def close(self) -> None:
        """Stop the core and the operator."""
        self.operator.close()
        if self.core.proc is not None:
            self.core.stop()

    def connect_operator(self) -> None:
        """Connect the operator; note when each status document arrives."""
        self.operator.connect()
        client = self.operator.client
        assert client is not None  # noqa: S101 - connected above

        def on_message(_c: object, _u: object, msg: Any) -> None:
            doc = json.loads(msg.payload)
            self.received.append((time.time(), doc))
            self.operator.statuses.put(doc)

        client.on_message = on_message

    def rotate_in_secrets_manager(self, round_no: int) -> Pairs:
        """Put a new value under every (secret, label); return what a deployment now gets."""
        pairs: Pairs = {}
        for name in self.names:
            for label in self.labels:
                value = f"r{round_no}-{label}-{secrets.token_hex(12)}"
                stages = {} if label == "AWSCURRENT" else {"VersionStages": [label]}
                resp = self.sm.put_secret_value(SecretId=name, SecretString=value, **stages)
                pairs[name, label] = (resp["VersionId"], value)
        return pairs

    def deploy(self, pairs: Pairs) -> tuple[str, float]:
        """Publish a deployment of the group; return its id and the wall time it went out."""
        from edge.fixtures.core import secret_resource  # noqa: PLC0415

        extra = self.labels[1:]
        resources = [
            secret_resource(f"res-{i}", arn, extra or None) for i, arn in enumerate(self.arns)
        ]
        function = {
            "Id": "read-secrets",
            "FunctionArn": READER_ARN,
            "FunctionConfiguration": {
                "Pinned": False,
                "MemorySize": 65536,
                "Timeout": 30,
                "Handler": "read_secrets.function_handler",
                "Code": self.code,
                "Environment": {
                    "Variables": {},
                    "ResourceAccessPolicies": [
                        {"ResourceId": r["Id"], "Permission": "ro"} for r in resources
                    ],
                },
            },
        }
        deployment_id = str(uuid.uuid4())
        self.expected[deployment_id] = pairs
        published = time.time()
        # CreatedAt must not be older than the applied deployment's (replay protection).
        self.operator.deploy(resources, functions=[function], deployment_id=deployment_id)
        return deployment_id, published

    def read_store(self) -> tuple[str | None, Pairs]:
        """Open the store as `edge secrets list` does (only while the core is down)."""
        contents = open_store(load_config(self.config)).load() or StoreContents()
        record = contents.deployment
        return (
            None if record is None else record.deployment_id,
            pairs_of(contents, self.names, self.labels),
        )

    def serve(self, timeout: float) -> Pairs:
        """Invoke the reader until the core answers; return what it served."""
        event = json.dumps({"SecretIds": self.names, "Labels": self.labels}).encode()
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                result = invoke_function(self.state_dir, READER_ARN, event)
            except (EdgeError, OSError) as exc:
                last = type(exc).__name__
                time.sleep(0.02)
                continue
            body = bytes(result.get("Payload") or b"")
            if result.get("FunctionError"):
                last = f"function error {result['FunctionError']}"
                time.sleep(0.02)
                continue
            answer = json.loads(body)
            return {
                (key.split("|")[0], key.split("|")[1]): (vid, value)
                for key, (vid, value) in answer.items()
            }
        raise TimeoutError(f"the core did not serve within {timeout:g} s (last: {last})")

    def which(self, pairs: Pairs, candidates: dict[str, str]) -> str | None:
        """Which candidate deployment ('old'/'new') the pairs are exactly; None for neither."""
        for tag, deployment_id in candidates.items():
            if self.expected.get(deployment_id) == pairs:
                return tag
        return None


# --- one round --------------------------------------------------------------------------------


def dep_events(events: list[dict[str, Any]], deployment_id: str) -> list[dict[str, Any]]:
    """The events logged about one deployment."""
    return [e for e in events if e.get("deployment_id") == deployment_id]


def phase_at_kill(
    events: list[dict[str, Any]], received: list[tuple[float, dict[str, Any]]], dep: str, t: float
) -> str:
    """Where the kill at wall time `t` landed, from the log and the statuses seen by then."""
    names = {e.get("event") for e in dep_events(events, dep)}
    if any(
        when <= t and doc.get("DeploymentId") == dep and doc.get("DeploymentStatus") == "Success"
        for when, doc in received
    ):
        return "idle"
    if "deploy.complete" in names or "deploy.failed" in names:
        return "status"
    if "fetch.complete" in names:
        return "rotate"
    if "deploy.started" in names or "fetch.started" in names:
        return "fetch"
    return "intake"


@dataclass
class Windows:
    """Median phase boundaries, in seconds after publishing, from undisturbed rounds."""

    started: float
    fetched: float
    completed: float
    reported: float

    def draw(self, rng: random.Random) -> float:
        """A kill delay: a phase chosen uniformly, then a uniform point inside it."""
        bounds = {
            "intake": (0.0, self.started),
            "fetch": (self.started, self.fetched),
            "rotate": (self.fetched, self.completed),
            "status": (self.completed, self.reported),
            "idle": (self.reported, self.reported + 0.3),
        }
        low, high = bounds[rng.choice(PHASES)]
        return rng.uniform(low, max(low, high))


def calibrate(world: World, rounds: int) -> tuple[Windows, str]:
    """Run undisturbed rounds, each right after a restart as in the loop; measure the phases."""
    samples: list[tuple[float, float, float, float]] = []
    dep = ""
    for round_no in range(1, rounds + 1):
        pairs = world.rotate_in_secrets_manager(-round_no)
        dep, published = world.deploy(pairs)
        status = world.operator.final_status(dep, timeout=FINAL_STATUS_TIMEOUT_SECONDS)
        if status["DeploymentStatus"] != "Success":
            raise RuntimeError(f"calibration deployment failed: {status.get('ErrorMessage')}")
        events = {e["event"]: event_time(e) for e in dep_events(world.log.refresh(), dep)}
        success = next(
            when
            for when, doc in world.received
            if doc.get("DeploymentId") == dep and doc.get("DeploymentStatus") == "Success"
        )
        samples.append(
            (
                events["deploy.started"] - published,
                events["fetch.complete"] - published,
                events["deploy.complete"] - published,
                success - published,
            )
        )
        # As in the loop: the next deployment meets a freshly started core.
        world.core.stop()
        world.core.start()
        world.serve(SERVE_TIMEOUT_SECONDS)
    medians = [statistics.median(s[i] for s in samples) for i in range(4)]
    return Windows(*medians), dep


@dataclass
class Round:
    """One kill: the deployment it interrupted and what was found."""

    number: int
    deployment_id: str
    #: The deployment the store held before this round (the "old" one).
    applied: str | None
    phase: str = ""
    #: "old" or "new": what the store was with the core dead.
    store: str = ""
    #: Log events before the restart (so that what the restarted core logged can be told apart).
    events_before: int = 0

    @property
    def candidates(self) -> dict[str, str]:
        """The two stores the core may hold."""
        return {"old": self.applied or "", "new": self.deployment_id}

    def fail(self, stats: Stats, what: str) -> None:
        """Record a violation."""
        stats.violations.append(f"kill {self.number} ({self.phase}): {what}")


def kill_mid_deployment(world: World, stats: Stats, rnd: Round, delay: float) -> None:
    """Publish the round's deployment, SIGKILL the core `delay` seconds later, classify."""
    pairs = world.rotate_in_secrets_manager(rnd.number)
    rnd.deployment_id, published = world.deploy(pairs)
    time.sleep(max(0.0, published + delay - time.time()))
    assert world.core.proc is not None  # noqa: S101 - running between rounds
    os.kill(world.core.proc.pid, signal.SIGKILL)
    killed_at = time.time()
    world.core.proc.wait()
    world.core.proc = None
    events = world.log.refresh()
    rnd.phase = phase_at_kill(events, world.received, rnd.deployment_id, killed_at)
    rnd.events_before = len(events)
    stats.phases[rnd.phase] += 1


def check_store(world: World, stats: Stats, rnd: Round) -> bool:
    """With the core dead: the store opens and is exactly the old or exactly the new one."""
    if any(".tmp-" in p.name for p in world.state_dir.iterdir()):
        stats.mid_write += 1
    if any((world.state_dir / "inbox").glob("*.msg")):
        stats.inbox_resumed += 1
    try:
        stored_id, stored = world.read_store()
    except EdgeError as exc:
        rnd.fail(stats, f"the store can't be opened: {exc}")
        return False
    tag = world.which(stored, rnd.candidates)
    if tag is None or rnd.candidates[tag] != (stored_id or ""):
        rnd.fail(
            stats,
            f"the store is neither the old nor the new deployment (record {stored_id}, "
            f"pairs match {tag})",
        )
        rnd.applied = stored_id
        return False
    rnd.store = tag
    stats.store[tag] += 1
    return True


def restart_and_settle(world: World, stats: Stats, rnd: Round) -> str | None:
    """Restart; the core serves, the deployment ends; return what the store now holds."""
    restarted = time.monotonic()
    world.core.start()
    try:
        served = world.serve(SERVE_TIMEOUT_SECONDS)
    except TimeoutError as exc:
        rnd.fail(stats, str(exc))
        return rnd.applied
    stats.recoveries.append(time.monotonic() - restarted)
    if world.which(served, rnd.candidates) is None:
        rnd.fail(stats, "the values served are neither the old nor the new ones")
    try:
        final = world.operator.final_status(rnd.deployment_id, timeout=FINAL_STATUS_TIMEOUT_SECONDS)
    except AssertionError:
        rnd.fail(
            stats,
            f"deployment {rnd.deployment_id} never reached a final status (the store held the "
            f"{rnd.store} one at the kill)",
        )
        return rnd.deployment_id if rnd.store == "new" else rnd.applied
    stats.finals.append(time.monotonic() - restarted)
    status = final["DeploymentStatus"]
    stats.outcome[status] += 1
    if status == "Failure" and not final.get("ErrorMessage"):
        rnd.fail(stats, "a Failure without an ErrorMessage")
    if status == "Failure" and rnd.store == "new":
        rnd.fail(stats, "a Failure, but the store already held the new deployment")
    now = rnd.deployment_id if status == "Success" else rnd.applied
    if world.which(world.serve(SERVE_TIMEOUT_SECONDS), {"final": now or ""}) is None:
        rnd.fail(stats, f"after {status}, the core serves another store than that status implies")
    return now


def count_applies(world: World, stats: Stats, rnd: Round) -> None:
    """Applied at most once: one deploy.complete, and no second rotation of a rotated store."""
    events = world.log.refresh()
    mine = dep_events(events, rnd.deployment_id)
    completes = sum(1 for e in mine if e.get("event") == "deploy.complete")
    stats.duplicates += sum(1 for e in mine if e.get("event") == "deploy.duplicate")
    after_restart = dep_events(events[rnd.events_before :], rnd.deployment_id)
    starts = sum(1 for e in after_restart if e.get("event") == "deploy.started")
    stats.restarted_applies += starts
    if completes > 1:
        rnd.fail(stats, f"deployment {rnd.deployment_id} completed {completes} times")
    if rnd.store == "new" and starts:
        rnd.fail(
            stats,
            f"the store already held deployment {rnd.deployment_id}, yet the restarted core "
            "fetched and rotated it again",
        )


def check_round(
    world: World, stats: Stats, number: int, applied: str | None, delay: float
) -> str | None:
    """Deploy, kill, check, restart, check; return the deployment the store now holds."""
    rnd = Round(number=number, deployment_id="", applied=applied)
    kill_mid_deployment(world, stats, rnd, delay)
    if not check_store(world, stats, rnd):
        world.core.start()
        return rnd.applied
    now = restart_and_settle(world, stats, rnd)
    count_applies(world, stats, rnd)
    return now


def report(args: argparse.Namespace, stats: Stats, windows: Windows, elapsed: float) -> None:
    """Print the summary."""
    kills = sum(stats.phases.values())
    print(
        f"\n{kills} SIGKILLs of `edge run` in {elapsed:.0f} s ({args.secrets} secrets x "
        f"{args.labels + 1} labels, +{args.delay_ms:g} ms per call to moto, seed {args.seed})"
    )
    print(
        "phase windows after publishing (median of the calibration rounds): "
        f"started {windows.started * 1000:.0f} ms, fetched {windows.fetched * 1000:.0f} ms, "
        f"completed {windows.completed * 1000:.0f} ms, "
        f"Success seen {windows.reported * 1000:.0f} ms"
    )
    print("where the kills landed: " + ", ".join(f"{p} {stats.phases[p]}" for p in PHASES))
    print(
        f"store at each kill: old {stats.store['old']}, new {stats.store['new']} "
        f"({stats.mid_write} with a new store file being written)"
    )
    print(
        f"final statuses: Success {stats.outcome['Success']}, Failure {stats.outcome['Failure']}; "
        f"resumed from the inbox after a restart {stats.inbox_resumed}, re-applied after a "
        f"restart {stats.restarted_applies}, answered as duplicates {stats.duplicates}"
    )
    if stats.recoveries:
        rec = sorted(stats.recoveries)
        fin = sorted(stats.finals) or [0.0]
        print(
            f"recovery (restart -> serving an invocation): median {statistics.median(rec):.2f} s, "
            f"max {rec[-1]:.2f} s; restart -> final status: median "
            f"{statistics.median(fin):.2f} s, max {fin[-1]:.2f} s"
        )
    print(f"violations: {len(stats.violations)}")
    for line in stats.violations[:20]:
        print(f"  - {line}")


def main() -> int:
    """Run the calibration, then `--kills` rounds; print the summary."""
    args = parse_args()
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        raise SystemExit("needs Mosquitto (apt-get install mosquitto)")
    rng = random.Random(args.seed)  # noqa: S311 - reproducible timing, not cryptography
    root = Path(tempfile.mkdtemp(prefix="edge-core-crash-"))
    stats = Stats()
    try:
        with contextlib.ExitStack() as stack:
            world = World(args, root, stack)
            world.core.start()
            world.core.wait_for_event("mqtt.connected", timeout=30)
            world.connect_operator()
            windows, last = calibrate(world, max(1, args.calibrate))
            applied: str | None = last
            print(
                f"calibrated: started {windows.started * 1000:.0f} ms, fetched "
                f"{windows.fetched * 1000:.0f} ms, completed {windows.completed * 1000:.0f} ms, "
                f"Success seen {windows.reported * 1000:.0f} ms after publishing",
                file=sys.stderr,
            )
            started = time.monotonic()
            for kill_no in range(1, args.kills + 1):
                applied = check_round(world, stats, kill_no, applied, windows.draw(rng))
                if kill_no % 10 == 0 or kill_no == args.kills:
                    print(
                        f"{kill_no}/{args.kills} kills, {time.monotonic() - started:.0f} s, "
                        f"violations {len(stats.violations)}",
                        file=sys.stderr,
                    )
            report(args, stats, windows, time.monotonic() - started)
    finally:
        if args.keep or stats.violations:
            print(f"work directory (core.log, mosquitto/, moto.log): {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if stats.violations else 0


if __name__ == "__main__":
    sys.exit(main())
