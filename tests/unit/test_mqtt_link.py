"""The MQTT link's TLS set-up: key permissions, unusable files, and what a refusal means."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import MqttSettings
from edge.errors import ConfigError, InsecurePermissionsError
from edge.mqtt.link import explain_connect_error, tls_context
from tests.support.tls import make_pki


def settings(**files: Path) -> MqttSettings:
    return MqttSettings(
        url="mqtts://127.0.0.1:8883", host="127.0.0.1", port=8883, tls=True, **files
    )


def test_client_certificate_and_key_make_a_context(tmp_path: Path) -> None:
    """A CA, a client certificate and its 0600 key give a context that verifies the broker."""
    pki = make_pki(tmp_path)
    context = tls_context(
        settings(ca_file=pki.ca.cert, cert_file=pki.client.cert, key_file=pki.client.key)
    )
    assert context is not None
    assert context.check_hostname


def test_key_others_can_read_is_refused_with_the_chmod(tmp_path: Path) -> None:
    """A group-readable client key is refused, and the message has the command that fixes it."""
    pki = make_pki(tmp_path)
    pki.client.key.chmod(0o640)
    with pytest.raises(InsecurePermissionsError, match=r"chmod 0600 .*test-client\.key"):
        tls_context(
            settings(ca_file=pki.ca.cert, cert_file=pki.client.cert, key_file=pki.client.key)
        )


@pytest.mark.parametrize("broken", ["ca_file", "cert_file"])
def test_unusable_files_are_config_errors_naming_the_file(tmp_path: Path, broken: str) -> None:
    """A missing CA file or certificate is a ConfigError naming it, not an ssl traceback."""
    pki = make_pki(tmp_path)
    files = {"ca_file": pki.ca.cert, "cert_file": pki.client.cert, "key_file": pki.client.key}
    files[broken] = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=rf"missing\.pem.*{broken}"):
        tls_context(settings(**files))


@pytest.mark.parametrize(
    ("error", "names"),
    [
        ("[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required", "cert_file"),
        ("[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca", "cert_file"),
        ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", "ca_file"),
    ],
)
def test_tls_refusals_say_which_setting_to_fix(error: str, names: str) -> None:
    """Each TLS refusal the broker or the handshake gives is explained with the key to fix."""
    hint = explain_connect_error(f"failed to receive on socket: {error} (_ssl.c:2580)")
    assert hint is not None
    assert f"[mqtt] {names}" in hint


def test_plain_network_errors_get_no_tls_hint() -> None:
    """A refused TCP connection is not a TLS problem and gets no TLS advice."""
    assert explain_connect_error("[Errno 111] Connection refused") is None
