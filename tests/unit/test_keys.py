# SPDX-License-Identifier: Apache-2.0
"""The core key: generation, loading and refusal of unsafe keys, and data-key wrapping."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from edge.errors import CoreKeyError, InsecurePermissionsError
from edge.secrets.keys import EC_ALGORITHM, RSA_ALGORITHM, CoreKey, generate_key

DATA_KEY = bytes(range(32))
AAD = b"EDGESTOR\x00\x00\x00\x05header"


def write_key_file(
    path: Path,
    private_key: PrivateKeyTypes,
    *,
    fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
    encryption: serialization.KeySerializationEncryption | None = None,
) -> Path:
    """Write a key the way an operator might have, with mode 0600."""
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, fmt, encryption or serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def rsa_key_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One RSA-2048 key file for the module: generating RSA keys is slow."""
    path = tmp_path_factory.mktemp("rsa") / "core.key"
    generate_key(path, kind="rsa")
    return path


@pytest.fixture(scope="module")
def rsa_key(rsa_key_path: Path) -> CoreKey:
    return CoreKey.load(rsa_key_path)


@pytest.fixture
def ec_key(tmp_path: Path) -> CoreKey:
    return generate_key(tmp_path / "ec.key")


@pytest.fixture(params=["ec", "rsa"])
def any_key(request: pytest.FixtureRequest) -> CoreKey:
    """Each supported kind of core key in turn."""
    return request.getfixturevalue(f"{request.param}_key")


# --- generation --------------------------------------------------------------------------------


def test_generate_ec_writes_private_pkcs8_file(tmp_path):
    """An EC key is written as a 0600 PKCS#8 PEM and loads back with the same fingerprint."""
    path = tmp_path / "core.key"
    key = generate_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = CoreKey.load(path)
    assert loaded.fingerprint == key.fingerprint
    assert loaded.kind == "ec"
    assert loaded.algorithm == EC_ALGORITHM


def test_generate_rsa_writes_private_pkcs8_file(rsa_key_path, rsa_key):
    """An RSA-2048 key is written with mode 0600 and loads as an RSA-OAEP key."""
    assert stat.S_IMODE(rsa_key_path.stat().st_mode) == 0o600
    assert rsa_key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert rsa_key.kind == "rsa"
    assert rsa_key.algorithm == RSA_ALGORITHM


def test_generate_ignores_a_permissive_umask(tmp_path):
    """The key file is 0600 even when the process umask would allow more."""
    old = os.umask(0)
    try:
        generate_key(tmp_path / "core.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "core.key").stat().st_mode) == 0o600


def test_generate_refuses_to_overwrite(tmp_path):
    """An existing file is never overwritten, and is left exactly as it was."""
    path = tmp_path / "core.key"
    path.write_bytes(b"precious")
    with pytest.raises(CoreKeyError, match="already exists"):
        generate_key(path)
    assert path.read_bytes() == b"precious"


def test_generate_refuses_to_follow_a_symlink(tmp_path):
    """A symlink at the key path (even a dangling one) is not written through."""
    target = tmp_path / "elsewhere"
    (tmp_path / "core.key").symlink_to(target)
    with pytest.raises(CoreKeyError, match="already exists"):
        generate_key(tmp_path / "core.key")
    assert not target.exists()


def test_generate_needs_the_directory(tmp_path):
    """A missing parent directory is reported, not created."""
    with pytest.raises(CoreKeyError, match="does not exist"):
        generate_key(tmp_path / "missing" / "core.key")


@pytest.mark.parametrize("bits", [1024, 2047, 32768])
def test_generate_refuses_unsupported_rsa_sizes(tmp_path, bits):
    """RSA sizes outside 2048..16384 are refused before any file is written."""
    with pytest.raises(CoreKeyError, match=str(bits)):
        generate_key(tmp_path / "core.key", kind="rsa", rsa_bits=bits)
    assert not (tmp_path / "core.key").exists()


def test_generate_refuses_an_unknown_kind(tmp_path):
    """A kind other than ec or rsa (say, from the command line) is a CoreKeyError."""
    with pytest.raises(CoreKeyError, match="'dsa'"):
        generate_key(tmp_path / "core.key", kind="dsa")  # type: ignore[arg-type]


# --- loading -----------------------------------------------------------------------------------


def test_load_missing_file_says_how_to_create_one(tmp_path):
    """A missing key file points the operator at `edge init`."""
    with pytest.raises(CoreKeyError, match="edge init") as info:
        CoreKey.load(tmp_path / "nope.key")
    assert info.value.path == str(tmp_path / "nope.key")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_load_refuses_group_or_other_access(tmp_path, mode):
    """Any group or other permission bit on the key file is refused with the fix."""
    path = tmp_path / "core.key"
    generate_key(path)
    path.chmod(mode)
    with pytest.raises(InsecurePermissionsError, match="chmod 0600") as info:
        CoreKey.load(path)
    assert info.value.mode == mode
    assert info.value.wanted == 0o600


def test_load_accepts_owner_only_modes(tmp_path):
    """0400 (read-only) is as private as 0600 and loads."""
    path = tmp_path / "core.key"
    generate_key(path)
    path.chmod(0o400)
    assert CoreKey.load(path).kind == "ec"


def test_load_accepts_traditional_ec_format(tmp_path):
    """An OpenSSL 'traditional' (SEC1) EC PEM loads like PKCS#8."""
    path = write_key_file(
        tmp_path / "core.key",
        ec.generate_private_key(ec.SECP256R1()),
        fmt=serialization.PrivateFormat.TraditionalOpenSSL,
    )
    assert path.read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY-----")
    assert CoreKey.load(path).kind == "ec"


def test_load_refuses_p384(tmp_path):
    """An EC key on another curve is refused, naming the curve and what is supported."""
    path = write_key_file(tmp_path / "core.key", ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(CoreKeyError, match=r"secp384r1.*P-256"):
        CoreKey.load(path)


def test_load_refuses_rsa_1024(tmp_path):
    """An RSA key below 2048 bits is refused, naming its size."""
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    path = write_key_file(tmp_path / "core.key", weak)
    with pytest.raises(CoreKeyError, match="1024-bit RSA"):
        CoreKey.load(path)


def test_load_refuses_other_key_types(tmp_path):
    """A key of an unsupported family (Ed25519) is refused with the supported list."""
    path = write_key_file(tmp_path / "core.key", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(CoreKeyError, match="EC P-256 keys and RSA keys"):
        CoreKey.load(path)


def test_load_refuses_an_encrypted_key(tmp_path):
    """A passphrase-protected key is refused with how to decrypt it."""
    path = write_key_file(
        tmp_path / "core.key",
        ec.generate_private_key(ec.SECP256R1()),
        encryption=serialization.BestAvailableEncryption(b"passphrase"),
    )
    with pytest.raises(CoreKeyError, match="encrypted"):
        CoreKey.load(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a key at all\n",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        os.urandom(300),
    ],
)
def test_load_refuses_garbage(tmp_path, content):
    """A file that isn't a PEM private key is a CoreKeyError, not a parser exception."""
    path = tmp_path / "core.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(CoreKeyError, match="not an unencrypted PEM private key"):
        CoreKey.load(path)


def test_load_refuses_a_directory(tmp_path):
    """A directory at the key path is reported as such."""
    path = tmp_path / "core.key"
    path.mkdir(mode=0o700)
    with pytest.raises(CoreKeyError, match="a directory, not a file"):
        CoreKey.load(path)


def test_load_refuses_a_huge_file(tmp_path):
    """A file far bigger than any PEM key is refused without being read whole."""
    path = tmp_path / "core.key"
    with path.open("wb") as f:
        f.truncate(10 * 1024 * 1024)
    path.chmod(0o600)
    with pytest.raises(CoreKeyError, match="more than the 65536 allowed"):
        CoreKey.load(path)


def test_constructor_refuses_unsupported_keys():
    """Building a CoreKey directly from an unsupported key is a ValueError."""
    with pytest.raises(ValueError, match="secp384r1"):
        CoreKey(private_key=ec.generate_private_key(ec.SECP384R1()))


def test_repr_and_fingerprint_show_no_key_material(any_key):
    """The repr names kind and fingerprint only; the fingerprint is 16 hex digits."""
    assert repr(any_key) == f"CoreKey(kind={any_key.kind!r}, fingerprint={any_key.fingerprint!r})"
    assert len(any_key.fingerprint) == 16
    int(any_key.fingerprint, 16)


def test_fingerprints_differ_between_keys(tmp_path, rsa_key):
    """Different keys have different fingerprints."""
    a = generate_key(tmp_path / "a.key")
    b = generate_key(tmp_path / "b.key")
    assert len({a.fingerprint, b.fingerprint, rsa_key.fingerprint}) == 3


# --- wrapping ----------------------------------------------------------------------------------


def test_wrap_round_trips(any_key):
    """unwrap(wrap(k)) == k with the same associated data."""
    wrapped = any_key.wrap(DATA_KEY, aad=AAD)
    assert DATA_KEY not in wrapped
    assert any_key.unwrap(wrapped, aad=AAD) == DATA_KEY


def test_wrap_is_randomised(any_key):
    """Wrapping the same key twice gives different bytes (ephemeral key / OAEP seed)."""
    assert any_key.wrap(DATA_KEY, aad=AAD) != any_key.wrap(DATA_KEY, aad=AAD)


def test_ecies_wrap_layout(ec_key):
    """An ECIES wrap is an uncompressed P-256 point, a 12-byte nonce and ciphertext + tag."""
    wrapped = ec_key.wrap(DATA_KEY, aad=AAD)
    assert len(wrapped) == 65 + 12 + len(DATA_KEY) + 16
    assert wrapped[0] == 0x04
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), wrapped[:65])


def test_rsa_wrap_is_one_modulus_block(rsa_key):
    """An RSA-OAEP wrap is exactly the modulus size."""
    assert len(rsa_key.wrap(DATA_KEY, aad=AAD)) == 2048 // 8


def test_unwrap_with_altered_aad_fails(any_key):
    """A wrap is bound to its associated data."""
    wrapped = any_key.wrap(DATA_KEY, aad=AAD)
    with pytest.raises(ValueError):  # noqa: PT011 - the contract is a bare ValueError
        any_key.unwrap(wrapped, aad=AAD + b"x")


def test_unwrap_with_another_key_fails(any_key, tmp_path, rsa_key):
    """Only the key a data key was wrapped to can unwrap it, whatever the other key's kind."""
    others = [generate_key(tmp_path / "other.key"), rsa_key]
    wrapped = any_key.wrap(DATA_KEY, aad=AAD)
    for other in others:
        if other.fingerprint == any_key.fingerprint:
            continue
        with pytest.raises(ValueError):  # noqa: PT011
            other.unwrap(wrapped, aad=AAD)


@pytest.mark.parametrize("index", [0, 1, 64, 65, 76, 77, -1])
def test_unwrap_detects_altered_bytes(ec_key, index):
    """Flipping a byte of the point, nonce, ciphertext or tag fails with ValueError."""
    wrapped = bytearray(ec_key.wrap(DATA_KEY, aad=AAD))
    wrapped[index] ^= 0x01
    with pytest.raises(ValueError):  # noqa: PT011
        ec_key.unwrap(bytes(wrapped), aad=AAD)


@pytest.mark.parametrize("length", [0, 64, 65, 92, 124])
def test_unwrap_refuses_short_input(any_key, length):
    """A truncated wrap fails with ValueError, not an IndexError or a crash."""
    wrapped = any_key.wrap(DATA_KEY, aad=AAD)
    with pytest.raises(ValueError):  # noqa: PT011
        any_key.unwrap(wrapped[:length], aad=AAD)
