"""`[aws] credentials`: the IoT credentials provider's settings are checked like every key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import load_config
from edge.errors import ConfigError

TLS = """
[mqtt]
url = "mqtts://broker.example:8883"
ca_file = "ca.pem"
cert_file = "thing.crt"
key_file = "thing.key"
"""


def write(tmp_path: Path, aws: str, mqtt: str = TLS) -> Path:
    path = tmp_path / "core.toml"
    path.write_text(f'[core]\nthing_name = "gw-1"\n{mqtt}\n[aws]\nregion = "eu-west-1"\n{aws}\n')
    return path


def test_default_is_botocores_chain(tmp_path: Path) -> None:
    """Without `credentials`, the core uses botocore's chain as before."""
    assert load_config(write(tmp_path, "")).aws.iot is None


def test_iot_defaults_to_the_mqtt_certificate(tmp_path: Path) -> None:
    """The exchange presents [mqtt]'s certificate, trusts [mqtt]'s CA, and names the thing."""
    config = load_config(
        write(
            tmp_path,
            'credentials = "iot"\n'
            'iot_credentials_endpoint = "c2abc.credentials.iot.eu-west-1.amazonaws.com"\n'
            'role_alias = "edge-cores"\n',
        )
    )
    iot = config.aws.iot
    assert iot is not None
    assert iot.endpoint == "https://c2abc.credentials.iot.eu-west-1.amazonaws.com"
    assert (iot.role_alias, iot.thing_name) == ("edge-cores", "gw-1")
    assert (iot.cert_file, iot.key_file, iot.ca_file) == (
        tmp_path / "thing.crt",
        tmp_path / "thing.key",
        tmp_path / "ca.pem",
    )


@pytest.mark.parametrize(
    ("aws", "mqtt", "key", "problem"),
    [
        ('credentials = "iot"\nrole_alias = "a"\n', TLS, "iot_credentials_endpoint", "required"),
        ('credentials = "iot"\niot_credentials_endpoint = "h"\n', TLS, "role_alias", "required"),
        (
            'credentials = "iot"\niot_credentials_endpoint = "http://h"\nrole_alias = "a"\n',
            TLS,
            "iot_credentials_endpoint",
            "https://",
        ),
        (
            'credentials = "iot"\niot_credentials_endpoint = "h"\nrole_alias = "a/b"\n',
            TLS,
            "role_alias",
            "without '/'",
        ),
        (
            'credentials = "iot"\niot_credentials_endpoint = "h"\nrole_alias = "a"\n',
            '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n',
            "iot_cert_file",
            "is needed",
        ),
        ('role_alias = "a"\n', TLS, "role_alias", 'only applies with credentials = "iot"'),
        ('credentials = "instance"\n', TLS, "credentials", "must be one of chain, iot"),
    ],
)
def test_bad_iot_settings_name_the_key(
    tmp_path: Path, aws: str, mqtt: str, key: str, problem: str
) -> None:
    """Each mistake is refused with the key and what is wrong."""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, aws, mqtt))
    assert caught.value.key == f"aws.{key}"
    assert problem in caught.value.problem
