"""`[mqtt] key_file = "pkcs11:..."`: the config, the hidden paths and the provider's PEM block.

The handshake signed inside a real token is in tests/integration/test_mqtt_token_key.py; these
are the parts that need no token.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from edge.config import load_config, parse_config
from edge.errors import ConfigError, ConfigPermissionsError
from edge.mqtt.token_key import provider_pem, provider_uri
from edge.secrets.keyref import TokenKeyRef, parse_token_key_uri
from edge.workers.sandbox import hidden_paths

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
PIN = "s3cret-user-pin-4711"


def config(key_file: str, **core: object) -> dict[str, object]:
    return {
        "core": {"thing_name": "t", **core},
        "mqtt": {"url": "mqtts://broker:8883", "cert_file": "iot.crt", "key_file": key_file},
        "aws": {"region": "eu-west-1"},
    }


def test_key_file_takes_a_token_uri_with_the_core_module(tmp_path: Path) -> None:
    """key_file as a pkcs11: URI is a token key, opened with [core] pkcs11_module."""
    raw = config("pkcs11:token=gg;object=iot?pin-source=file:mqtt.pin", pkcs11_module=str(MODULE))
    parsed = parse_config(raw, path=tmp_path / "core.toml")
    key = parsed.mqtt.key_file
    assert isinstance(key, TokenKeyRef)
    assert (key.token, key.label, key.module) == ("gg", "iot", MODULE)
    assert key.pin_source == tmp_path / "mqtt.pin"
    # The core key stays a file: pkcs11_module serves the MQTT key alone here.
    assert parsed.core.private_key == tmp_path / "state" / "core.key"


def test_key_file_uri_without_a_module_says_where_to_set_it(tmp_path: Path) -> None:
    """No [core] pkcs11_module and no module-path: the error names mqtt.key_file and the fix."""
    with pytest.raises(ConfigError, match=r"mqtt\.key_file.*\[core\] pkcs11_module"):
        parse_config(config("pkcs11:object=iot"), path=tmp_path / "core.toml")


def test_pkcs11_module_without_any_token_key_is_a_mistake(tmp_path: Path) -> None:
    """pkcs11_module beside file keys only is refused, naming both places a URI may go."""
    with pytest.raises(ConfigError, match=r"only applies to .*\[mqtt\] key_file"):
        parse_config(config("iot.key", pkcs11_module=str(MODULE)), path=tmp_path / "core.toml")


def test_pin_value_in_key_file_makes_the_config_a_secret(tmp_path: Path) -> None:
    """A config whose [mqtt] key_file holds a pin-value must be 0600, like one in [core]."""
    path = tmp_path / "core.toml"
    path.write_text(
        f'[core]\nthing_name = "t"\npkcs11_module = "{MODULE}"\n'
        '[mqtt]\nurl = "mqtts://broker:8883"\ncert_file = "iot.crt"\n'
        f'key_file = "pkcs11:object=iot?pin-value={PIN}"\n[aws]\nregion = "eu-west-1"\n'
    )
    path.chmod(0o644)
    with pytest.raises(ConfigPermissionsError, match="chmod 0600") as info:
        load_config(path)
    assert PIN not in str(info.value)
    path.chmod(0o600)
    assert PIN not in repr(load_config(path))


def test_the_pin_file_of_a_token_key_is_hidden_from_workers(tmp_path: Path) -> None:
    """Workers may not read the MQTT key's PIN file (nor, by default, IoT's: the same key)."""
    path = tmp_path / "core.toml"
    path.write_text(
        f'[core]\nthing_name = "t"\npkcs11_module = "{MODULE}"\n'
        '[mqtt]\nurl = "mqtts://broker:8883"\ncert_file = "iot.crt"\n'
        'key_file = "pkcs11:object=iot?pin-source=file:mqtt.pin"\n'
        '[aws]\nregion = "eu-west-1"\ncredentials = "iot"\n'
        'iot_credentials_endpoint = "c.credentials.iot.eu-west-1.amazonaws.com"\n'
        'role_alias = "edge"\n'
    )
    path.chmod(0o600)
    loaded = load_config(path)
    assert loaded.aws.iot is not None
    assert loaded.aws.iot.key_file == loaded.mqtt.key_file
    assert tmp_path / "mqtt.pin" in set(hidden_paths(loaded))


def test_provider_pem_is_the_der_block_pkcs11_provider_decodes() -> None:
    """SEQUENCE { VisibleString description, UTF8String uri } under the provider's PEM label."""
    ref = parse_token_key_uri(
        "pkcs11:token=My%20Token;object=iot;id=%01%ff?pin-source=file:/run/edge/pin",
        base_dir=Path("/etc/edge"),
        module=MODULE,
        public_key=None,
    )
    uri = provider_uri(ref)
    assert uri == (
        "pkcs11:token=My%20Token;object=iot;id=%01%ff;type=private?pin-source=file:/run/edge/pin"
    )
    pem = provider_pem(ref)
    head, tail = "-----BEGIN PKCS#11 PROVIDER URI-----\n", "-----END PKCS#11 PROVIDER URI-----\n"
    assert pem.startswith(head)
    assert pem.endswith(tail)
    der = base64.b64decode(pem[len(head) : -len(tail)])
    description = b"PKCS#11 Provider URI v1.0"
    assert der[0] == 0x30  # SEQUENCE
    assert der[2:4] == bytes([0x1A, len(description)])
    assert der[4 : 4 + len(description)] == description
    rest = der[4 + len(description) :]
    assert rest[0] == 0x0C  # UTF8String
    assert rest[2:].decode() == uri
