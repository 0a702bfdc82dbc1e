"""Broker faults, proven against a running `edge run` core and a real Mosquitto.

The broker is stopped in the middle of a deployment and at rest, the core is killed in the
middle of one, and all of it again through a TLS listener that requires client certificates
(made by tests/support/tls.py). What a user must be able to count on, each time: the core keeps
serving what it has, reconnects and resubscribes, applies each deployment exactly once, and the
final status reaches the broker (retained) once it is back.

Secrets Manager is moto behind bench/latency_proxy.py with a delay on every call, so that a
deployment stays in flight long enough to pull the broker out from under it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from edge.fixtures.core import (
    CoreProcess,
    Operator,
    edge_cli,
    secret_resource,
    write_config,
)
from edge.fixtures.services import Mosquitto, MotoServer, free_port, wait_for_port
from tests.support import REPO, faults
from tests.support.env import Env
from tests.support.tls import (
    LoggingMosquitto,
    Pki,
    TlsMosquitto,
    make_pki,
    run_logging_mosquitto,
    run_tls_mosquitto,
)

pytestmark = pytest.mark.network

#: Every Secrets Manager call waits this long: a one-secret deployment is in flight ~2.5 s.
FETCH_DELAY_MS = 2500
#: The longest one refused connect attempt may take: the CONNACK timeout in edge/mqtt/link.py,
#: reached only when the broker's refusal never arrives (it ends the attempt at once).
REFUSED_ATTEMPT_SECONDS = 10
READER = "broker-faults-reader"


# --- the world of one test ---------------------------------------------------------------------


@dataclass(frozen=True)
class SlowSecretsManager:
    """moto, and the proxy's URL in front of it."""

    moto: MotoServer
    url: str


@pytest.fixture
def slow_sm(moto: MotoServer, tmp_path: Path) -> Iterator[SlowSecretsManager]:
    """Moto behind a loopback latency proxy (bench/latency_proxy.py) that delays every call."""
    port = free_port()
    with (tmp_path / "proxy.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "bench" / "latency_proxy.py"),
                "--upstream",
                moto.url,
                "--delay-ms",
                str(FETCH_DELAY_MS),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        wait_for_port(port)
        yield SlowSecretsManager(moto=moto, url=f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(10)


def tls_settings(pki: Pki, *, cert: bool = True, other: Pki | None = None) -> str:
    """The [mqtt] lines of a core: trust the test CA; present a client cert (maybe another CA's)."""
    lines = f'ca_file = "{pki.ca.cert}"\n'
    issued = (other or pki).client
    if cert:
        lines += f'cert_file = "{issued.cert}"\nkey_file = "{issued.key}"\n'
    return lines


def make_env(
    root: Path,
    *,
    broker: Mosquitto,
    moto: MotoServer,
    sm: Any,
    endpoint_url: str,
    mqtt: str = "",
    operator_tls: Pki | None = None,
) -> Env:
    """An initialised (not yet running) core on `broker`, fetching from `endpoint_url`."""
    root.mkdir(parents=True, exist_ok=True)
    thing = f"core-{uuid.uuid4().hex[:8]}"
    config = write_config(
        root / "core.toml",
        thing_name=thing,
        mqtt_url=broker.url,
        endpoint_url=endpoint_url,
        mqtt=mqtt,
        local_code_dirs=(root.parent,),  # the tests build their packages beside `root`
    )
    init = edge_cli("init", "--config", str(config))
    assert init.returncode == 0, init.stderr
    tls = operator_tls.client_context() if operator_tls else None
    return Env(
        root=root,
        broker=broker,
        moto=moto,
        sm=sm,
        config=config,
        core=CoreProcess(config=config, log_path=root / "core.log"),
        operator=Operator(port=broker.port, prefix="edge", thing=thing, tls=tls),
    )


@contextlib.contextmanager
def running(env: Env) -> Iterator[Env]:
    """Run the core (connected) and the operator; afterwards check nothing crashed or leaked."""
    env.core.start()
    env.core.wait_for_event("mqtt.connected")
    env.operator.connect()
    try:
        yield env
    finally:
        env.operator.close()
        if env.core.proc is not None:
            assert env.core.stop() == 0
    assert "Traceback" not in env.core.log_text()
    output = env.all_output()
    for value in env.values:
        assert value not in output, "a secret value leaked into the logs"


@pytest.fixture
def logging_broker(tmp_path: Path) -> Iterator[LoggingMosquitto]:
    """A plain Mosquitto that persists its state and logs every packet it receives."""
    with run_logging_mosquitto(tmp_path / "mosquitto-plain") as broker:
        yield broker


@pytest.fixture
def slow_env(
    logging_broker: LoggingMosquitto, tmp_path: Path, sm: Any, slow_sm: SlowSecretsManager
) -> Iterator[Env]:
    """A running core on a plain broker, whose Secrets Manager answers slowly."""
    env = make_env(
        tmp_path / "core",
        broker=logging_broker,
        moto=slow_sm.moto,
        sm=sm,
        endpoint_url=slow_sm.url,
    )
    with running(env):
        yield env


@pytest.fixture
def fast_env(
    logging_broker: LoggingMosquitto, tmp_path: Path, moto: MotoServer, sm: Any
) -> Iterator[Env]:
    """A running core on a plain broker, fetching from moto directly."""
    env = make_env(
        tmp_path / "core", broker=logging_broker, moto=moto, sm=sm, endpoint_url=moto.url
    )
    with running(env):
        yield env


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made for this test."""
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[TlsMosquitto]:
    """Mosquitto with one TLS listener that requires a client certificate from `pki`'s CA."""
    with run_tls_mosquitto(tmp_path / "mosquitto-tls", pki) as broker:
        yield broker


# --- what the operator sees --------------------------------------------------------------------


def settled(env: Env) -> str:
    """Deploy nothing and wait for its Success: the core has moved past all that came before.

    The core applies deployments one after the other and sends every status through one
    first-in, first-out outbox; a repeated status or a second application of an earlier
    deployment would have reached the operator and the core's log before this Success.
    Returns the marker deployment's DeploymentId.
    """
    marker = env.operator.deploy([])
    assert env.operator.final_status(marker, timeout=30)["DeploymentStatus"] == "Success"
    return marker


def statuses_of(env: Env, deployment_id: str) -> list[str]:
    """Every DeploymentStatus the operator received for a deployment so far."""
    while not env.operator.statuses.empty():
        env.operator.seen.append(env.operator.statuses.get_nowait())
    return [
        doc["DeploymentStatus"]
        for doc in env.operator.seen
        if doc.get("DeploymentId") == deployment_id
    ]


def retained_status(env: Env) -> dict[str, Any]:
    """The status document a newcomer gets on subscribing: only a retained message arrives so.

    A message published after subscribing comes after everything the subscription brought,
    so whatever arrives before it is what a newcomer got.
    """
    received = env.operator.subscribe(env.operator.status_topic)
    sentinel = {"DeploymentId": f"sentinel-{uuid.uuid4().hex[:8]}", "DeploymentStatus": "-"}
    env.operator.publish(env.operator.status_topic, sentinel)  # not retained
    before = []
    while (doc := received.get(timeout=10)[1]) != sentinel:
        before.append(doc)
    assert len(before) == 1, f"not just the retained message for a newcomer: {before}"
    assert isinstance(before[0], dict)
    return before[0]


def unread_by_broker(broker: Mosquitto) -> int:
    """Bytes clients sent the broker that it has not read (a hung broker's socket fills up)."""
    unread = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        _, local, _, state, queues, *_ = line.split()
        if int(local.split(":")[1], 16) == broker.port and state == "01":  # 01: established
            unread += int(queues.split(":")[1], 16)
    return unread


def applied_once(env: Env, deployment_id: str) -> None:
    """The core fetched and applied the deployment exactly once."""
    events = env.core.events()

    def count(name: str) -> int:
        return sum(
            1 for e in events if e.get("event") == name and e.get("deployment_id") == deployment_id
        )

    assert count("fetch.started") == 1
    assert count("deploy.complete") == 1
    assert count("deploy.failed") == 0


def outage_during_deployment(env: Env) -> tuple[str, str]:
    """Deploy one secret; stop the broker once the fetch runs; start it again after the outage.

    Returns the DeploymentId and the secret's AWSCURRENT VersionId.
    """
    arn, version, _ = env.create_secret(f"outage-{uuid.uuid4().hex[:6]}")
    dep = env.operator.deploy([secret_resource("db", arn)])
    env.core.wait_for_event("fetch.started", deployment_id=dep)
    # InProgress reached the broker; from here on only the Success is left to send.
    env.operator.wait_status(dep, "InProgress")
    env.operator.close()
    env.broker.stop()
    env.core.wait_for_event("mqtt.disconnected")
    # The deployment goes on without the broker: the store rotates while it is away, and the
    # Success status can only wait in the outbox, through at least one failed reconnect.
    env.core.wait_for_event("deploy.complete", deployment_id=dep, timeout=15)
    assert env.core.count("mqtt.connected") == 1
    failed = env.core.count("mqtt.disconnected")
    env.core.wait_for_event("mqtt.disconnected", after=failed, timeout=15)
    env.broker.start()
    env.core.wait_for_event("mqtt.connected", after=1, timeout=15)
    env.operator.connect()
    return dep, version


# --- 1. the broker goes away during a deployment -----------------------------------------------


def test_broker_outage_during_a_deployment_neither_loses_nor_repeats_it(slow_env: Env) -> None:
    """The deployment completes while the broker is down; its Success arrives once, retained."""
    env = slow_env
    dep, version = outage_during_deployment(env)

    assert env.operator.wait_status(dep, "Success", timeout=15)
    assert retained_status(env) == env.operator.wait_status(dep, "Success")
    listing = env.listing()
    assert listing["Deployment"]["DeploymentId"] == dep
    assert listing["Secrets"][0]["StagingLabels"] == {"AWSCURRENT": version}

    marker = settled(env)
    assert statuses_of(env, dep).count("Success") == 1
    # InProgress went out before the outage; only the Success waited for the broker (once).
    assert isinstance(env.broker, LoggingMosquitto)
    status_topic = env.operator.status_topic
    core_id = f"edge-core-{env.operator.thing}"
    marker_statuses = len(statuses_of(env, marker))
    assert env.broker.publishes_received(core_id, status_topic) == 1 + marker_statuses
    applied_once(env, dep)


def test_broker_dying_with_the_final_status_in_flight_gets_it_once(slow_env: Env) -> None:
    """A broker that hangs, then dies, while the Success is on its way gets it once on return.

    The status was sent but never acknowledged, so the core must send it again, and only once:
    an operator watching the topic sees one Success, not one per retry mechanism.
    """
    env = slow_env
    broker = env.broker
    assert isinstance(broker, LoggingMosquitto)
    assert broker.proc is not None
    arn, version, _ = env.create_secret("in-flight")
    dep = env.operator.deploy([secret_resource("db", arn)])
    env.operator.wait_status(dep, "InProgress")
    env.operator.close()
    broker.proc.send_signal(signal.SIGSTOP)  # hung: takes bytes, answers nothing
    env.core.wait_for_event("deploy.complete", deployment_id=dep, timeout=15)
    status_topic = env.operator.status_topic
    # The Success is written to the hung broker's socket (more than a PINGREQ's two bytes).
    deadline = time.monotonic() + 10
    while unread_by_broker(broker) <= len(status_topic):
        assert time.monotonic() < deadline, "the Success never reached the hung broker's socket"
        time.sleep(0.05)
    broker.kill()
    env.core.wait_for_event("mqtt.disconnected")
    broker.start()
    env.core.wait_for_event("mqtt.connected", after=1, timeout=15)
    env.operator.connect()
    assert env.operator.wait_status(dep, "Success", timeout=15)
    assert retained_status(env)["DeploymentStatus"] == "Success"
    assert env.listing()["Secrets"][0]["StagingLabels"] == {"AWSCURRENT": version}

    marker = settled(env)
    core_id = f"edge-core-{env.operator.thing}"
    marker_statuses = len(statuses_of(env, marker))
    assert broker.publishes_received(core_id, status_topic) == 1 + marker_statuses
    assert statuses_of(env, dep).count("Success") == 1
    applied_once(env, dep)


# --- 2. the broker goes away while nothing happens ---------------------------------------------


def reader_function(code_zip: Path, resource_ids: list[str]) -> dict[str, Any]:
    """A V1 function (tests/integration/functions/app.py) allowed to read the given resources."""
    return faults.reader_function(code_zip, resource_ids, name=READER)


def read_through_core(env: Env, secret_id: str) -> dict[str, Any]:
    """The reader function asks the running core for a secret (greengrasssdk, IPC socket)."""
    return faults.read_through_ipc(env, secret_id, name=READER)


def test_broker_down_at_rest_core_serves_then_resubscribes_and_deploys(
    fast_env: Env, tmp_path: Path
) -> None:
    """Broker away: functions still read secrets; back, the next deployment applies once.

    The broker comes back with no memory of the core (no session, no subscription): only the
    core subscribing again can bring it the next deployment.
    """
    env = fast_env
    arn, version, value = env.create_secret("at-rest")
    function = reader_function(tmp_path / "reader.zip", ["db"])
    first = env.operator.deploy([secret_resource("db", arn)], functions=[function])
    assert env.operator.final_status(first)["DeploymentStatus"] == "Success"

    env.operator.close()
    env.broker.stop()
    # A broker that lost its state: only a SUBSCRIBE from the core can bring deployments back.
    (env.broker.workdir / "mosquitto.db").unlink(missing_ok=True)
    env.core.wait_for_event("mqtt.disconnected")
    answer = read_through_core(env, "at-rest")
    assert (answer["VersionId"], answer["SecretString"]) == (version, value)
    assert env.listing()["Deployment"]["DeploymentId"] == first
    # A while, with reconnect attempts failing all along: two more of them.
    env.core.wait_for_event("mqtt.disconnected", after=2, timeout=15)
    assert env.core.proc is not None
    assert env.core.proc.poll() is None
    assert read_through_core(env, arn)["VersionId"] == version

    env.broker.start()
    connected = env.core.wait_for_event("mqtt.connected", after=1, timeout=15)
    assert connected["subscriptions"] == [env.operator.deployments_topic]
    env.operator.connect()
    new_version = env.sm.put_secret_value(SecretId=arn, SecretString=f"{value}-2")["VersionId"]
    env.values.append(f"{value}-2")
    second = env.operator.deploy([secret_resource("db", arn)], functions=[function])
    assert env.operator.final_status(second, timeout=20)["DeploymentStatus"] == "Success"
    assert read_through_core(env, "at-rest")["VersionId"] == new_version
    settled(env)
    assert statuses_of(env, second).count("Success") == 1
    applied_once(env, second)


# --- 3. the core goes away while the broker stays ----------------------------------------------


def test_core_killed_mid_deployment_then_sent_another_applies_each_once(slow_env: Env) -> None:
    """A core killed mid-deployment, sent another while down, applies both once, in order.

    The first deployment was acknowledged but not applied: it is finished from the core's inbox.
    The second was published (QoS 1) while the core was gone: the broker's persistent session
    delivers it. (test_core.py covers a core stopped cleanly before a deployment is published;
    this is a core dying with a deployment acknowledged but not applied, no DISCONNECT sent.)
    """
    env = slow_env
    arn, _, _ = env.create_secret("killed")
    first = env.operator.deploy([secret_resource("db", arn)])
    env.core.wait_for_event("fetch.started", deployment_id=first)
    assert env.core.stop(signal.SIGKILL) == -signal.SIGKILL
    version = env.sm.put_secret_value(SecretId=arn, SecretString="killed-2")["VersionId"]
    env.values.append("killed-2")
    second = env.operator.deploy([secret_resource("db", arn)])

    env.core.start()
    assert env.operator.final_status(first, timeout=20)["DeploymentStatus"] == "Success"
    assert env.operator.final_status(second, timeout=20)["DeploymentStatus"] == "Success"
    listing = env.listing()
    assert listing["Deployment"]["DeploymentId"] == second
    assert listing["Secrets"][0]["StagingLabels"] == {"AWSCURRENT": version}
    marker = settled(env)
    assert statuses_of(env, second).count("Success") == 1
    assert statuses_of(env, first).count("Success") == 1
    completed = [e["deployment_id"] for e in env.core.events() if e["event"] == "deploy.complete"]
    assert completed == [first, second, marker]
    assert env.core.count("deploy.duplicate") == 0
    assert not list((env.state_dir / "inbox").iterdir()), "a document stayed in the inbox"


# --- 4. the same through TLS with client certificates ------------------------------------------


def test_tls_deployment_survives_a_broker_restart(
    tmp_path: Path, tls_broker: TlsMosquitto, pki: Pki, sm: Any, slow_sm: SlowSecretsManager
) -> None:
    """Over mqtts:// with a client cert, a broker restart mid-deployment is survived.

    The deployment succeeds, its Success is retained, and it is applied once.
    """
    env = make_env(
        tmp_path / "core",
        broker=tls_broker,
        moto=slow_sm.moto,
        sm=sm,
        endpoint_url=slow_sm.url,
        mqtt=tls_settings(pki),
        operator_tls=pki,
    )
    with running(env):
        assert env.core.wait_for_event("mqtt.connected")["url"].startswith("mqtts://")
        dep, version = outage_during_deployment(env)
        assert env.operator.wait_status(dep, "Success", timeout=15)
        assert retained_status(env)["DeploymentId"] == dep
        assert env.listing()["Secrets"][0]["StagingLabels"] == {"AWSCURRENT": version}
        core_id = f"edge-core-{env.operator.thing}"
        status_topic = env.operator.status_topic
        marker = settled(env)
        assert statuses_of(env, dep).count("Success") == 1
        marker_statuses = len(statuses_of(env, marker))
        assert tls_broker.publishes_received(core_id, status_topic) == 1 + marker_statuses
        applied_once(env, dep)
    assert tls_broker.log_text().count(f"as edge-core-{env.operator.thing}") >= 2


def test_tls_refuses_cores_without_a_certificate_from_its_ca(
    tmp_path: Path, tls_broker: TlsMosquitto, pki: Pki, moto: MotoServer, sm: Any
) -> None:
    """Cores without a client certificate from the broker's CA are refused, and say why.

    One has no certificate, one has a certificate another CA issued: each logs what the broker
    said and what to set, keeps trying, and neither crashes.
    """
    other = make_pki(tmp_path / "other-pki", name="other")
    common = {"broker": tls_broker, "moto": moto, "sm": sm, "endpoint_url": moto.url}
    without = make_env(tmp_path / "no-cert", mqtt=tls_settings(pki, cert=False), **common)
    foreign = make_env(tmp_path / "other-ca", mqtt=tls_settings(pki, other=other), **common)
    cores = {"certificate required": without.core, "unknown ca": foreign.core}
    for core in cores.values():
        core.start()
    try:
        for alert, core in cores.items():
            # Under load an attempt may time out before the broker's alert arrives (an EOF
            # instead); the core tries again, and one of its first attempts must say why.
            errors = []
            for attempt in range(3):
                refused = core.wait_for_event(
                    "mqtt.disconnected", timeout=2 * REFUSED_ATTEMPT_SECONDS + 10, after=attempt
                )
                errors.append(refused["error"].lower())
                if alert in errors[-1]:
                    break
            assert alert in errors[-1], errors
            assert "[mqtt] cert_file" in refused["fix"]
        # And they try again: the broker refuses each handshake at least twice.
        broker_says = ("peer did not return a certificate", "certificate verify failed")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            tls_broker.log_text().count(refusal) < 2 for refusal in broker_says
        ):
            time.sleep(0.1)
        assert all(tls_broker.log_text().count(refusal) >= 2 for refusal in broker_says)
        for core in cores.values():
            assert core.proc is not None
            assert core.proc.poll() is None
            assert core.count("mqtt.connected") == 0
    finally:
        codes = [core.stop() for core in cores.values()]
    assert codes == [0, 0]
    for core in cores.values():
        assert "Traceback" not in core.log_text()


def _when(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def test_tls_refusal_gives_the_fix_at_once_and_retries_within_the_cap(
    tmp_path: Path, tls_broker: TlsMosquitto, pki: Pki, moto: MotoServer, sm: Any
) -> None:
    """The broker's first refusal is logged with the fix; attempts follow the capped backoff.

    A refused attempt ends when the broker's alert arrives, not at the CONNACK timeout, so the
    core tries again after its backoff, at most `reconnect_max_seconds`.
    """
    env = make_env(
        tmp_path / "no-cert",
        broker=tls_broker,
        moto=moto,
        sm=sm,
        endpoint_url=moto.url,
        mqtt=tls_settings(pki, cert=False),
    )
    cap = load_config(env.config).mqtt.reconnect_max_seconds
    env.core.start()
    try:
        refusals = [
            env.core.wait_for_event(
                "mqtt.disconnected", after=n, timeout=REFUSED_ATTEMPT_SECONDS + 5
            )
            for n in range(4)
        ]
        said = [e for e in env.core.events() if "certificate required" in str(e.get("message"))]
        assert said, "paho never logged the broker's alert"
        assert "[mqtt] cert_file and key_file" in said[0]["fix"]
        assert _when(said[0]) <= _when(refusals[0]) + REFUSED_ATTEMPT_SECONDS
        assert any("certificate required" in e["error"] for e in refusals), refusals
        for refusal in refusals:
            assert "[mqtt] cert_file" in refusal["fix"]
            assert refusal["retry_in"] <= cap
        for before, after in itertools.pairwise(refusals):
            # The next refusal: the backoff, then one TLS handshake on loopback, well under
            # the CONNACK timeout a refused attempt would otherwise wait out.
            assert _when(after) - _when(before) - before["retry_in"] < REFUSED_ATTEMPT_SECONDS / 2
        assert env.core.count("mqtt.connected") == 0
    finally:
        assert env.core.stop() == 0


def test_tls_key_file_others_can_read_is_refused_with_the_fix(
    tmp_path: Path, tls_broker: TlsMosquitto, pki: Pki, moto: MotoServer, sm: Any
) -> None:
    """`edge run` refuses a client key readable by others and prints the chmod that fixes it."""
    env = make_env(
        tmp_path / "core",
        broker=tls_broker,
        moto=moto,
        sm=sm,
        endpoint_url=moto.url,
        mqtt=tls_settings(pki),
    )
    os.chmod(pki.client.key, 0o640)
    result = edge_cli("run", "--config", str(env.config), timeout=30)
    assert result.returncode == 2
    assert f"chmod 0600 {pki.client.key}" in result.stderr
    assert "Traceback" not in result.stderr
