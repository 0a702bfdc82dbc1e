"""`edge migrate-core`: V1 config.json files of each common shape become loadable core.toml."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from edge.cli import main
from edge.config import load_config
from edge.errors import MigrationError
from edge.migrate_core import convert_v1_config, migrate_core
from edge.secrets.keyref import TokenKeyRef
from edge.secrets.keys import generate_key

THING_ARN = "arn:aws:iot:eu-west-1:123456789012:thing/factory-gw-7"
PIN = "00112233445566778899"


def v1_root(tmp_path: Path, *, key_mode: int = 0o600, key_type: str = "rsa") -> Path:
    """A /greengrass layout: config/ and certs/ with a CA, a certificate and an RSA or EC key."""
    root = tmp_path / "greengrass"
    (root / "config").mkdir(parents=True)
    certs = root / "certs"
    certs.mkdir()
    (certs / "root.ca.pem").write_text("CA\n")
    (certs / "abc123.cert.pem").write_text("CERT\n")
    generate_key(certs / "abc123.private.key", kind="rsa" if key_type == "rsa" else "ec")
    (certs / "abc123.private.key").chmod(key_mode)
    return root


def console_config(**core_thing: Any) -> dict[str, Any]:
    """The config.json the V1 console's default group creation wrote to a core."""
    return {
        "coreThing": {
            "caPath": "root.ca.pem",
            "certPath": "abc123.cert.pem",
            "keyPath": "abc123.private.key",
            "thingArn": THING_ARN,
            "iotHost": "a1b2c3-ats.iot.eu-west-1.amazonaws.com",
            "ggHost": "greengrass-ats.iot.eu-west-1.amazonaws.com",
            "keepAlive": 600,
            **core_thing,
        },
        "runtime": {"cgroup": {"useSystemd": "yes"}, "allowFunctionsToRunAsRoot": "no"},
        "managedRespawn": False,
        "crypto": {
            "principals": {
                "SecretsManager": {"privateKeyPath": "file:///greengrass/certs/abc123.private.key"},
            },
            "caPath": "file:///greengrass/certs/root.ca.pem",
        },
    }


def write_v1(root: Path, document: dict[str, Any]) -> Path:
    text = json.dumps(document).replace("/greengrass/", f"{root}/")
    path = root / "config" / "config.json"
    path.write_text(text)
    return path


def test_console_config_becomes_a_core_toml_edge_loads(tmp_path: Path) -> None:
    """The console's config.json maps to thing, mqtts URL, TLS files, RSA core key and region."""
    root = v1_root(tmp_path)
    output = tmp_path / "core.toml"
    migrate_core(greengrass_config=write_v1(root, console_config()), output=output)
    config = load_config(output)
    assert config.core.thing_name == "factory-gw-7"
    assert config.aws.region == "eu-west-1"
    assert config.mqtt.url == "mqtts://a1b2c3-ats.iot.eu-west-1.amazonaws.com:8883"
    assert config.mqtt.client_id == "factory-gw-7"
    assert config.mqtt.keepalive_seconds == 600
    assert config.mqtt.ca_file == root / "certs" / "root.ca.pem"
    assert config.mqtt.cert_file == root / "certs" / "abc123.cert.pem"
    assert config.mqtt.key_file == root / "certs" / "abc123.private.key"
    assert config.core.private_key == root / "certs" / "abc123.private.key"
    assert stat.S_IMODE(output.stat().st_mode) == 0o600


def test_no_key_is_copied(tmp_path: Path) -> None:
    """The conversion points at the V1 key files: the output directory gains only core.toml."""
    root = v1_root(tmp_path)
    out_dir = tmp_path / "edge"
    out_dir.mkdir()
    migrate_core(greengrass_config=write_v1(root, console_config()), output=out_dir / "core.toml")
    assert sorted(p.name for p in out_dir.iterdir()) == ["core.toml"]
    assert "PRIVATE KEY" not in (out_dir / "core.toml").read_text()


def test_custom_port_and_ec_key(tmp_path: Path) -> None:
    """A custom iotMqttPort is kept, and an EC core key is accepted like an RSA one."""
    root = v1_root(tmp_path, key_type="ec")
    output = tmp_path / "core.toml"
    migrate_core(greengrass_config=write_v1(root, console_config(iotMqttPort=8884)), output=output)
    assert load_config(output).mqtt.port == 8884


def test_iot_certificate_principal_wins_over_core_thing_paths(tmp_path: Path) -> None:
    """crypto.principals.IoTCertificate names the MQTT certificate and key when present."""
    root = v1_root(tmp_path)
    other = root / "certs" / "other.key"
    generate_key(other, kind="rsa")
    document = console_config()
    document["crypto"]["principals"]["IoTCertificate"] = {
        "certificatePath": "file:///greengrass/certs/abc123.cert.pem",
        "privateKeyPath": "file:///greengrass/certs/other.key",
    }
    output = tmp_path / "core.toml"
    migrate_core(greengrass_config=write_v1(root, document), output=output)
    assert load_config(output).mqtt.key_file == other


def test_hsm_core_key_stays_a_pkcs11_uri_with_its_pin_in_a_private_file(tmp_path: Path) -> None:
    """A pkcs11: SecretsManager key stays in its token; its PIN goes to a 0600 file, not TOML."""
    root = v1_root(tmp_path)
    document = console_config()
    document["crypto"]["PKCS11"] = {
        "OpenSSLEngine": "/usr/lib/engines-1.1/pkcs11.so",
        "P11Provider": "/usr/lib/softhsm/libsofthsm2.so",
        "slotLabel": "greengrass",
        "slotUserPin": PIN,
    }
    document["crypto"]["principals"]["SecretsManager"]["privateKeyPath"] = (
        "pkcs11:object=core-key;type=private"
    )
    output = tmp_path / "core.toml"
    conversion = migrate_core(greengrass_config=write_v1(root, document), output=output)
    key = load_config(output).core.private_key
    assert isinstance(key, TokenKeyRef)
    assert (key.token, key.label, key.module) == (
        "greengrass",
        "core-key",
        Path("/usr/lib/softhsm/libsofthsm2.so"),
    )
    assert key.pin_source == tmp_path / "core.pin"
    assert PIN not in output.read_text()
    assert (tmp_path / "core.pin").read_text().strip() == PIN
    assert stat.S_IMODE((tmp_path / "core.pin").stat().st_mode) == 0o600
    assert any(line.startswith("crypto.PKCS11.OpenSSLEngine") for line in conversion.not_mapped)


def test_mqtt_key_in_a_token_stays_a_pkcs11_uri_of_the_same_module_and_pin(
    tmp_path: Path,
) -> None:
    """An IoTCertificate key in a token becomes [mqtt] key_file = "pkcs11:...", PIN in a file."""
    root = v1_root(tmp_path)
    document = console_config()
    document["crypto"]["PKCS11"] = {
        "P11Provider": "/usr/lib/softhsm/libsofthsm2.so",
        "slotLabel": "greengrass",
        "slotUserPin": PIN,
    }
    document["crypto"]["principals"]["IoTCertificate"] = {
        "certificatePath": "file:///greengrass/certs/abc123.cert.pem",
        "privateKeyPath": "pkcs11:object=iot-key;type=private",
    }
    output = tmp_path / "core.toml"
    migrate_core(greengrass_config=write_v1(root, document), output=output)
    config = load_config(output)
    key = config.mqtt.key_file
    assert isinstance(key, TokenKeyRef)
    assert (key.token, key.label, key.module, key.pin_source) == (
        "greengrass",
        "iot-key",
        Path("/usr/lib/softhsm/libsofthsm2.so"),
        tmp_path / "core.pin",
    )
    assert config.mqtt.cert_file == root / "certs" / "abc123.cert.pem"
    # The secrets key is still the file V1 used for it.
    assert config.core.private_key == root / "certs" / "abc123.private.key"
    assert PIN not in output.read_text()
    assert (tmp_path / "core.pin").read_text().strip() == PIN
    assert stat.S_IMODE((tmp_path / "core.pin").stat().st_mode) == 0o600


def test_mqtt_key_in_a_token_without_pkcs11_provider_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Converting on a machine without OpenSSL's pkcs11-provider says what to install first."""
    monkeypatch.setenv("OPENSSL_MODULES", str(tmp_path))  # OpenSSL looks for providers here
    root = v1_root(tmp_path)
    document = console_config()
    document["crypto"]["PKCS11"] = {"P11Provider": "/usr/lib/softhsm/libsofthsm2.so"}
    document["crypto"]["principals"]["IoTCertificate"] = {
        "certificatePath": "file:///greengrass/certs/abc123.cert.pem",
        "privateKeyPath": "pkcs11:object=iot-key;type=private",
    }
    conversion = migrate_core(
        greengrass_config=write_v1(root, document), output=tmp_path / "core.toml"
    )
    assert any(
        "pkcs11-provider is not installed" in w and "apt-get install pkcs11-provider" in w
        for w in conversion.warnings
    ), conversion.warnings


def test_mqtt_key_in_a_token_needs_the_module(tmp_path: Path) -> None:
    """Without crypto.PKCS11.P11Provider there is no module to open the token: nothing written."""
    root = v1_root(tmp_path)
    document = console_config()
    document["crypto"]["principals"]["IoTCertificate"] = {
        "certificatePath": "file:///greengrass/certs/abc123.cert.pem",
        "privateKeyPath": "pkcs11:object=iot-key;type=private",
    }
    output = tmp_path / "core.toml"
    with pytest.raises(MigrationError, match=r"crypto\.PKCS11\.P11Provider"):
        migrate_core(greengrass_config=write_v1(root, document), output=output)
    assert not output.exists()


def test_what_is_not_carried_over_is_listed_with_reasons(tmp_path: Path) -> None:
    """ggHost, the cgroup settings and managedRespawn are each reported with why."""
    conversion = convert_v1_config(
        console_config(), where="config.json", greengrass_root=v1_root(tmp_path)
    )
    named = {line.split(":", 1)[0] for line in conversion.not_mapped}
    assert {"coreThing.ggHost", "runtime.cgroup", "managedRespawn"} <= named
    assert all(": " in line and len(line.split(": ", 1)[1]) > 10 for line in conversion.not_mapped)


def test_loose_key_modes_are_reported_with_the_chmod(tmp_path: Path) -> None:
    """A key others can read is reported with the command that fixes it; no mode is changed."""
    root = v1_root(tmp_path, key_mode=0o644)
    conversion = convert_v1_config(console_config(), where="c", greengrass_root=root)
    key = root / "certs" / "abc123.private.key"
    assert any(f"chmod 600 {key}" in w for w in conversion.warnings)
    assert stat.S_IMODE(key.stat().st_mode) == 0o644


def test_missing_trusted_key_is_a_warning_and_a_given_one_is_written(tmp_path: Path) -> None:
    """Without --trusted-key the operator is told deployments will be refused."""
    root = v1_root(tmp_path)
    bare = convert_v1_config(console_config(), where="c", greengrass_root=root)
    assert any("trusted_keys" in w for w in bare.warnings)
    pub = tmp_path / "cloud.pub"
    pub.write_text("PUB")
    keyed = convert_v1_config(console_config(), where="c", greengrass_root=root, trusted_keys=[pub])
    assert not any("trusted_keys" in w for w in keyed.warnings)
    assert tomllib.loads(keyed.toml)["deployments"]["trusted_keys"] == [str(pub)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"thingArn": "arn:aws:iot:eu-west-1:1:policy/x"}, "thingArn must look like"),
        ({"thingArn": None}, "thingArn is required"),
        ({"iotHost": None}, "iotHost is required"),
        ({"iotMqttPort": "8883"}, "iotMqttPort must be a port number"),
    ],
)
def test_malformed_v1_configs_are_refused_clearly(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    """A V1 config missing what edge needs names the key; nothing is written."""
    root = v1_root(tmp_path)
    document = console_config(**change)
    output = tmp_path / "core.toml"
    with pytest.raises(MigrationError, match=message):
        migrate_core(greengrass_config=write_v1(root, document), output=output)
    assert not output.exists()


def test_existing_output_is_kept_without_force(tmp_path: Path) -> None:
    """An existing core.toml is not overwritten unless --force is given."""
    root = v1_root(tmp_path)
    source = write_v1(root, console_config())
    output = tmp_path / "core.toml"
    output.write_text("# mine\n")
    with pytest.raises(MigrationError, match="--force"):
        migrate_core(greengrass_config=source, output=output)
    assert output.read_text() == "# mine\n"
    migrate_core(greengrass_config=source, output=output, force=True)
    assert load_config(output).core.thing_name == "factory-gw-7"


def test_cli_prints_what_it_wrote_and_what_it_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`edge migrate-core` reports the thing, what it left and warnings; bad input exits 2."""
    root = v1_root(tmp_path, key_mode=0o640)
    source = write_v1(root, console_config())
    output = tmp_path / "core.toml"
    assert main(["migrate-core", "--greengrass-config", str(source), "-o", str(output)]) == 0
    out, err = capsys.readouterr()
    assert "factory-gw-7" in out
    assert "coreThing.ggHost" in out
    assert "chmod 600" in err
    missing = str(tmp_path / "nope.json")
    assert main(["migrate-core", "--greengrass-config", missing, "-o", "x"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert output.exists()


def test_role_alias_turns_on_iot_credentials_from_the_thing_certificate(tmp_path: Path) -> None:
    """With --role-alias, the core exchanges its V1 certificate for credentials, as V1 did."""
    root = v1_root(tmp_path)
    output = tmp_path / "core.toml"
    migrate_core(
        greengrass_config=write_v1(root, console_config()),
        output=output,
        iot_credentials=("c2abc.credentials.iot.eu-west-1.amazonaws.com", "gg-core-role"),
    )
    iot = load_config(output).aws.iot
    assert iot is not None
    assert iot.role_alias == "gg-core-role"
    assert iot.thing_name == "factory-gw-7"
    assert iot.cert_file == root / "certs" / "abc123.cert.pem"
    assert iot.key_file == root / "certs" / "abc123.private.key"


def test_role_alias_without_endpoint_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The two IoT-credentials options go together; nothing is written otherwise."""
    source = write_v1(v1_root(tmp_path), console_config())
    output = tmp_path / "core.toml"
    argv = ["migrate-core", "--greengrass-config", str(source), "-o", str(output)]
    assert main([*argv, "--role-alias", "r"]) == 2
    assert "go together" in capsys.readouterr().err
    assert not output.exists()
