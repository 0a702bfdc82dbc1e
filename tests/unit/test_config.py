"""Config parsing: defaults, path resolution, and errors that name the offending key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge.config import load_config
from edge.errors import ConfigError, ConfigPermissionsError

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """
[core]
thing_name = "core-1"
[aws]
region = "eu-west-1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "core.toml"
    path.write_text(text)
    return path


def test_minimal_config_gets_documented_defaults(tmp_path: Path) -> None:
    """Only thing_name and region are required; everything else has a working default."""
    config = load_config(write(tmp_path, MINIMAL))
    assert config.core.state_dir == tmp_path / "state"
    assert config.core.private_key == tmp_path / "state" / "core.key"
    assert config.mqtt.url == "mqtt://127.0.0.1:1883"
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls) == ("127.0.0.1", 1883, False)
    assert config.mqtt.deployments_topic("core-1") == "edge/things/core-1/deployments"
    assert config.mqtt.status_topic("core-1") == "edge/things/core-1/deployments/status"
    assert config.aws.endpoint_url is None
    assert config.fetch.concurrency == 16
    assert config.log.format == "auto"


def test_example_config_is_valid() -> None:
    """config.example.toml, shipped in the repo, parses as it is."""
    config = load_config(REPO / "config.example.toml")
    assert config.core.thing_name == "edge-core-1"
    assert config.aws.endpoint_url == "http://127.0.0.1:5000"


def test_mqtts_url_takes_tls_files_relative_to_the_config(tmp_path: Path) -> None:
    """An mqtts:// url defaults to port 8883 and resolves certificate paths next to the file."""
    text = MINIMAL + '[mqtt]\nurl = "mqtts://broker.example"\nca_file = "certs/ca.pem"\n'
    config = load_config(write(tmp_path, text))
    assert config.mqtt.port == 8883
    assert config.mqtt.tls
    assert config.mqtt.ca_file == tmp_path / "certs" / "ca.pem"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (MINIMAL + "[core.extra]\n", "core.extra"),
        (
            MINIMAL.replace('thing_name = "core-1"', 'thing_name = "core-1"\nthing = "x"'),
            "core.thing",
        ),
        (MINIMAL + "[fetch]\nconcurrency = '16'\n", "fetch.concurrency"),
        (MINIMAL + "[fetch]\nconcurrency = 0\n", "fetch.concurrency"),
        (MINIMAL + "[fetch]\nuse_batch = 1\n", "fetch.use_batch"),
        (MINIMAL + "[fetch]\ndeadline_seconds = true\n", "fetch.deadline_seconds"),
        (MINIMAL + '[mqtt]\nurl = "http://x"\n', "mqtt.url"),
        (MINIMAL + '[mqtt]\nurl = "mqtt://x:99999"\n', "mqtt.url"),
        (MINIMAL + '[mqtt]\nca_file = "ca.pem"\n', "mqtt.url"),
        (MINIMAL + '[mqtt]\ntopic_prefix = "a/#"\n', "mqtt.topic_prefix"),
        (MINIMAL + '[log]\nlevel = "loud"\n', "log.level"),
        (MINIMAL + "[bogus]\n", "[bogus]"),
        ("[core]\nthing_name = 'a/b'\n[aws]\nregion='x'\n", "core.thing_name"),
        ("[core]\n[aws]\nregion='x'\n", "core.thing_name"),
        ("[core]\nthing_name = 'a'\n", "aws.region"),
        (
            '[core]\nthing_name = "a"\n[aws]\nregion = "x"\nendpoint_url = "ftp://x"\n',
            "aws.endpoint_url",
        ),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, named: str) -> None:
    """Unknown keys, wrong types and bad values are errors that name the key."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert named in str(info.value)
    assert str(tmp_path / "core.toml") in str(info.value)


def test_missing_and_malformed_files_are_clear_errors(tmp_path: Path) -> None:
    """A missing file and a file that isn't TOML each get a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[core\n"))


def test_local_code_dirs_default_to_none_and_resolve_from_the_config(tmp_path: Path) -> None:
    """`[workers] local_code_dirs` is empty unless set; relative entries are from the file's dir."""
    assert load_config(write(tmp_path, MINIMAL)).workers.local_code_dirs == ()
    text = MINIMAL + '[workers]\nlocal_code_dirs = ["code", "/opt/functions"]\n'
    config = load_config(write(tmp_path, text))
    assert config.workers.local_code_dirs == (tmp_path / "code", Path("/opt/functions"))


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_config_others_can_write_is_refused_with_the_chmod(tmp_path: Path, mode: int) -> None:
    """A config that group or others can write is refused, naming the file, mode and fix."""
    path = write(tmp_path, MINIMAL)
    path.chmod(mode)
    with pytest.raises(ConfigPermissionsError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert f"{mode:04o}" in message
    assert f"chmod {mode & 0o755:04o} {path}" in message


def test_config_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """A config another user owns (who could rewrite it) is refused, naming the chown."""
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    path = write(tmp_path, MINIMAL)
    os.chown(path, 12345, -1)
    with pytest.raises(ConfigPermissionsError, match=r"owned by uid 12345.*chown 0 "):
        load_config(path)


def test_config_holding_a_pin_must_be_private(tmp_path: Path) -> None:
    """A config with a PKCS#11 pin-value is refused while others can read it; 0600 passes."""
    key = 'private_key = "pkcs11:token=t;object=k?pin-value=1234"\npkcs11_module = "/x.so"\n'
    path = write(tmp_path, MINIMAL.replace('thing_name = "core-1"\n', f'thing_name = "c"\n{key}'))
    path.chmod(0o644)
    with pytest.raises(ConfigPermissionsError) as info:
        load_config(path)
    assert f"chmod 0600 {path}" in str(info.value)
    assert "1234" not in str(info.value)
    path.chmod(0o600)
    assert load_config(path).core.thing_name == "c"
    # Without a PIN, a config others can read is fine: it holds nothing secret.
    path.write_text(MINIMAL)
    path.chmod(0o644)
    assert load_config(path).core.thing_name == "core-1"


def test_a_read_only_mount_skips_the_owner_and_write_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a read-only mount (a container's :ro bind of a host file) nobody can change the file.

    Mounting needs privileges a test may not have, so the mount flag is what is faked.
    """
    path = write(tmp_path, MINIMAL)
    path.chmod(0o664)
    real = os.fstatvfs

    def read_only(fd: int) -> os.statvfs_result:
        result = real(fd)
        fields = list(result)
        fields[8] |= os.ST_RDONLY  # f_flag
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, "fstatvfs", read_only)
    assert load_config(path).core.thing_name == "core-1"
    key = 'private_key = "pkcs11:token=t;object=k?pin-value=1234"\npkcs11_module = "/x.so"\n'
    path.write_text(MINIMAL.replace('thing_name = "core-1"\n', f'thing_name = "c"\n{key}'))
    with pytest.raises(ConfigPermissionsError, match="chmod 0600"):
        load_config(path)
