"""PKCS#11 URIs for token-held core keys: parsing, validation and the [core] keys around them.

The token itself is exercised for real in tests/integration/test_pkcs11.py; these are the pure
parts, which need no token.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import parse_config
from edge.errors import ConfigError
from edge.secrets.keyref import TokenKeyRef, is_pkcs11_uri, parse_token_key_uri, redact_uri

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
PIN = "s3cret-user-pin-4711"


def parse(uri: str, *, module: Path | None = MODULE, public_key: Path | None = None) -> TokenKeyRef:
    return parse_token_key_uri(
        uri, base_dir=Path("/etc/edge"), module=module, public_key=public_key
    )


def core_config(**core: object) -> dict[str, object]:
    return {"core": {"thing_name": "t", **core}, "aws": {"region": "eu-west-1"}}


def test_rfc7512_path_and_query_attributes() -> None:
    """Path attributes select token and object; query attributes give PIN and module."""
    ref = parse(
        "pkcs11:token=My%20Token;manufacturer=SoftHSM%20project;serial=abc;model=m;"
        "slot-id=7;object=core;id=%01%02;type=private"
        "?pin-source=file:/run/edge/pin&module-path=/opt/hsm/lib.so",
        module=None,
    )
    assert ref.token == "My Token"
    assert ref.manufacturer == "SoftHSM project"
    assert (ref.serial, ref.model, ref.slot_id) == ("abc", "m", 7)
    assert ref.label == "core"
    assert ref.key_id == b"\x01\x02"
    assert ref.pin is None
    assert ref.pin_source == Path("/run/edge/pin")
    assert ref.module == Path("/opt/hsm/lib.so")


def test_pin_value_is_kept_but_never_shown() -> None:
    """An inline pin-value is used, but the URI shown in messages and repr masks it."""
    ref = parse(f"pkcs11:token=t;object=k?pin-value={PIN}")
    assert ref.pin == PIN
    assert ref.uri == "pkcs11:token=t;object=k?pin-value=***"
    assert PIN not in repr(ref)


def test_pin_attributes_are_also_accepted_in_the_path() -> None:
    """libp11 (OpenSSL's engine) writes pin-value in the path; such URIs work too."""
    assert parse(f"pkcs11:token=t;object=k;pin-value={PIN}").pin == PIN


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("file:/run/pin", "/run/pin"),
        ("file:///run/pin", "/run/pin"),
        ("/run/pin", "/run/pin"),
        ("file:pin.txt", "/etc/edge/pin.txt"),
    ],
)
def test_pin_source_forms(source: str, expected: str) -> None:
    """pin-source takes a file: URI or a path; relative ones are beside the config file."""
    assert parse(f"pkcs11:object=k?pin-source={source}").pin_source == Path(expected)


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("pkcs11:token=t", "name the key with object=<label> and/or id="),
        ("pkcs11:object=k;library-version=1", "unsupported path attribute 'library-version'"),
        ("pkcs11:object=k?module-name=softhsm2", "unsupported query attribute 'module-name'"),
        ("pkcs11:object=k;object=j", "'object' is given twice"),
        ("pkcs11:object=", "'object' needs a value"),
        ("pkcs11:object=k?pin-value=1&pin-source=/p", "pin-value or pin-source, not both"),
        ("pkcs11:object=k;type=public", "type must be 'private'"),
        ("pkcs11:object=k;slot-id=x", "slot-id must be a decimal number"),
        ("pkcs11:object=k?pin-source=https://h/pin", "pin-source must be a file: URI or a path"),
        ("pkcs11:object=%ff", "object is not percent-encoded UTF-8"),
    ],
)
def test_malformed_uris_say_what_is_wrong(uri: str, problem: str) -> None:
    """Each mistake in a URI gets a message that names it."""
    with pytest.raises(ValueError, match=problem):
        parse(uri)


def test_a_module_is_required_and_must_agree() -> None:
    """The module comes from [core] pkcs11_module or module-path; missing or conflicting fails."""
    with pytest.raises(ValueError, match=r"Set \[core\] pkcs11_module"):
        parse("pkcs11:object=k", module=None)
    with pytest.raises(ValueError, match="differs from"):
        parse("pkcs11:object=k?module-path=/other.so")
    assert parse(f"pkcs11:object=k?module-path={MODULE}").module == MODULE


def test_uri_detection_and_redaction() -> None:
    """Only pkcs11: URIs are token keys; redaction masks every pin-value, wherever it is."""
    assert is_pkcs11_uri("PKCS11:object=k")
    assert not is_pkcs11_uri("state/core.key")
    assert redact_uri("pkcs11:object=k;pin-value=a?pin-value=b&x=1") == (
        "pkcs11:object=k;pin-value=***?pin-value=***&x=1"
    )


def test_config_reads_a_token_key(tmp_path: Path) -> None:
    """[core] private_key as a URI, with pkcs11_module and public_key, gives a TokenKeyRef."""
    raw = core_config(
        private_key=f"pkcs11:token=edge;object=core?pin-value={PIN}",
        pkcs11_module=str(MODULE),
        public_key="core.pub.pem",
    )
    config = parse_config(raw, path=tmp_path / "core.toml")
    ref = config.core.private_key
    assert isinstance(ref, TokenKeyRef)
    assert ref.module == MODULE
    assert ref.public_key == tmp_path / "core.pub.pem"
    assert PIN not in repr(config)


def test_config_errors_name_the_key_and_hide_the_pin(tmp_path: Path) -> None:
    """A bad URI is a ConfigError on core.private_key whose message masks the PIN."""
    raw = core_config(private_key=f"pkcs11:token=edge?pin-value={PIN}")
    with pytest.raises(ConfigError, match=r"core\.private_key") as info:
        parse_config(raw, path=tmp_path / "core.toml")
    assert PIN not in str(info.value)
    assert "pin-value=***" in str(info.value)


@pytest.mark.parametrize("key", ["pkcs11_module", "public_key"])
def test_token_keys_need_a_token_uri(tmp_path: Path, key: str) -> None:
    """pkcs11_module and public_key beside a key file are mistakes, and say so."""
    raw = core_config(private_key="core.key", **{key: "/x"})
    with pytest.raises(ConfigError, match=f"core.{key}.*only applies to a private_key"):
        parse_config(raw, path=tmp_path / "core.toml")


def test_file_keys_are_unchanged(tmp_path: Path) -> None:
    """Without a URI, private_key is still a path (default: state/core.key)."""
    config = parse_config(core_config(), path=tmp_path / "core.toml")
    assert config.core.private_key == tmp_path / "state" / "core.key"
