# SPDX-License-Identifier: Apache-2.0
"""The core reads trusted Ed25519 public keys with no crypto library, as `cryptography` does.

`edge.envelope.parse_public_key_pem` must accept exactly the files that `cryptography`'s
`load_pem_public_key` reads as an Ed25519 key, with the same key, and refuse the rest: checked
on a corpus of real key files of every kind and, exhaustively, on every file one byte away
from valid ones. The one deliberate difference (PEM headers) is tested on its own.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x25519
from cryptography.x509.oid import NameOID

from edge.envelope import ED25519_SPKI_PREFIX, load_trusted_key, parse_public_key_pem, raw_key_id
from edge.errors import SigningKeyError
from edge.signing import key_id, private_key_pem, public_key_pem

KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PEM = public_key_pem(KEY.public_key())
RAW = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
SPKI = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo


def theirs(data: bytes) -> bytes | None:
    """What `cryptography` reads: the raw Ed25519 key, or None (refused, or another kind)."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        return None
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def ours(data: bytes) -> bytes | None:
    try:
        return parse_public_key_pem(data)
    except ValueError:
        return None


def armored(der: bytes, label: bytes = b"PUBLIC KEY") -> bytes:
    body = base64.encodebytes(der)
    return b"-----BEGIN " + label + b"-----\n" + body + b"-----END " + label + b"-----\n"


def certificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "c")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2024, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2034, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


CORPUS: dict[str, bytes] = {
    "edge cloud init's file": PEM,
    "CRLF lines": PEM.replace(b"\n", b"\r\n"),
    "no final newline": PEM.rstrip(),
    "explanatory text around it": b"the control plane's key\n" + PEM + b"\nend\n",
    "two keys, the first counts": PEM
    + public_key_pem(ed25519.Ed25519PrivateKey.generate().public_key()),
    "base64 in short lines": armored(ED25519_SPKI_PREFIX + RAW).replace(b"AAECAwQF", b"AAEC\nAwQF"),
    "spaces and tabs in the body": PEM.replace(b"\nMCow", b"\n \tMCow"),
    "an RSA key": rsa.generate_private_key(65537, 2048).public_key().public_bytes(*SPKI),
    "an EC key": ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(*SPKI),
    "an X25519 key": x25519.X25519PrivateKey.generate().public_key().public_bytes(*SPKI),
    "an Ed448 key": ed448.Ed448PrivateKey.generate().public_key().public_bytes(*SPKI),
    "an RSA key in PKCS#1": rsa.generate_private_key(65537, 2048)
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
    "the private key": private_key_pem(KEY),
    "a certificate": certificate(),
    "empty": b"",
    "not PEM": b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA...",
    "truncated": PEM[: len(PEM) // 2],
    "unpadded base64": PEM.replace(b"=", b""),
    "an Ed25519 OID with NULL parameters": armored(
        bytes.fromhex("302c300706032b65700500032100") + RAW
    ),
    "unused bits in the bit string": armored(bytes.fromhex("302a300506032b6570032101") + RAW),
    "a long-form length": armored(bytes.fromhex("30812a300506032b6570032100") + RAW),
    "31 bytes of key": armored(bytes.fromhex("3029300506032b6570032000") + RAW[:31]),
    "a byte after the key": armored(ED25519_SPKI_PREFIX + RAW + b"\x00"),
    "the Ed448 OID with 32 bytes": armored(bytes.fromhex("302a300506032b6571032100") + RAW),
    "END of another label": PEM.replace(b"END PUBLIC", b"END PRIVATE"),
    "a blank line before END": PEM.replace(b"\n-----END", b"\n\n-----END"),
    "six dashes before BEGIN": b"-" + PEM,
}


@pytest.mark.parametrize("name", CORPUS)
def test_it_agrees_with_cryptography_on_real_files(name: str) -> None:
    """Valid files give the same key; every other kind of file is refused by both."""
    assert ours(CORPUS[name]) == theirs(CORPUS[name])


def one_byte_away(data: bytes) -> Iterator[bytes]:
    """Every file with one byte of `data` replaced, removed, or (a few kinds) inserted."""
    for i in range(len(data)):
        for value in range(256):
            if value != data[i]:
                yield data[:i] + bytes([value]) + data[i + 1 :]
        yield data[:i] + data[i + 1 :]
    for i in range(len(data) + 1):
        for value in b" \t\r\n\x0b-=:A":
            yield data[:i] + bytes([value]) + data[i:]


@pytest.mark.parametrize(
    "base", ["edge cloud init's file", "CRLF lines", "explanatory text around it"]
)
def test_it_agrees_with_cryptography_on_every_file_one_byte_away(base: str) -> None:
    """Exhaustively: each substitution, deletion and insertion is read the same by both."""
    differ = [d for d in one_byte_away(CORPUS[base]) if ours(d) != theirs(d)]
    assert differ == []


def test_its_key_id_is_the_control_planes() -> None:
    """The id of the key read without crypto is the one the control plane signs with."""
    assert raw_key_id(parse_public_key_pem(PEM)) == key_id(KEY.public_key())


def test_pem_headers_are_refused_though_cryptography_reads_them() -> None:
    """Stricter on purpose: headers belong to encrypted private keys, never to a public key."""
    with_headers = PEM.replace(b"-----\n", b"-----\nProc-Type: 4,ENCRYPTED\n\n", 1)
    assert theirs(with_headers) == RAW
    with pytest.raises(ValueError, match="headers"):
        parse_public_key_pem(with_headers)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("an RSA key", "is an RSA key, not an Ed25519 key"),
        ("an EC key", "is an EC key, not an Ed25519 key"),
        ("an X25519 key", "is an X25519 key, not an Ed25519 key"),
        ("the private key", "is not a PEM public key (its first PEM block is 'PRIVATE KEY')"),
        ("empty", "is not a PEM public key (no -----BEGIN PUBLIC KEY----- line)"),
        ("truncated", "is not a PEM public key (no -----END PUBLIC KEY----- line)"),
        ("a byte after the key", "not an Ed25519 SubjectPublicKeyInfo"),
    ],
)
def test_a_refused_file_says_what_it_is(name: str, message: str, tmp_path: Path) -> None:
    """Each refusal is a SigningKeyError naming the file and what is wrong with it."""
    path = tmp_path / "k.pub"
    path.write_bytes(CORPUS[name])
    with pytest.raises(SigningKeyError) as refused:
        load_trusted_key(path)
    assert str(refused.value).startswith(f"signing key {path}: ")
    assert message in str(refused.value)


def test_missing_unreadable_and_huge_files_are_named(tmp_path: Path) -> None:
    """The file-level errors: missing (with the fix), not a file, too large."""
    with pytest.raises(SigningKeyError, match="no such file; copy the control plane"):
        load_trusted_key(tmp_path / "nope.pub")
    with pytest.raises(SigningKeyError, match="can't be read"):
        load_trusted_key(tmp_path)
    huge = tmp_path / "huge.pub"
    huge.write_bytes(PEM + b" " * 70_000)
    with pytest.raises(SigningKeyError, match="too large"):
        load_trusted_key(huge)
