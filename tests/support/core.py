"""Drive a real `edge` core process and talk to it over a real broker, for integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge.fixtures.services import AWS_TEST_ENV, TEST_REGION
from tests.support.leaks import LEAKS

REPO = Path(__file__).resolve().parents[2]

_last_created_at = datetime.min.replace(tzinfo=UTC)


def next_created_at() -> str:
    """A CreatedAt later than every one this process made before, as the control plane's are.

    A core refuses a deployment that isn't created after the one it applied last.
    """
    global _last_created_at  # noqa: PLW0603 - one sequence for the whole test process
    _last_created_at = max(datetime.now(UTC), _last_created_at + timedelta(microseconds=1))
    return _last_created_at.isoformat(timespec="microseconds").replace("+00:00", "Z")


def edge_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m edge ARGS` to completion and return its result."""
    env = {**os.environ, **AWS_TEST_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )
    # `edge invoke`'s stdout is the function's own answer: a function may return a secret it
    # was granted (that is its business); everything else the CLI writes is the core's.
    shown = result.stderr if args[:1] == ("invoke",) else result.stdout + result.stderr
    LEAKS.add_output(f"edge {' '.join(args[:2])}", shown)
    return result


def write_config(
    path: Path,
    *,
    thing_name: str,
    mqtt_url: str,
    endpoint_url: str,
    extra: str = "",
    deployments: str = "allow_unsigned = true",
    mqtt: str = "",
    local_code_dirs: tuple[Path, ...] | None = None,
) -> Path:
    """Write a core config file for a test; `deployments` is the [deployments] table's body.

    `mqtt` is added to the [mqtt] table (ca_file, cert_file, key_file for an mqtts:// url).

    By default the core accepts unsigned documents, so that `Operator` can deploy by hand, and
    file:// code from the config's directory (`[workers] local_code_dirs`), where tests build
    their packages. The file is 0600, as a config that may hold a PIN must be.
    """
    code_dirs = (path.parent,) if local_code_dirs is None else local_code_dirs
    path.write_text(
        f"""
[core]
thing_name = "{thing_name}"
state_dir = "state"

[mqtt]
url = "{mqtt_url}"
reconnect_max_seconds = 1.0
keepalive_seconds = 5
{mqtt}

[aws]
region = "{TEST_REGION}"
endpoint_url = "{endpoint_url}"

[fetch]
deadline_seconds = 30

[log]
level = "debug"
format = "json"

[deployments]
{deployments}

[workers]
local_code_dirs = {json.dumps([str(d) for d in code_dirs])}
{extra}
"""
    )
    path.chmod(0o600)
    return path


@dataclass
class CoreProcess:
    """A running `edge run` subprocess with its log captured to a file."""

    config: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _offset: int = 0

    def start(self) -> None:
        env = {**os.environ, **AWS_TEST_ENV}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise
        self.proc = None
        return code

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log event the core wrote so far."""
        out = []
        for line in self.log_text().splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out

    def wait_for_event(
        self, name: str, *, timeout: float = 20, after: int = 0, **fields: Any
    ) -> dict[str, Any]:
        """Wait until the log holds event `name` (the `after`-th onwards) with the given fields."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matches = [
                e
                for e in self.events()
                if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
            ]
            if len(matches) > after:
                return matches[after]
            if self.proc is not None and self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"core exited ({code}) waiting for {name}:\n{self.log_text()}")
            time.sleep(0.05)
        raise AssertionError(
            f"no {name} event {fields} within {timeout} s:\n{self.log_text()[-4000:]}"
        )

    def count(self, name: str) -> int:
        return sum(1 for e in self.events() if e.get("event") == name)


@dataclass
class Operator:
    """The cloud side, by hand: publishes deployments and collects status documents."""

    port: int
    prefix: str
    thing: str
    statuses: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    seen: list[dict[str, Any]] = field(default_factory=list)
    client: paho.Client | None = None
    watchers: list[paho.Client] = field(default_factory=list)
    #: For a TLS listener: trusts the broker's CA and presents a client certificate.
    tls: ssl.SSLContext | None = None

    def _new_client(self, prefix: str) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{prefix}-{uuid.uuid4().hex[:8]}"
        )
        if self.tls is not None:
            client.tls_set_context(self.tls)
        return client

    @property
    def deployments_topic(self) -> str:
        return f"{self.prefix}/things/{self.thing}/deployments"

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/things/{self.thing}/deployments/status"

    def connect(self) -> None:
        client = self._new_client("operator")
        subscribed = queue.Queue[bool]()

        def on_connect(c: paho.Client, *_: Any) -> None:
            c.subscribe(self.status_topic, qos=1)

        def on_message(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
            self.statuses.put(json.loads(msg.payload))

        client.on_connect = on_connect
        client.on_subscribe = lambda *_: subscribed.put(True)
        client.on_message = on_message
        client.connect("127.0.0.1", self.port, keepalive=10)
        client.loop_start()
        subscribed.get(timeout=10)
        self.client = client

    def close(self) -> None:
        for watcher in self.watchers:
            watcher.loop_stop()
            watcher.disconnect()
        self.watchers.clear()
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
            self.client = None

    def subscribe(self, topic_filter: str) -> queue.Queue[tuple[str, Any]]:
        """Collect (topic, JSON payload) of messages on a filter, from a client of its own."""
        received: queue.Queue[tuple[str, Any]] = queue.Queue()
        ready: queue.Queue[bool] = queue.Queue()
        client = self._new_client("watch")
        client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        client.on_subscribe = lambda *_: ready.put(True)
        client.on_message = lambda _c, _u, msg: received.put((msg.topic, json.loads(msg.payload)))
        client.connect("127.0.0.1", self.port, keepalive=10)
        client.loop_start()
        ready.get(timeout=10)
        self.watchers.append(client)
        return received

    def publish(self, topic: str, message: Any) -> None:
        """Publish a JSON message on any topic (as the cloud would)."""
        assert self.client is not None
        self.client.publish(topic, json.dumps(message), qos=1).wait_for_publish(10)

    def publish_raw(self, payload: bytes | str) -> None:
        assert self.client is not None
        info = self.client.publish(self.deployments_topic, payload, qos=1)
        info.wait_for_publish(10)

    def deploy(
        self,
        resources: list[dict[str, Any]] | None = None,
        *,
        deployment_type: str = "NewDeployment",
        functions: list[dict[str, Any]] | None = None,
        deployment_id: str | None = None,
        subscriptions: list[dict[str, Any]] | None = None,
    ) -> str:
        """Publish a deployment document; return its DeploymentId."""
        dep_id = deployment_id or str(uuid.uuid4())
        doc = {
            "DeploymentId": dep_id,
            "DeploymentType": deployment_type,
            "GroupId": "group-1",
            "GroupVersionId": uuid.uuid4().hex,
            "CreatedAt": next_created_at(),
            "Group": {
                "Resources": resources or [],
                "Functions": functions or [],
                "Connectors": [],
                "Subscriptions": subscriptions or [],
            },
        }
        self.publish_raw(json.dumps(doc))
        return dep_id

    def wait_status(
        self, deployment_id: str, status: str, *, timeout: float = 30
    ) -> dict[str, Any]:
        """Wait for a status document of the deployment with the given DeploymentStatus."""
        for doc in self.seen:
            if doc.get("DeploymentId") == deployment_id and doc.get("DeploymentStatus") == status:
                return doc
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no {status} for {deployment_id} within {timeout} s; saw {self.seen}"
                )
            try:
                doc = self.statuses.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(doc)
            if doc.get("DeploymentId") == deployment_id and doc.get("DeploymentStatus") == status:
                return doc

    def final_status(self, deployment_id: str, *, timeout: float = 30) -> dict[str, Any]:
        """Wait for Success or Failure of a deployment."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for doc in self.seen:
                if doc.get("DeploymentId") == deployment_id and doc.get("DeploymentStatus") in {
                    "Success",
                    "Failure",
                }:
                    return doc
            with contextlib.suppress(queue.Empty):
                self.seen.append(self.statuses.get(timeout=0.2))
        raise AssertionError(
            f"no final status for {deployment_id} within {timeout} s; saw {self.seen}"
        )


def secret_resource(resource_id: str, arn: str, labels: list[str] | None = None) -> dict[str, Any]:
    """A Greengrass V1 secret resource object."""
    data: dict[str, Any] = {"ARN": arn}
    if labels is not None:
        data["AdditionalStagingLabelsToDownload"] = labels
    return {
        "Id": resource_id,
        "Name": f"{resource_id}-name",
        "ResourceDataContainer": {"SecretsManagerSecretResourceData": data},
    }


def iter_files(root: Path) -> Iterator[Path]:
    """Every regular file below root."""
    for p in root.rglob("*"):
        if p.is_file():
            yield p
