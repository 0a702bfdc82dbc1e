# SPDX-License-Identifier: Apache-2.0
"""Signing deployment envelopes, and checking them in-process: the control plane's side.

The envelope's format and every check that needs no crypto are `edge.envelope`'s. This module
adds what needs `cryptography`: sealing a document with the control plane's Ed25519 key, its
key files, and `open_envelope`, which verifies in this very process. The control plane and
the fleet simulator use it; the core never imports it (it verifies in its crypto child,
`edge.deploy.trust`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.envelope import (
    ENVELOPE_FORMAT,
    MAX_KEY_FILE_BYTES,
    Opened,
    check_envelope,
    load_trusted_key,
    raw_key_id,
    signed_message,
)
from edge.errors import BadSignatureError, InsecurePermissionsError, SigningKeyError
from edge.fsutil import read_private_file

if TYPE_CHECKING:
    from pathlib import Path


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    """A public key's raw 32 bytes."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return a key's id: the SHA-256 (hex) of its raw 32-byte public key."""
    return raw_key_id(raw_public_key(public_key))


def seal(document: bytes, *, signing_key: Ed25519PrivateKey, thing_name: str) -> bytes:
    """Sign a deployment document for one core and wrap it in an envelope.

    Args:
        document: The deployment document, UTF-8 JSON, exactly as the core will parse it.
        signing_key: The control plane's Ed25519 key.
        thing_name: The core the document is meant for.

    Returns:
        The envelope, compact UTF-8 JSON, ready to publish.
    """
    signature = signing_key.sign(signed_message(document, thing_name))
    envelope = {
        "Envelope": ENVELOPE_FORMAT,
        "KeyId": key_id(signing_key.public_key()),
        "ThingName": thing_name,
        "Document": base64.b64encode(document).decode("ascii"),
        "Signature": base64.b64encode(signature).decode("ascii"),
    }
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")


def open_envelope(
    payload: bytes,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    thing_name: str,
    allow_unsigned: bool = False,
) -> Opened:
    """Check a payload's envelope and verify its signature here; return the exact document.

    See `edge.envelope.check_envelope` for what is checked before the signature.

    Args:
        payload: The MQTT payload.
        trusted: Trusted public keys by `key_id`.
        thing_name: This core's thing name; the envelope must have been signed for it.
        allow_unsigned: Let unsigned payloads through (development only).

    Returns:
        The document bytes and the signer's key id (None for an unsigned payload).

    Raises:
        SignatureError: As `check_envelope`; or `BadSignatureError`: the signature does not
            verify (altered or forged).
    """
    checked = check_envelope(payload, trusted, thing_name=thing_name, allow_unsigned=allow_unsigned)
    if isinstance(checked, Opened):
        return checked
    try:
        trusted[checked.key_id].verify(checked.signature, checked.message)
    except (InvalidSignature, ValueError):
        raise BadSignatureError(checked.key_id) from None
    return Opened(checked.document, checked.key_id)


# --- key files -------------------------------------------------------------------------------


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read the control plane's Ed25519 private key (PEM, PKCS#8, unencrypted, mode 0600).

    Raises:
        SigningKeyError: The file is missing, unreadable, readable by others, or not an
            unencrypted Ed25519 private key.
    """
    try:
        data = read_private_file(path, max_size=MAX_KEY_FILE_BYTES)
    except FileNotFoundError:
        raise SigningKeyError(
            str(path), "no such file; run `edge cloud init` to create it"
        ) from None
    except InsecurePermissionsError as exc:
        raise SigningKeyError(
            str(path), f"has mode {exc.mode:04o}; run `chmod 0600 {path}`"
        ) from None
    except OSError as exc:
        raise SigningKeyError(str(path), f"can't be read: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(str(path), f"is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(str(path), f"is a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a trusted Ed25519 public key file, as the core does (`edge.envelope`).

    Raises:
        SigningKeyError: The file is missing, unreadable or not an Ed25519 public key.
    """
    return Ed25519PublicKey.from_public_bytes(load_trusted_key(path))


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    """Return a public key as PEM SubjectPublicKeyInfo, the format of `<signing_key>.pub`."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_key_pem(private_key: Ed25519PrivateKey) -> bytes:
    """Return a private key as unencrypted PEM PKCS#8, the format of the signing key file."""
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
