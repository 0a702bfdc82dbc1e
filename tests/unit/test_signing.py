"""Signed deployment envelopes: sealing, verification, replay checks, key files, core settings."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from edge.config import load_config
from edge.deploy.trust import DeploymentTrust
from edge.envelope import MAX_ENVELOPE_BYTES, check_fresh, signed_message
from edge.errors import (
    BadSignatureError,
    ConfigError,
    EnvelopeMalformedError,
    SignatureError,
    SigningKeyError,
    StaleDeploymentError,
    UnsignedDeploymentError,
    UntrustedKeyError,
    WrongThingError,
)
from edge.signing import (
    key_id,
    load_public_key,
    load_signing_key,
    open_envelope,
    private_key_pem,
    public_key_pem,
    seal,
)

THING = "core-1"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
TRUSTED = {key_id(KEY.public_key()): KEY.public_key()}
DOCUMENT = json.dumps(
    {
        "DeploymentId": "d-1",
        "DeploymentType": "NewDeployment",
        "GroupId": "g",
        "GroupVersionId": "v",
        "CreatedAt": "2026-11-28T12:00:00.000001Z",
        "Group": {"Resources": []},
    }
).encode()
ENVELOPE = seal(DOCUMENT, signing_key=KEY, thing_name=THING)


def open_(payload: bytes, *, allow_unsigned: bool = False) -> bytes:
    return open_envelope(payload, TRUSTED, thing_name=THING, allow_unsigned=allow_unsigned).document


def test_seal_then_open_returns_the_exact_document_and_signer() -> None:
    """A sealed document opens to the very same bytes, with the signer's key id."""
    opened = open_envelope(ENVELOPE, TRUSTED, thing_name=THING)
    assert opened.document == DOCUMENT
    assert opened.key_id == key_id(KEY.public_key())


def test_envelope_format_is_as_documented() -> None:
    """The envelope has exactly the documented keys; the signature covers context+thing+doc."""
    envelope = json.loads(ENVELOPE)
    assert set(envelope) == {"Envelope", "KeyId", "ThingName", "Document", "Signature"}
    assert envelope["Envelope"] == "edge-signed-v1"
    assert envelope["ThingName"] == THING
    assert base64.b64decode(envelope["Document"]) == DOCUMENT
    message = b"edge-deployment-v1\n" + THING.encode() + b"\n" + DOCUMENT
    assert signed_message(DOCUMENT, THING) == message
    KEY.public_key().verify(base64.b64decode(envelope["Signature"]), message)


@given(index=st.integers(min_value=0, max_value=len(ENVELOPE) - 1), new=st.integers(0, 255))
def test_any_byte_change_to_the_envelope_fails(index: int, new: int) -> None:
    """Changing any one byte of an envelope, to anything else, makes it fail verification."""
    if ENVELOPE[index] == new:
        return
    changed = bytearray(ENVELOPE)
    changed[index] = new
    with pytest.raises(SignatureError):
        open_(bytes(changed))


@given(index=st.integers(min_value=0, max_value=len(DOCUMENT) - 1), new=st.integers(0, 255))
def test_any_byte_change_to_the_document_fails(index: int, new: int) -> None:
    """A document altered by one byte under the original signature is refused as tampered."""
    if DOCUMENT[index] == new:
        return
    changed = bytearray(DOCUMENT)
    changed[index] = new
    envelope = json.loads(ENVELOPE)
    envelope["Document"] = base64.b64encode(bytes(changed)).decode()
    with pytest.raises(BadSignatureError):
        open_(json.dumps(envelope).encode())


def test_another_key_is_untrusted_and_a_borrowed_key_id_does_not_verify() -> None:
    """A signature by an unknown key is refused; claiming a trusted KeyId doesn't help."""
    forged = seal(DOCUMENT, signing_key=OTHER, thing_name=THING)
    with pytest.raises(UntrustedKeyError):
        open_(forged)
    borrowed = json.loads(forged)
    borrowed["KeyId"] = key_id(KEY.public_key())
    with pytest.raises(BadSignatureError):
        open_(json.dumps(borrowed).encode())


def test_a_document_signed_for_another_thing_is_refused() -> None:
    """The thing name is part of what is signed: another core's document doesn't open here."""
    elsewhere = seal(DOCUMENT, signing_key=KEY, thing_name="core-2")
    with pytest.raises(WrongThingError, match="core-2"):
        open_(elsewhere)
    relabelled = json.loads(elsewhere)
    relabelled["ThingName"] = THING
    with pytest.raises(BadSignatureError):
        open_(json.dumps(relabelled).encode())


def test_unsigned_documents_are_refused_unless_allowed() -> None:
    """Plain JSON (or garbage) is unsigned: refused, or passed through with allow_unsigned."""
    for payload in (DOCUMENT, b"\xff garbage", b"[1, 2]"):
        with pytest.raises(UnsignedDeploymentError, match="not signed"):
            open_(payload)
        opened = open_envelope(payload, TRUSTED, thing_name=THING, allow_unsigned=True)
        assert (opened.document, opened.key_id) == (payload, None)


def test_allow_unsigned_never_waves_a_bad_envelope_through() -> None:
    """With allow_unsigned, an envelope must still verify: a forged one is refused."""
    forged = seal(DOCUMENT, signing_key=OTHER, thing_name=THING)
    with pytest.raises(UntrustedKeyError):
        open_(forged, allow_unsigned=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("Signature"), "missing Signature"),
        (lambda e: e.update(Extra="x"), "unknown key 'Extra'"),
        (lambda e: e.update(Envelope="edge-signed-v2"), "unknown envelope format"),
        (lambda e: e.update(KeyId="ABC"), "KeyId must be 64"),
        (lambda e: e.update(ThingName=7), "ThingName must be a non-empty string"),
        (lambda e: e.update(Signature="!!!!"), "Signature is not valid base64"),
        (lambda e: e.update(Signature=base64.b64encode(b"x" * 63).decode()), "must be 64 bytes"),
    ],
)
def test_malformed_envelopes_are_refused_naming_the_problem(change, message) -> None:
    """An envelope that breaks the format is refused with a message naming what is wrong."""
    envelope = json.loads(ENVELOPE)
    change(envelope)
    with pytest.raises(EnvelopeMalformedError, match=message):
        open_(json.dumps(envelope).encode())


def test_non_canonical_base64_and_repeated_keys_are_refused() -> None:
    """Base64 with stray low bits, and a repeated key, are not another spelling of an envelope."""
    envelope = json.loads(ENVELOPE)
    signature = envelope["Signature"]
    assert signature.endswith("==")
    # 64 bytes -> 88 chars, the last data char carries 4 unused bits: flip one of them.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = signature[-3]
    envelope["Signature"] = signature[:-3] + alphabet[alphabet.index(last) ^ 1] + "=="
    assert base64.b64decode(envelope["Signature"]) == base64.b64decode(signature)
    with pytest.raises(EnvelopeMalformedError, match="canonical"):
        open_(json.dumps(envelope).encode())
    doubled = ENVELOPE.replace(b'{"Envelope"', b'{"KeyId":"x","Envelope"', 1)
    with pytest.raises(EnvelopeMalformedError, match="twice"):
        open_(doubled)


def test_oversized_payload_is_refused_before_parsing() -> None:
    """A payload over the bound is refused without being parsed."""
    with pytest.raises(EnvelopeMalformedError, match="allowed"):
        open_(b" " * (MAX_ENVELOPE_BYTES + 1))


def test_check_fresh_refuses_only_strictly_older_documents() -> None:
    """Older than the applied deployment is a replay; same age or newer passes; no store passes."""
    applied = "2026-11-28T12:00:00.500000Z"
    check_fresh("d", applied, applied)
    check_fresh("d", "2026-11-28T12:00:01Z", applied)
    check_fresh("d", "2020-01-01T00:00:00Z", None)
    with pytest.raises(StaleDeploymentError, match="create a new deployment"):
        check_fresh("d", "2026-11-28T12:00:00.4Z", applied)
    # Without an offset a time is taken as UTC, so naive and aware compare.
    with pytest.raises(StaleDeploymentError):
        check_fresh("d", "2026-11-28T11:59:59", applied)
    check_fresh("d", "2026-11-28T14:00:00+01:00", applied)


def write_key(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_signing_key_files_load_and_bad_ones_say_why(tmp_path: Path) -> None:
    """The private key must be an unencrypted Ed25519 PEM, 0600; errors say how to fix."""
    good = write_key(tmp_path / "k.pem", private_key_pem(KEY))
    assert key_id(load_signing_key(good).public_key()) == key_id(KEY.public_key())
    with pytest.raises(SigningKeyError, match="edge cloud init"):
        load_signing_key(tmp_path / "missing.pem")
    loose = write_key(tmp_path / "loose.pem", private_key_pem(KEY), 0o644)
    with pytest.raises(SigningKeyError, match="chmod 0600"):
        load_signing_key(loose)
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(SigningKeyError, match="not an Ed25519 key"):
        load_signing_key(write_key(tmp_path / "ec.pem", ec_pem))
    with pytest.raises(SigningKeyError, match="PEM"):
        load_signing_key(write_key(tmp_path / "junk.pem", b"junk"))


async def test_public_keys_load_into_a_trust(tmp_path: Path) -> None:
    """Trusted keys are read from PEM files; a wrong or missing file is an error naming it."""
    pub = write_key(tmp_path / "k.pub", public_key_pem(KEY.public_key()), 0o644)
    trust = DeploymentTrust.load(THING, [pub])
    assert (await trust.open(ENVELOPE)).document == DOCUMENT
    with pytest.raises(SigningKeyError, match="no such file"):
        load_public_key(tmp_path / "nope.pub")
    with pytest.raises(SigningKeyError, match="not a PEM public key"):
        load_public_key(write_key(tmp_path / "bad.pub", private_key_pem(KEY)))


def test_core_deployments_section_resolves_keys_and_defaults_to_signed_only(
    tmp_path: Path,
) -> None:
    """[deployments] trusted_keys resolve next to the config; allow_unsigned defaults to false."""
    base = '[core]\nthing_name = "c"\n[aws]\nregion = "us-east-1"\n'
    path = tmp_path / "core.toml"
    path.write_text(base)
    config = load_config(path)
    assert config.deployments.trusted_keys == ()
    assert config.deployments.allow_unsigned is False
    path.write_text(base + '[deployments]\ntrusted_keys = ["k/a.pub"]\nallow_unsigned = true\n')
    config = load_config(path)
    assert config.deployments.trusted_keys == (tmp_path / "k" / "a.pub",)
    assert config.deployments.allow_unsigned is True
    for bad, key in [
        ('trusted_keys = "a.pub"', "deployments.trusted_keys"),
        ("trusted_keys = [1]", "deployments.trusted_keys"),
        ('allow_unsigned = "yes"', "deployments.allow_unsigned"),
        ("trusted = []", "deployments.trusted"),
    ]:
        path.write_text(base + f"[deployments]\n{bad}\n")
        with pytest.raises(ConfigError, match=key):
            load_config(path)


def test_flipping_any_bit_anywhere_in_the_envelope_fails() -> None:
    """Exhaustively: each position of the envelope, with its lowest bit flipped, is refused."""
    for index in range(len(ENVELOPE)):
        changed = bytearray(ENVELOPE)
        changed[index] ^= 0x01
        with pytest.raises(SignatureError):
            open_(bytes(changed))
