"""A V1 core converted by `edge migrate-core` connects with its own certificate and deploys."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.fixtures.core import CoreProcess, Operator, edge_cli, secret_resource
from edge.fixtures.services import MotoServer
from edge.secrets.keys import generate_key
from edge.signing import public_key_pem, seal
from tests.support.env import Env
from tests.support.tls import Pki, TlsMosquitto, make_pki, run_tls_mosquitto


@pytest.fixture
def v1_core(tmp_path: Path) -> tuple[Path, Pki]:
    """A /greengrass layout whose certs/ holds the broker's CA, the thing's certificate and key."""
    return v1_layout(tmp_path)


def v1_layout(tmp_path: Path) -> tuple[Path, Pki]:
    """/greengrass with config/, and certs/ holding a test PKI and an RSA secrets key."""
    root = tmp_path / "greengrass"
    (root / "config").mkdir(parents=True)
    pki = make_pki(root / "certs")
    generate_key(root / "certs" / "secrets.key", kind="rsa")
    return root, pki


@pytest.fixture
def tls_broker(tmp_path: Path, v1_core: tuple[Path, Pki]) -> Iterator[TlsMosquitto]:
    """Mosquitto with one TLS listener that requires a certificate from the core's CA."""
    with run_tls_mosquitto(tmp_path / "mosquitto", v1_core[1]) as broker:
        yield broker


def v1_config(root: Path, pki: Pki, *, thing: str, port: int) -> dict[str, Any]:
    """A V1 config.json as the console wrote it, for a core on this test's broker."""
    return {
        "coreThing": {
            "caPath": pki.ca.cert.name,
            "certPath": pki.client.cert.name,
            "keyPath": pki.client.key.name,
            "thingArn": f"arn:aws:iot:us-east-1:123456789012:thing/{thing}",
            "iotHost": "127.0.0.1",
            "ggHost": "greengrass-ats.iot.us-east-1.amazonaws.com",
            "iotMqttPort": port,
            "keepAlive": 30,
        },
        "runtime": {"cgroup": {"useSystemd": "yes"}},
        "managedRespawn": False,
        "crypto": {
            "principals": {
                "SecretsManager": {"privateKeyPath": f"file://{root}/certs/secrets.key"}
            },
            "caPath": f"file://{root}/certs/{pki.ca.cert.name}",
        },
    }


def test_converted_v1_core_connects_over_tls_and_deploys_a_signed_group(
    tmp_path: Path,
    v1_core: tuple[Path, Pki],
    tls_broker: TlsMosquitto,
    moto: MotoServer,
    sm: Any,
) -> None:
    """migrate-core's core.toml, unedited but for the emulator's endpoint, reaches Success.

    The core presents the V1 thing's certificate to a broker that requires one, as AWS IoT
    does, decrypts with the V1 SecretsManager key, and accepts the control plane's signature.
    """
    root, pki = v1_core
    thing = f"gw-{uuid.uuid4().hex[:8]}"
    source = root / "config" / "config.json"
    source.write_text(json.dumps(v1_config(root, pki, thing=thing, port=tls_broker.port)))
    convert_and_deploy(
        tmp_path, source, thing=thing, pki=pki, tls_broker=tls_broker, moto=moto, sm=sm
    )


def convert_and_deploy(
    tmp_path: Path,
    source: Path,
    *,
    thing: str,
    pki: Pki,
    tls_broker: TlsMosquitto,
    moto: MotoServer,
    sm: Any,
) -> Path:
    """Convert `source`, start the core, deploy a signed group to it: it reaches Success.

    Returns the written core.toml.
    """
    signing_key = Ed25519PrivateKey.generate()
    trusted = tmp_path / "cloud.pub"
    trusted.write_bytes(public_key_pem(signing_key.public_key()))
    config = tmp_path / "edge" / "core.toml"
    config.parent.mkdir()
    converted = edge_cli(
        "migrate-core", "--greengrass-config", str(source), "-o", str(config),
        "--trusted-key", str(trusted),
    )  # fmt: skip
    assert converted.returncode == 0, converted.stderr
    assert "coreThing.ggHost" in converted.stdout
    # The one edit a test needs: Secrets Manager is moto's server, not AWS.
    text = config.read_text().replace("[aws]\n", f'[aws]\nendpoint_url = "{moto.url}"\n')
    config.write_text(text)
    init = edge_cli("init", "--config", str(config))
    assert init.returncode == 0, init.stderr
    assert "exists; kept it" in init.stdout

    core = CoreProcess(config=config, log_path=tmp_path / "core.log")
    operator = Operator(port=tls_broker.port, prefix="edge", thing=thing, tls=pki.client_context())
    env = Env(
        root=config.parent, broker=tls_broker, moto=moto, sm=sm, config=config, core=core,
        operator=operator,
    )  # fmt: skip
    core.start()
    try:
        connected = core.wait_for_event("mqtt.connected")
        assert connected["url"] == f"mqtts://127.0.0.1:{tls_broker.port}"
        operator.connect()
        arn, version, _ = env.create_secret(f"migrated/{thing}")
        deployment_id = str(uuid.uuid4())
        document = {
            "DeploymentId": deployment_id,
            "DeploymentType": "NewDeployment",
            "GroupId": "group-1",
            "GroupVersionId": uuid.uuid4().hex,
            "CreatedAt": "2026-12-04T12:00:00Z",
            "Group": {
                "Resources": [secret_resource("db", arn)],
                "Functions": [],
                "Connectors": [],
                "Subscriptions": [],
            },
        }
        envelope = seal(json.dumps(document).encode(), signing_key=signing_key, thing_name=thing)
        operator.publish_raw(envelope)
        assert operator.final_status(deployment_id)["DeploymentStatus"] == "Success"
        assert env.listing()["Secrets"][0]["StagingLabels"] == {"AWSCURRENT": version}
        # The broker saw the V1 thing name as the client id, as AWS IoT policies expect.
        assert f"as {thing}" in tls_broker.log_text()
    finally:
        operator.close()
        assert core.stop() == 0
    output = env.all_output()
    assert all(value not in output for value in env.values)
    return config
