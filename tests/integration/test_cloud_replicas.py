"""Two `edge cloud serve` replicas on one PostgreSQL database: the outbox, shared statuses.

Real parts: PostgreSQL, Mosquitto 2 (MQTT v5 shared subscriptions), moto, two `serve`
processes with one signing key, `edge cloud simulate-cores`, and a real core.
"""

from __future__ import annotations

import json
import queue
import secrets
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.cloud import definitions
from edge.cloud import groups as cloud_groups
from edge.cloud.config import load_cloud_config
from edge.cloud.db import open_database
from edge.cloud.ids import Arns, precise_timestamp
from edge.cloud.keys import init_signing_key
from edge.fixtures.core import CoreProcess, edge_cli, write_config
from edge.fixtures.services import TEST_REGION, Mosquitto, MotoServer, free_port
from tests.integration.test_cloud import write_cloud_config
from tests.integration.test_cloud_bulk import core_version, launch, make_group
from tests.integration.test_cloud_serve import (
    KEY_ID,
    NO_RETRIES,
    ServeProcess,
    write_serve_config,
)
from tests.integration.test_cloud_simulate import ControlPlane

pytestmark = pytest.mark.network

SIMULATED = 5
#: Short, so a replica killed holding claims delays its rows by this much only.
REPLICA_SETTINGS = "outbox_lease_seconds = 2\noutbox_poll_seconds = 0.2\n"
#: Frequent re-reads of unfinished deployments' retained reports, once they are 3 s old: by
#: then their cores have reported, and what a re-read brings is their retained reports.
REREAD = "status_reread_seconds = 0.5\nstatus_reread_after_seconds = 3\n"
#: Replica a's pace: one publish, then one every ten seconds, so that a SIGKILL right after
#: its answers leaves the rest of its deployments in the outbox, claimed, for b to take over.
SLOW = "publish_rate = 0.1\npublish_burst = 1\n"
#: A pace for a drain killed mid-batch: three at once, then two a second, so a SIGKILL after
#: the fourth acknowledgement leaves rows claimed and queued, some perhaps sent and not removed.
STEADY = "publish_rate = 2\npublish_burst = 3\n"


@dataclass
class Replica:
    config: Path
    root: Path
    port: int
    service: ServeProcess | None = None
    #: Waits until the process `launch` started listens.
    until_listening: Callable[[], object] | None = None

    def start(self) -> None:
        self.launch()
        self.listening()

    def launch(self) -> None:
        """Start its process; `listening` waits for it (replicas started together boot at once)."""
        self.root.mkdir(exist_ok=True)
        if self.service is None:
            self.service = ServeProcess(config=self.config, log_path=self.root / "serve.log")
        self.until_listening = launch(self.service)

    def listening(self) -> None:
        assert self.until_listening is not None
        self.until_listening()

    def client(self, secret: str) -> Any:
        return boto3.client(
            "greengrass",
            region_name=TEST_REGION,
            endpoint_url=f"http://127.0.0.1:{self.port}",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=secret,
            config=NO_RETRIES,
        )

    def published(self) -> int:
        assert self.service is not None
        return self.service.count("cloud.deployment.published")


@dataclass
class Replicas:
    plane: ControlPlane
    a: Replica
    b: Replica
    secret: str


@pytest.fixture
def replicas(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    broker: Mosquitto,
    moto: MotoServer,
    postgres_url: str,
) -> Iterator[Replicas]:
    """Two replicas' configs on one database and signing key, initialised, not started.

    Replica a publishes at the pace the test asks for (indirect parameter; `SLOW` unless).
    """
    slow = getattr(request, "param", SLOW)
    base = write_serve_config(tmp_path, broker=broker, moto=moto, port=0, database=postgres_url)
    template = base.read_text()
    template = template.replace("[cloud]\n", "[cloud]\n" + REPLICA_SETTINGS, 1)
    template = template.replace("[mqtt]\n", '[mqtt]\nshared_subscription_group = "edge"\n', 1)
    configs = []
    for name, pace in (("a", slow), ("b", "")):
        port = free_port()
        path = tmp_path / f"cloud-{name}.toml"
        text = template.replace("127.0.0.1:0", f"127.0.0.1:{port}")
        path.write_text(text.replace("[mqtt]\n", "[mqtt]\n" + pace, 1))
        configs.append(Replica(path, tmp_path / name, port))
    secret = secrets.token_urlsafe(30)
    (tmp_path / "operator.secret").write_text(secret + "\n")
    (tmp_path / "operator.secret").chmod(0o600)
    _init(configs[0].config)
    plane = ControlPlane(configs[0].config, broker)
    env = Replicas(plane, configs[0], configs[1], secret)
    yield env
    for fleet in plane.fleets:
        fleet.kill()
    for replica in (env.a, env.b):
        if replica.service is not None and replica.service.proc is not None:
            replica.service.stop(signal.SIGKILL)


def _init(config: Path) -> None:
    """What `edge cloud init` does, without a command's start: the signing key, the schema."""
    loaded = load_cloud_config(config)
    init_signing_key(loaded.cloud.signing_key, loaded.cloud.public_key)
    open_database(loaded).close()


def _wait_until(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.2)


def _statuses(client: Any, deployments: dict[str, str]) -> list[str]:
    return [
        client.get_deployment_status(GroupId=g, DeploymentId=d)["DeploymentStatus"]
        for g, d in deployments.items()
    ]


def _once_to_success(events: list[str]) -> bool:
    """Whether a deployment went from Building to Success, each transition recorded once.

    InProgress may be overtaken and skipped: a shared subscription may hand a core's two
    reports to two replicas, and the later one may be recorded first.
    """
    return events in (["Building", "InProgress", "Success"], ["Building", "Success"])


def _query(config: Path, sql: str, **binds: Any) -> list[Any]:
    """Rows of a query on the control plane's database itself."""
    db = open_database(load_cloud_config(config))
    try:
        with db.read() as conn:
            return [tuple(r.values()) for r in conn.execute(sql, binds).fetchall()]
    finally:
        db.close()


def _events(config: Path, deployment_ids: list[str]) -> dict[str, list[str]]:
    """Each deployment's recorded transitions, in order."""
    out: dict[str, list[str]] = {d: [] for d in deployment_ids}
    rows = _query(
        config,
        "SELECT deployment_id, status FROM deployment_events WHERE deployment_id IN :ids"
        " ORDER BY deployment_id, seq",
        ids=deployment_ids,
    )
    for deployment_id, status in rows:
        out[deployment_id].append(status)
    return out


def _group_in_database(config: Path, thing: str) -> str:
    """A group whose one version names `thing` as its core, made while no replica runs; its id.

    Made by the control plane's own code, which `create-group` runs, without a command's start.
    """
    loaded = load_cloud_config(config)
    arns = Arns(loaded.aws.region, loaded.cloud.account_id)
    with open_database(loaded) as db:
        core = definitions.create_definition(
            db, arns, definitions.KINDS["core"], name=thing, initial=core_version(thing)
        )
        version = {"CoreDefinitionVersionArn": core["LatestVersionArn"]}
        return str(cloud_groups.create_group(db, arns, name=thing, initial=version)["Id"])


def test_a_replica_killed_after_answering_loses_nothing_and_statuses_land_once(
    replicas: Replicas, broker: Mosquitto, moto: MotoServer
) -> None:
    plane, a, b = replicas.plane, replicas.a, replicas.b
    thing = f"core-{uuid.uuid4().hex[:8]}"
    core_config = write_config(
        a.root.parent / "core.toml",
        thing_name=thing,
        mqtt_url=broker.url,
        endpoint_url=moto.url,
        deployments=f'trusted_keys = ["{a.config.parent / "cloud" / "signing.pem.pub"}"]',
    )
    assert edge_cli("init", "--config", str(core_config)).returncode == 0
    core = CoreProcess(config=core_config, log_path=a.root.parent / "core.log")
    core.start()
    a.launch()
    b.launch()
    fleet = plane.simulate("--count", str(SIMULATED), "--processes", "1")
    a.listening()
    b.listening()
    try:
        core.wait_for_event("mqtt.connected")
        client_a = a.client(replicas.secret)
        things = [*(f"sim-{i}" for i in range(SIMULATED)), thing]
        groups = [make_group(client_a, name)[0] for name in things]
        deployments = {
            g: client_a.create_deployment(GroupId=g, DeploymentType="NewDeployment")["DeploymentId"]
            for g in groups
        }
        assert a.service is not None
        a.service.stop(signal.SIGKILL)
        client_b = b.client(replicas.secret)
        _wait_until(
            lambda: _statuses(client_b, deployments) == ["Success"] * len(groups),
            timeout=60,
            what="every deployment Success through replica b",
        )
        assert b.published() >= len(groups) - 1
        # One deployment per group: the same id however often it was delivered.
        for group, deployment_id in deployments.items():
            listed = client_b.list_deployments(GroupId=group)["Deployments"]
            assert [d["DeploymentId"] for d in listed] == [deployment_id]
        # Each report recorded once, though both replicas follow the statuses, and a replica
        # starting again reads every retained report before it shares the subscription.
        caught_up = a.service.count("cloud.publisher.shared")
        a.start()
        a.service.wait_for_event("cloud.publisher.shared", after=caught_up)
        client_a = a.client(replicas.secret)
        assert _statuses(client_a, deployments) == ["Success"] * len(groups)
        events = _events(a.config, list(deployments.values()))
        assert all(_once_to_success(e) for e in events.values()), events
        summary = fleet.stop()
        assert summary["Deployments"] - summary["Duplicates"] == SIMULATED, summary
        assert summary["Success"] == SIMULATED, summary
    finally:
        fleet.kill()
        if core.proc is not None:
            core.stop()
    assert b.service is not None
    assert b.service.stop() == 0
    assert "Traceback" not in b.service.log_text()


def test_a_replica_catches_up_on_reports_made_while_none_ran_then_shares(
    replicas: Replicas,
) -> None:
    plane, a, b = replicas.plane, replicas.a, replicas.b
    fleet = plane.simulate("--count", "2", "--processes", "1")
    group, second = (_group_in_database(a.config, thing) for thing in ("sim-0", "sim-1"))
    # No replica runs: the command publishes its deployment itself and marks it sent.
    created = plane.json(
        "create-deployment", "--group-id", group, "--deployment-type", "NewDeployment"
    )
    assert _query(a.config, "SELECT count(*) FROM outbox") == [(0,)]
    fleet.wait_for("success 1")
    # The report is retained on the broker; a shared subscription would never deliver it.
    a.start()
    client_a = a.client(replicas.secret)
    first = {group: created["DeploymentId"]}
    _wait_until(
        lambda: _statuses(client_a, first) == ["Success"],
        timeout=20,
        what="the retained report recorded by a replica that started after it",
    )
    assert a.service is not None
    a.service.wait_for_event("cloud.publisher.shared", topic="$share/edge/" + _filter(a))
    b.start()
    assert b.service is not None
    b.service.wait_for_event("cloud.publisher.shared")
    # Through the shared subscription: each report reaches one replica, recorded once, and
    # both answer it.
    client_b = b.client(replicas.secret)
    deployed = client_b.create_deployment(GroupId=second, DeploymentType="NewDeployment")
    both = {**first, second: deployed["DeploymentId"]}
    _wait_until(
        lambda: _statuses(client_a, both) == ["Success"] * 2,
        timeout=20,
        what="both deployments Success through replica a",
    )
    assert _statuses(client_b, both) == ["Success"] * 2
    events = _events(a.config, list(both.values()))
    assert all(_once_to_success(e) for e in events.values()), events
    summary = fleet.stop()
    assert (summary["Deployments"], summary["Success"]) == (2, 2), summary
    for replica in (a, b):
        assert replica.service is not None
        assert replica.service.stop() == 0


def _filter(replica: Replica) -> str:
    return load_cloud_config(replica.config).mqtt.status_topic("+")


def test_without_a_server_the_command_publishes_its_own_outbox_row_on_sqlite(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer
) -> None:
    config = write_cloud_config(tmp_path / "cloud.toml", broker=broker, moto=moto)
    _init(config)
    plane = ControlPlane(config, broker)
    fleet = plane.simulate("--count", "1", "--processes", "1")
    try:
        deployed = plane.deploy(_group_in_database(config, "sim-0"))
        assert deployed["DeploymentStatus"] == "Success"
        # Published and acknowledged by the command itself: nothing left for a replica.
        assert _query(config, "SELECT count(*) FROM outbox") == [(0,)]
        assert fleet.stop()["Deployments"] == 1
    finally:
        fleet.kill()


@pytest.mark.parametrize("replicas", [STEADY], indirect=True)
def test_a_drain_killed_mid_batch_loses_nothing_and_deploys_each_group_once(
    replicas: Replicas,
) -> None:
    """Rows a replica's drain claimed, partly acknowledged and removed, go out through b."""
    plane, a, b = replicas.plane, replicas.a, replicas.b
    count = 10
    a.launch()
    b.launch()
    fleet = plane.simulate("--count", str(count), "--processes", "1")
    a.listening()
    b.listening()
    try:
        client_a = a.client(replicas.secret)
        groups = [make_group(client_a, f"sim-{i}")[0] for i in range(count)]
        deployments = {
            g: client_a.create_deployment(GroupId=g, DeploymentType="NewDeployment")["DeploymentId"]
            for g in groups
        }
        _wait_until(lambda: a.published() >= 4, timeout=30, what="a's drain mid-batch")
        assert a.service is not None
        a.service.stop(signal.SIGKILL)
        # Claimed by a and not all sent: b takes them once a's leases end.
        assert a.published() < count
        client_b = b.client(replicas.secret)
        _wait_until(
            lambda: _statuses(client_b, deployments) == ["Success"] * count,
            timeout=60,
            what="every deployment Success through replica b",
        )
        assert b.published() >= count - a.published()
        _wait_until(
            lambda: _query(b.config, "SELECT count(*) FROM outbox") == [(0,)],
            timeout=10,
            what="an empty outbox",
        )
        for group, deployment_id in deployments.items():
            listed = client_b.list_deployments(GroupId=group)["Deployments"]
            assert [d["DeploymentId"] for d in listed] == [deployment_id]
        events = _events(b.config, list(deployments.values()))
        assert all(_once_to_success(e) for e in events.values()), events
        summary = fleet.stop()
    finally:
        fleet.kill()
    # Each deployment applied once; one sent by a and again by b is a duplicate, nothing more.
    assert summary["Deployments"] - summary["Duplicates"] == count, summary
    assert summary["Success"] == count, summary
    assert b.service is not None
    assert b.service.stop() == 0


@pytest.mark.parametrize("replicas", [""], indirect=True)
def test_reports_another_member_took_and_never_recorded_are_read_again(
    replicas: Replicas, broker: Mosquitto
) -> None:
    """A replica that acknowledged reports and died before recording them loses none.

    A member of the same shared subscription group that records nothing stands in for it: the
    broker hands it every other report. Replica b, which runs on, has the broker send those
    things' retained reports again, and every deployment ends `Success` through it.
    """
    b = replicas.b
    # Re-reads every half second rather than 15 s, of deployments 3 s old rather than 10 s.
    text = b.config.read_text().replace("[cloud]\n", "[cloud]\n" + REREAD, 1)
    b.config.write_text(text)
    b.start()
    assert b.service is not None
    b.service.wait_for_event("cloud.publisher.shared")
    taken: queue.Queue[str] = queue.Queue()
    member = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    member.on_message = lambda _c, _u, message: taken.put(message.topic)
    subscribed: queue.Queue[bool] = queue.Queue()
    member.on_subscribe = lambda *_: subscribed.put(item=True)
    member.connect("127.0.0.1", broker.port)
    member.loop_start()
    member.subscribe(f"$share/edge/{_filter(b)}", qos=1)
    subscribed.get(timeout=10)
    things = [f"gone-{i}" for i in range(6)]
    client_b = b.client(replicas.secret)
    deployments = {
        (group := make_group(client_b, thing)[0]): client_b.create_deployment(
            GroupId=group, DeploymentType="NewDeployment"
        )["DeploymentId"]
        for thing in things
    }
    settings = load_cloud_config(b.config).mqtt
    core = paho.Client(CallbackAPIVersion.VERSION2)
    core.connect("127.0.0.1", broker.port)
    core.loop_start()
    try:
        # What each core does: its final report, retained on its status topic.
        for thing, deployment_id in zip(things, deployments.values(), strict=True):
            report = {
                "DeploymentId": deployment_id,
                "DeploymentStatus": "Success",
                "UpdatedAt": precise_timestamp(),
            }
            core.publish(
                settings.status_topic(thing), json.dumps(report), qos=1, retain=True
            ).wait_for_publish(timeout=10)
        # The broker alternates between the group's two members: half went to the other one.
        lost = [taken.get(timeout=10) for _ in range(len(things) // 2)]
    finally:
        core.loop_stop()
        core.disconnect()
        member.loop_stop()
        member.disconnect()
    assert len(set(lost)) == len(things) // 2
    _wait_until(
        lambda: _statuses(client_b, deployments) == ["Success"] * len(things),
        timeout=60,
        what="every deployment Success through replica b",
    )
    # The re-read holds its subscription for a quiet spell after the reports arrive, and logs
    # once it lets go: after the statuses it brought are recorded.
    b.service.wait_for_event("cloud.status.reread", timeout=30)
    assert b.service.stop() == 0
