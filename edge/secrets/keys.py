# SPDX-License-Identifier: Apache-2.0
"""The core's private key: load or generate it, and wrap the store's data keys with it.

Greengrass V1 encrypts its local secrets with the core's private key; `edge` does the same, one
level removed. Every save of the store draws a fresh AES-256 data key, and this module *wraps*
(encrypts) that data key to the core key so only this core can open the store:

* **EC P-256** - ECIES: an ephemeral P-256 key agrees a secret with the core's public key (ECDH),
  HKDF-SHA256 turns it into a 256-bit key-encryption key, and AES-256-GCM encrypts the data key.
  Wrapped form: ephemeral point (65 bytes, uncompressed) || nonce (12) || ciphertext + tag.
* **RSA >= 2048 bits** - RSA-OAEP with SHA-256 (and MGF1-SHA-256), the same primitive
  Greengrass uses for RSA core keys.

Both bind the wrap to caller-supplied associated data (the store header), so a wrapped key can't
be moved into another header. Other key types and sizes are refused when the key is loaded, with
a message that says how to fix it, rather than failing obscurely on the first save.

The private key is either a PEM file or a key held in a PKCS#11 token (`[core] private_key =
"pkcs11:..."`, see `edge.secrets.pkcs11`). Wrapping only ever uses the public key; unwrapping a
token key decrypts (RSA) or derives the ECDH secret (EC) inside the token, so both kinds of
private key produce and read the very same wrapped bytes, and a store sealed with a file key
opens with the same key imported into a token.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Literal

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.errors import CoreKeyError
from edge.fsutil import (
    PRIVATE_FILE_MODE,
    fsync_dir,
    read_private_file,
    write_new_file,
)
from edge.secrets.keyref import MAX_RSA_BITS, MIN_RSA_BITS, TokenKeyRef
from edge.secrets.pkcs11 import TokenKey, open_token_key

if TYPE_CHECKING:
    from pathlib import Path

KeyKind = Literal["ec", "rsa"]

#: `CoreKey.algorithm` of an EC P-256 key; written into every store header.
EC_ALGORITHM = "ECIES-P256-HKDF-SHA256-A256GCM"
#: `CoreKey.algorithm` of an RSA key.
RSA_ALGORITHM = "RSA-OAEP-SHA256"

#: Largest key file read. A PKCS#8 PEM of an RSA-16384 key is about 12.5 KB; anything much
#: bigger is not a key, and we'd rather say so than read a mistaken multi-GB path into memory.
MAX_KEY_FILE_SIZE = 64 * 1024

# HKDF "info" for the ECIES key-encryption key. Versioned so a future wrap scheme can never
# derive the same KEK from the same ECDH secret.
_HKDF_INFO = b"edge store key wrap v1"
_EC_POINT_LEN = 65  # 0x04 || X (32) || Y (32), X9.62 uncompressed
_NONCE_LEN = 12  # the 96-bit nonce GCM is defined for
_TAG_LEN = 16
_KEK_LEN = 32

_HOW_TO_GENERATE = "run `edge init --config <your config file>` to generate a core key"


class CorePublicKey:
    """The public half of the core key: enough to wrap a data key, never to unwrap one.

    Sealing the store needs nothing more, so the core's crypto process seals with the public key
    it was given when the store was opened, and never reads the private key (or logs into a
    token) to seal.
    """

    __slots__ = ("_fingerprint", "_public_key")

    def __init__(self, *, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> None:
        """Wrap a public key object (its kind and size checked by the caller)."""
        self._public_key = public_key
        # 64 bits of SHA-256 are plenty to tell keys apart in a header and in a message; the
        # fingerprint identifies, it does not authenticate (AES-GCM and the wrap do that).
        self._fingerprint = hashlib.sha256(self.public_der).hexdigest()[:16]

    @classmethod
    def from_der(cls, der: bytes) -> CorePublicKey:
        """Load a public key from its DER SubjectPublicKeyInfo (`public_der`).

        Raises:
            CoreKeyError: The bytes are not a public key of a supported kind and size.
        """
        try:
            public = serialization.load_der_public_key(der)
        except (ValueError, UnsupportedAlgorithm):
            raise CoreKeyError("(public key)", "is not a DER public key") from None
        if isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            problem = _unsupported(public)
            if problem is None:
                return cls(public_key=public)
        else:
            problem = f"is an unsupported kind of key ({type(public).__name__})"
        raise CoreKeyError("(public key)", problem)

    @property
    def public_der(self) -> bytes:
        """The public key as DER SubjectPublicKeyInfo."""
        return self._public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def kind(self) -> KeyKind:
        """The key's family: "ec" or "rsa"."""
        return "ec" if isinstance(self._public_key, ec.EllipticCurvePublicKey) else "rsa"

    @property
    def algorithm(self) -> str:
        """The wrap algorithm: `EC_ALGORITHM` or `RSA_ALGORITHM`."""
        return EC_ALGORITHM if self.kind == "ec" else RSA_ALGORITHM

    @property
    def fingerprint(self) -> str:
        """First 16 hex digits of the SHA-256 of the public key's DER SubjectPublicKeyInfo."""
        return self._fingerprint

    def wrap(self, data_key: bytes, *, aad: bytes) -> bytes:
        """Encrypt a data key so only this core key can recover it.

        Args:
            data_key: The key to protect (the store uses 32 random bytes).
            aad: Associated data the wrap is bound to; `unwrap` must be given the same bytes.

        Returns:
            The wrapped key: ECIES point || nonce || ciphertext + tag, or an RSA-OAEP block.
        """
        public = self._public_key
        if isinstance(public, rsa.RSAPublicKey):
            # The OAEP label is the standard place for associated data (RFC 8017, 7.1).
            return public.encrypt(data_key, _oaep(aad))
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        point = ephemeral.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        kek = _derive_kek(ephemeral.exchange(ec.ECDH(), public), point)
        # A random nonce is safe: each KEK is fresh (new ephemeral key) and encrypts once.
        nonce = os.urandom(_NONCE_LEN)
        return point + nonce + AESGCM(kek).encrypt(nonce, data_key, aad)

    def __repr__(self) -> str:
        """Name the key by kind and fingerprint only."""
        return f"{type(self).__name__}(kind={self.kind!r}, fingerprint={self.fingerprint!r})"


class CoreKey(CorePublicKey):
    """The core's private key, as used to wrap and unwrap the store's data keys.

    Only EC P-256 and RSA keys of 2048 to 16384 bits are accepted. The key material never
    appears in `repr` or in any error message; a token-held key never leaves its token.
    """

    __slots__ = ("_private_key",)

    def __init__(
        self, *, private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | TokenKey
    ) -> None:
        """Wrap a private key object; most code calls `load` or `generate_key` instead.

        Args:
            private_key: An EC P-256 or RSA (2048-16384 bit) private key, or a key in a
                PKCS#11 token opened (and checked) by `edge.secrets.pkcs11.open_token_key`.

        Raises:
            ValueError: The key is of an unsupported curve or size.
        """
        public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
        if isinstance(private_key, TokenKey):
            public = private_key.public_key  # checked when the token key was opened
        else:
            problem = _unsupported(private_key)
            if problem is not None:
                raise ValueError(problem)
            public = private_key.public_key()
        super().__init__(public_key=public)
        self._private_key = private_key

    @classmethod
    def load(cls, path: Path | TokenKeyRef) -> CoreKey:
        """Load the core key from an unencrypted PEM file (PKCS#8 or traditional) or a token.

        Args:
            path: The key file, which must be a regular file with no group or other
                permissions; or a key in a PKCS#11 token (`[core] private_key = "pkcs11:..."`),
                which is found, checked and test-unwrapped inside the token.

        Returns:
            The loaded key.

        Raises:
            CoreKeyError: The file is missing, unreadable, not a PEM private key, encrypted,
                or of an unsupported type or size; or the token, object, PIN or mechanism is
                missing or wrong. The message says which and how to fix it.
            InsecurePermissionsError: Group or other users have any access to the file (or
                to a token key's PIN file).
        """
        if isinstance(path, TokenKeyRef):
            return cls(private_key=open_token_key(path))
        where = str(path)
        try:
            data = read_private_file(path, max_size=MAX_KEY_FILE_SIZE)
        except FileNotFoundError:
            raise CoreKeyError(where, f"no such file; {_HOW_TO_GENERATE}") from None
        except OSError as exc:
            raise CoreKeyError(where, f"can't be read ({exc.strerror})") from exc
        return cls(private_key=_parse_pem(where, data))

    def unwrap(self, wrapped: bytes, *, aad: bytes) -> bytes:
        """Recover a data key wrapped by `wrap` with this key and the same `aad`.

        Args:
            wrapped: What `wrap` returned.
            aad: The associated data given to `wrap`.

        Returns:
            The data key.

        Raises:
            ValueError: `wrapped` is malformed, was altered, was wrapped for another key, or
                `aad` differs. The caller maps this to its own error.
            CoreKeyError: The key is in a token that is gone, or refuses the login or the
                operation.
        """
        key = self._private_key
        if isinstance(key, TokenKey) and key.kind == "rsa":
            return key.rsa_oaep_decrypt(wrapped, aad)
        if isinstance(key, rsa.RSAPrivateKey):
            # cryptography raises ValueError for any OAEP failure, without saying which check
            # failed (no padding oracle), which is exactly the contract we want.
            return key.decrypt(wrapped, _oaep(aad))
        if len(wrapped) < _EC_POINT_LEN + _NONCE_LEN + _TAG_LEN:
            raise ValueError("wrapped key is too short")
        point = wrapped[:_EC_POINT_LEN]
        nonce = wrapped[_EC_POINT_LEN : _EC_POINT_LEN + _NONCE_LEN]
        # Raises ValueError for bytes that aren't a point on P-256 (invalid-curve attacks).
        ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        if isinstance(key, TokenKey):
            shared = key.ecdh(point)  # inside the token
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            shared = key.exchange(ec.ECDH(), ephemeral)
        else:  # pragma: no cover - kind said "ec"
            raise TypeError(type(key).__name__)
        kek = _derive_kek(shared, point)
        try:
            return AESGCM(kek).decrypt(nonce, wrapped[_EC_POINT_LEN + _NONCE_LEN :], aad)
        except InvalidTag as exc:
            raise ValueError("wrapped key does not authenticate") from exc

    def __repr__(self) -> str:
        """Name the key by kind and fingerprint only (and, for a token key, its URI sans PIN)."""
        if not isinstance(self._private_key, TokenKey):
            return super().__repr__()
        return f"{super().__repr__()[:-1]}, uri={self._private_key.uri!r})"


def generate_key(path: Path, *, kind: KeyKind = "ec", rsa_bits: int = MIN_RSA_BITS) -> CoreKey:
    """Generate a core key and write it as an unencrypted PKCS#8 PEM file with mode 0600.

    The file is created exclusively, so an existing key is never overwritten: losing it would
    make every store sealed with it unreadable. File and directory are fsynced before returning.

    Args:
        path: Where to write the key. Its directory must exist; the file must not.
        kind: "ec" for P-256 (the default: small, fast) or "rsa".
        rsa_bits: Modulus size for "rsa", 2048 to 16384.

    Returns:
        The new key.

    Raises:
        CoreKeyError: `path` exists, its directory doesn't, it can't be written, or `kind` or
            `rsa_bits` is unsupported.
    """
    where = str(path)
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ec":
        private_key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "rsa":
        if not MIN_RSA_BITS <= rsa_bits <= MAX_RSA_BITS:
            raise CoreKeyError(
                where, f"RSA keys must have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, not {rsa_bits}"
            )
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    else:
        # Unreachable for type-checked callers; the CLI passes user input through here.
        raise CoreKeyError(where, f"key kind must be 'ec' or 'rsa', not {kind!r}")
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        write_new_file(path, pem, mode=PRIVATE_FILE_MODE)
    except FileExistsError:
        raise CoreKeyError(
            where,
            "already exists; edge never overwrites a core key, because stores sealed with it "
            "would become unreadable. Use it, or move it aside first",
        ) from None
    except FileNotFoundError:
        raise CoreKeyError(
            where, f"directory {path.parent} does not exist; create it (mode 0700) first"
        ) from None
    except OSError as exc:
        raise CoreKeyError(where, f"can't be written ({exc.strerror})") from exc
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        # The key is written and synced; only its directory entry may not survive a power cut.
        # Saying "failed" would be wrong (the file exists and a retry would hit "already
        # exists"), so report it and let the operator decide.
        raise CoreKeyError(
            where, f"was written, but its directory could not be synced ({exc.strerror})"
        ) from exc
    return CoreKey(private_key=private_key)


def _parse_pem(where: str, data: bytes) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography's way of saying "encrypted, and no password given".
        raise CoreKeyError(
            where,
            "is encrypted; edge needs an unencrypted key protected by file permissions. "
            "Decrypt it with `openssl pkey -in <key> -out <new key>`",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # No detail from the parser: it could echo key bytes, and "not a key" is the point.
        raise CoreKeyError(
            where, f"is not an unencrypted PEM private key; {_HOW_TO_GENERATE}"
        ) from None
    if isinstance(private_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        problem = _unsupported(private_key)
        if problem is None:
            return private_key
    else:
        problem = f"is an unsupported kind of key ({type(private_key).__name__})"
    raise CoreKeyError(
        where,
        f"{problem}; edge supports EC P-256 keys and RSA keys of {MIN_RSA_BITS} to "
        f"{MAX_RSA_BITS} bits. Use such a key, or move this one aside and {_HOW_TO_GENERATE}",
    )


def _unsupported(
    key: ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ec.EllipticCurvePublicKey
    | rsa.RSAPublicKey,
) -> str | None:
    """Say what is wrong with a key (either half) of a supported family, or None if it is fine."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return None
        return f"is an EC key on curve {key.curve.name}, not P-256 (secp256r1)"
    if MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        return None
    return f"is a {key.key_size}-bit RSA key"


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=label
    )


def _derive_kek(shared_secret: bytes, ephemeral_point: bytes) -> bytes:
    # ECDH keeps only the x-coordinate, so the negated ephemeral point gives the same secret.
    # Salting with the exact point bytes binds the KEK to them, so such a re-encoded wrap fails
    # to authenticate instead of being accepted (ECIES "benign malleability", SEC 1, 5.1).
    return HKDF(
        algorithm=hashes.SHA256(), length=_KEK_LEN, salt=ephemeral_point, info=_HKDF_INFO
    ).derive(shared_secret)
