"""The core's MQTT client key held in a real PKCS#11 token (SoftHSM2), through pkcs11-provider.

A V1 config.json whose `IoTCertificate.privateKeyPath` is a `pkcs11:` URI is converted by
`edge migrate-core`; the core then proves its certificate to a TLS Mosquitto that requires one,
with a key that is sensitive and non-extractable, so only the token can have signed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)
from pkcs11 import Attribute, KeyType
from pkcs11.util.ec import encode_named_curve_parameters

from edge.config import load_config
from edge.fixtures.core import edge_cli, secret_resource
from edge.fixtures.services import Mosquitto, MotoServer
from edge.mqtt.token_key import provider_problem
from edge.secrets.keyref import TokenKeyRef
from tests.integration.test_migrate_core import convert_and_deploy, v1_config, v1_layout
from tests.support.env import running_env
from tests.support.iot_credentials import run_credentials_provider
from tests.support.leaks import LEAKS
from tests.support.softhsm import Token
from tests.support.tls import Pki, TlsMosquitto, issue_client_cert, make_pki, run_tls_mosquitto

pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def token(softhsm: Token) -> Token:
    """The SoftHSM2 token with the thing's EC P-256 MQTT key, sensitive and non-extractable."""
    problem = provider_problem()
    if problem is not None:
        pytest.fail(problem)
    lib = pkcs11.lib(str(softhsm.module))
    with lib.get_token(token_label=softhsm.label).open(user_pin=softhsm.pin, rw=True) as session:
        params = session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        public, _ = params.generate_keypair(
            store=True,
            label="iot-key",
            id=b"\x11",
            private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )
        point = bytes(public[Attribute.EC_POINT])[2:]  # DER OCTET STRING around the point
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    (softhsm.root / "iot-key.pub").write_bytes(
        key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    return softhsm


@pytest.fixture
def hsm_core(tmp_path: Path, token: Token) -> tuple[Path, Pki]:
    """A /greengrass layout whose certificate's key is in the token; the secrets key is a file."""
    root, pki = v1_layout(tmp_path)
    public = load_der_public_key((token.root / "iot-key.pub").read_bytes())
    issue_client_cert(pki, public, root / "certs" / "hsm.cert.pem")
    return root, pki


@pytest.fixture
def tls_broker(tmp_path: Path, hsm_core: tuple[Path, Pki]) -> Iterator[TlsMosquitto]:
    """Mosquitto with one TLS listener that requires a certificate from the core's CA."""
    with run_tls_mosquitto(tmp_path / "mosquitto", hsm_core[1]) as broker:
        yield broker


def hsm_config(root: Path, pki: Pki, token: Token, *, thing: str, port: int) -> dict[str, Any]:
    """A V1 config.json whose MQTT key is `object=iot-key` in the token, as V1 wrote it."""
    document = v1_config(root, pki, thing=thing, port=port)
    document["crypto"]["principals"]["IoTCertificate"] = {
        "certificatePath": f"file://{root}/certs/hsm.cert.pem",
        "privateKeyPath": "pkcs11:object=iot-key;type=private",
    }
    document["crypto"]["PKCS11"] = {
        "OpenSSLEngine": "/usr/lib/x86_64-linux-gnu/engines-1.1/pkcs11.so",
        "P11Provider": str(token.module),
        "slotLabel": token.label,
        "slotUserPin": token.pin,
    }
    return document


def _write_source(root: Path, document: dict[str, Any]) -> Path:
    source = root / "config" / "config.json"
    source.write_text(json.dumps(document))
    # V1's config.json holds the PIN in the clear: the operator's input, not edge's output.
    LEAKS.exempt(source, "V1 config.json with crypto.PKCS11.slotUserPin")
    return source


def test_converted_core_signs_the_handshake_in_the_token_and_deploys(  # noqa: PLR0917 - fixtures
    tmp_path: Path,
    token: Token,
    hsm_core: tuple[Path, Pki],
    tls_broker: TlsMosquitto,
    moto: MotoServer,
    sm: Any,
) -> None:
    """migrate-core keeps the MQTT key a pkcs11: URI; the core connects with it and deploys."""
    root, pki = hsm_core
    thing = f"hsm-{uuid.uuid4().hex[:8]}"
    source = _write_source(root, hsm_config(root, pki, token, thing=thing, port=tls_broker.port))
    LEAKS.exempt(tmp_path / "edge" / "core.pin", "the PIN file migrate-core writes, 0600")
    config = convert_and_deploy(
        tmp_path, source, thing=thing, pki=pki, tls_broker=tls_broker, moto=moto, sm=sm
    )
    key = load_config(config).mqtt.key_file
    assert isinstance(key, TokenKeyRef)
    assert (key.token, key.label, key.pin_source) == (
        token.label,
        "iot-key",
        config.parent / "core.pin",
    )
    assert token.pin not in config.read_text()


def _converted(tmp_path: Path, token: Token, hsm_core: tuple[Path, Pki], port: int) -> Path:
    """Convert a V1 config for the token key and `edge init` it; return the core.toml."""
    root, pki = hsm_core
    source = _write_source(root, hsm_config(root, pki, token, thing="t", port=port))
    config = tmp_path / "edge" / "core.toml"
    config.parent.mkdir()
    LEAKS.exempt(config.parent / "core.pin", "the PIN file migrate-core writes, 0600")
    result = edge_cli("migrate-core", "--greengrass-config", str(source), "-o", str(config))
    assert result.returncode == 0, result.stderr
    init = edge_cli("init", "--config", str(config))
    assert init.returncode == 0, init.stderr
    return config


def _start_error(config: Path) -> str:
    """Run `edge run`, which must stop at start with a config error; return its message."""
    result = edge_cli("run", "--config", str(config), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_wrong_pin_is_one_clear_error(
    tmp_path: Path, token: Token, hsm_core: tuple[Path, Pki], tls_broker: TlsMosquitto
) -> None:
    """A wrong PIN in the PIN file stops the core at start, naming the PIN and the key."""
    config = _converted(tmp_path, token, hsm_core, tls_broker.port)
    (config.parent / "core.pin").write_text("999999\n")
    error = _start_error(config)
    assert "[mqtt] key_file" in error
    assert "CKR_PIN_INCORRECT" in error
    assert "pin-source" in error


def test_missing_object_is_one_clear_error(
    tmp_path: Path, token: Token, hsm_core: tuple[Path, Pki], tls_broker: TlsMosquitto
) -> None:
    """A key the token doesn't hold stops the core at start, naming the object and token."""
    config = _converted(tmp_path, token, hsm_core, tls_broker.port)
    config.write_text(config.read_text().replace("object=iot-key", "object=no-such-key"))
    error = _start_error(config)
    assert "[mqtt] key_file" in error
    assert f"there is no private key object 'no-such-key' in token {token.label!r}" in error


def test_iot_credentials_are_bought_with_the_token_key(
    tmp_path: Path, token: Token, broker: Mosquitto, moto: MotoServer, sm: Any
) -> None:
    """`[aws] credentials = "iot"` proves the certificate with the token key, over mutual TLS."""
    pki = make_pki(tmp_path / "pki")
    public = load_der_public_key((token.root / "iot-key.pub").read_bytes())
    cert = issue_client_cert(pki, public, tmp_path / "hsm.cert.pem")
    pin_file = tmp_path / "token.pin"
    pin_file.write_text(token.pin + "\n")
    pin_file.chmod(0o600)
    LEAKS.exempt(pin_file, "the token's PIN file, 0600, as an operator writes it")
    thing = f"hsm-{uuid.uuid4().hex[:8]}"
    key = (
        f"pkcs11:token={token.label};object=iot-key"
        f"?pin-source=file:{pin_file}&module-path={token.module}"
    )
    alias = "edge-hsm-core"
    with run_credentials_provider(pki, role_alias=alias, thing_name=thing) as provider:
        aws = (
            f'credentials = "iot"\niot_credentials_endpoint = "{provider.url}"\n'
            f'role_alias = "{alias}"\niot_cert_file = "{cert}"\n'
            f'iot_key_file = "{key}"\niot_ca_file = "{pki.ca.cert}"\n'
        )
        with running_env(tmp_path, broker, moto, sm, thing_name=thing, aws=aws) as env:
            arn, _, _ = env.create_secret("hsm/iot")
            deployment = env.operator.deploy([secret_resource("r", arn)])
            assert env.operator.final_status(deployment)["DeploymentStatus"] == "Success"
            assert len(provider.wait_issued(1)) >= 1


def test_missing_provider_is_one_clear_error(
    tmp_path: Path,
    token: Token,
    hsm_core: tuple[Path, Pki],
    tls_broker: TlsMosquitto,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where OpenSSL finds no pkcs11-provider, the core stops at start saying what to install."""
    config = _converted(tmp_path, token, hsm_core, tls_broker.port)
    empty = tmp_path / "no-modules"
    empty.mkdir()
    # OpenSSL's own override of its modules directory: here, one without the provider.
    monkeypatch.setenv("OPENSSL_MODULES", str(empty))
    error = _start_error(config)
    assert f"no {empty}/pkcs11.so" in error
    assert "apt-get install pkcs11-provider" in error
