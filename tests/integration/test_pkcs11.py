"""Core keys held in a real PKCS#11 token (SoftHSM2): the store is unwrapped inside the token.

One SoftHSM2 token per test module, in a temporary directory with its own `SOFTHSM2_CONF`
(SoftHSM reads it once per process, at C_Initialize, so the module shares one). Its keys are
generated inside the token, sensitive and non-extractable, with python-pkcs11; the core reaches
them only through `[core] private_key = "pkcs11:..."`.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from edge.errors import CoreKeyError
from edge.fixtures.core import CoreProcess, Operator, edge_cli, secret_resource, write_config
from edge.fixtures.services import Mosquitto, MotoServer
from edge.secrets.keyref import parse_token_key_uri
from edge.secrets.keys import EC_ALGORITHM, CoreKey
from edge.secrets.store import SecretStore
from tests.support.env import Env
from tests.support.leaks import LEAKS
from tests.support.softhsm import Token
from tests.unit.test_store import sample_contents

pytestmark = pytest.mark.network


def _softhsm_version() -> tuple[int, int]:
    out = subprocess.run(
        ["softhsm2-util", "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"(\d+)\.(\d+)", out)
    assert match, out
    return int(match[1]), int(match[2])


@pytest.fixture(scope="module")
def token(softhsm: Token) -> Token:
    """The SoftHSM2 token with an EC P-256, an RSA-2048 and an AES key, all sensitive."""
    _generate_keys(softhsm)
    return softhsm


def _generate_keys(token: Token) -> None:
    module, label, pin, root = token.module, token.label, token.pin, token.root
    private = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False}
    lib = pkcs11.lib(str(module))
    with lib.get_token(token_label=label).open(user_pin=pin, rw=True) as session:
        params = session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        params.generate_keypair(store=True, label="core-ec", id=b"\x01", private_template=private)
        session.generate_keypair(
            KeyType.RSA, 2048, store=True, label="core-rsa", id=b"\x02", private_template=private
        )
        session.generate_key(KeyType.AES, 256, store=True, label="an-aes-key", id=b"\x03")
        # An EC key whose public half is only in a file (as when the token came provisioned).
        public, _ = params.generate_keypair(
            store=True, label="core-ec-2", id=b"\x04", private_template=private
        )
        point = bytes(public[Attribute.EC_POINT])[2:]
        pem = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (root / "core-ec-2.pub.pem").write_bytes(pem)
        public.destroy()


def _ref(token: Token, uri: str, public_key: Path | None = None) -> Any:
    return parse_token_key_uri(uri, base_dir=token.root, module=token.module, public_key=public_key)


def _core_config(path: Path, key_lines: str, **kwargs: Any) -> Path:
    """A core config whose [core] table has `key_lines` (private_key, pkcs11_module...)."""
    write_config(path, **kwargs)
    text = path.read_text().replace('state_dir = "state"\n', f'state_dir = "state"\n{key_lines}\n')
    path.write_text(text)
    return path


def _init_error(tmp_path: Path, token: Token, uri: str, extra: str = "") -> str:
    """Run `edge init` with a pkcs11 private_key that must fail; return its message."""
    config = _core_config(
        tmp_path / "core.toml",
        f'private_key = "{uri}"\npkcs11_module = "{token.module}"\n{extra}',
        thing_name="t",
        mqtt_url="mqtt://127.0.0.1:1",
        endpoint_url="http://127.0.0.1:1",
    )
    # The file holds a PIN on purpose: it is the operator's input, not the core's output.
    LEAKS.exempt(config, "test config with an inline pin-value")
    result = edge_cli("init", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert token.pin not in result.stdout + result.stderr
    return result.stderr


def test_store_round_trips_with_ecdh_inside_the_token(token: Token, tmp_path: Path) -> None:
    """A store sealed with the token key's public half opens by ECDH inside the token."""
    key = CoreKey.load(_ref(token, token.uri("core-ec")))
    assert key.kind == "ec"
    assert key.algorithm == EC_ALGORITHM
    assert token.pin not in repr(key)
    store = SecretStore(path=tmp_path / "secrets.store", key=key)
    store.save(sample_contents())
    # A second opening of the key (as a restarted core does) reads what the first sealed.
    reopened = CoreKey.load(_ref(token, token.uri("core-ec")))
    assert reopened.fingerprint == key.fingerprint
    assert SecretStore(path=store.path, key=reopened).load() == sample_contents()


def test_private_key_never_leaves_the_token(token: Token) -> None:
    """The key edge uses is sensitive and non-extractable: the token refuses to give it out."""
    lib = pkcs11.lib(str(token.module))
    with lib.get_token(token_label=token.label).open(user_pin=token.pin) as session:
        key = session.get_key(ObjectClass.PRIVATE_KEY, label="core-ec")
        assert key[Attribute.SENSITIVE]
        assert not key[Attribute.EXTRACTABLE]
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            _ = key[Attribute.VALUE]


def test_public_key_from_a_configured_file(token: Token, tmp_path: Path) -> None:
    """Without a public-key object in the token, [core] public_key gives it; a wrong one fails."""
    pub = token.root / "core-ec-2.pub.pem"
    key = CoreKey.load(_ref(token, token.uri("core-ec-2"), public_key=pub))
    store = SecretStore(path=tmp_path / "secrets.store", key=key)
    store.save(sample_contents())
    assert store.load() == sample_contents()

    with pytest.raises(CoreKeyError, match=r"holds no public key.*set \[core\] public_key"):
        CoreKey.load(_ref(token, token.uri("core-ec-2")))
    with pytest.raises(CoreKeyError, match="does not belong to private object 'core-ec'"):
        CoreKey.load(_ref(token, token.uri("core-ec"), public_key=pub))


def test_edge_run_deploys_and_lists_with_a_token_key(
    token: Token, tmp_path: Path, broker: Mosquitto, moto: MotoServer, sm: Any
) -> None:
    """A real `edge run` with a pkcs11 key deploys a secret; `edge secrets list` reads it back."""
    pin_file = tmp_path / "pin"
    pin_file.write_text(token.pin + "\n")
    pin_file.chmod(0o600)
    LEAKS.exempt(pin_file, "the PIN file the test hands the core")
    thing = f"core-{uuid.uuid4().hex[:8]}"
    uri = f"pkcs11:token={token.label};object=core-ec?pin-source=file:{pin_file}"
    config = _core_config(
        tmp_path / "core.toml",
        f'private_key = "{uri}"\npkcs11_module = "{token.module}"',
        thing_name=thing,
        mqtt_url=broker.url,
        endpoint_url=moto.url,
    )
    init = edge_cli("init", "--config", str(config))
    assert init.returncode == 0, init.stderr
    assert "is usable (ECIES-P256" in init.stdout
    assert "stays in the token" in init.stdout
    assert not (tmp_path / "state" / "core.key").exists()  # no file key was generated

    core = CoreProcess(config=config, log_path=tmp_path / "core.log")
    operator = Operator(port=broker.port, prefix="edge", thing=thing)
    env = Env(
        root=tmp_path, broker=broker, moto=moto, sm=sm, config=config, core=core, operator=operator
    )
    core.start()
    try:
        core.wait_for_event("mqtt.connected")
        operator.connect()
        arn, version, _ = env.create_secret("hsm/db-password")
        dep = operator.deploy([secret_resource("db", arn)])
        operator.wait_status(dep, "Success")
        listing = env.listing()
        assert listing["Deployment"]["DeploymentId"] == dep
        assert listing["Secrets"][0]["StagingLabels"] == {"AWSCURRENT": version}
    finally:
        operator.close()
        if core.proc is not None:
            core.stop()
    # The store now opens only through the token: a restart reads it back.
    restarted = CoreProcess(config=config, log_path=tmp_path / "core2.log")
    restarted.start()
    try:
        loaded = restarted.wait_for_event("core.store_loaded")
        assert loaded["secrets"] == 1
    finally:
        restarted.stop()
    output = env.all_output() + restarted.log_text() + init.stdout + init.stderr
    assert token.pin not in output
    for value in env.values:
        assert value not in output


def test_wrong_pin_is_a_clear_error(token: Token, tmp_path: Path) -> None:
    """A wrong PIN says so, names the object and token, and never echoes either PIN."""
    wrong = secrets.token_hex(8)
    message = _init_error(tmp_path, token, token.uri("core-ec", pin=wrong))
    assert "CKR_PIN_INCORRECT" in message
    assert f"object 'core-ec' in token '{token.label}'" in message
    assert wrong not in message
    assert "pin-value=***" in message


def test_missing_object_is_named(token: Token, tmp_path: Path) -> None:
    """An object that isn't in the token is named, with the token, in the error."""
    message = _init_error(tmp_path, token, token.uri("no-such-key"))
    assert f"there is no private key object 'no-such-key' in token '{token.label}'" in message


def test_missing_token_lists_the_tokens_present(token: Token, tmp_path: Path) -> None:
    """A token label that matches nothing is named, with the tokens that are there."""
    message = _init_error(tmp_path, token, "pkcs11:token=nope;object=core-ec?pin-value=x")
    assert "no token matches token=nope" in message
    assert repr(token.label) in message


def test_rsa_key_needs_oaep_with_sha256(token: Token, tmp_path: Path) -> None:
    """RSA keys unwrap with RSA-OAEP SHA-256 in the token; a token without it is refused by name.

    SoftHSM2 before 2.7 implements CKM_RSA_PKCS_OAEP with SHA-1 and no label only, so there
    this is the "token lacks the mechanism" path, checked against a real token.
    """
    if _softhsm_version() >= (2, 7):
        key = CoreKey.load(_ref(token, token.uri("core-rsa")))
        store = SecretStore(path=tmp_path / "secrets.store", key=key)
        store.save(sample_contents())
        assert store.load() == sample_contents()
        return
    message = _init_error(tmp_path, token, token.uri("core-rsa"))
    assert f"token '{token.label}'" in message
    assert "object 'core-rsa'" in message
    assert "CKM_RSA_PKCS_OAEP" in message
    assert "SHA-256" in message


def test_secret_key_object_is_not_a_core_key(token: Token, tmp_path: Path) -> None:
    """An AES key named as the private key is refused with what it is and what edge needs."""
    message = _init_error(tmp_path, token, token.uri("an-aes-key"))
    assert "object 'an-aes-key'" in message
    assert "is a secret key (CKK_AES), not a private key" in message
    assert "RSA" in message
    assert "EC P-256" in message


def test_pin_file_open_to_others_is_refused(token: Token, tmp_path: Path) -> None:
    """A PIN file that group or others can read is refused, like a world-readable key file."""
    pin_file = tmp_path / "pin"
    pin_file.write_text(token.pin)
    pin_file.chmod(0o644)
    LEAKS.exempt(pin_file, "a PIN file the test hands the core")
    message = _init_error(
        tmp_path, token, f"pkcs11:token={token.label};object=core-ec?pin-source=file:{pin_file}"
    )
    assert str(pin_file) in message
    assert "0644" in message or "permissions" in message
