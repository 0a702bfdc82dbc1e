# SPDX-License-Identifier: Apache-2.0
r"""Signed deployment envelopes: Ed25519 over the exact document bytes, bound to one core.

Shared by the control plane, which seals every deployment document it publishes, and by the
core, which opens each payload before anything parses it. Pure: the only I/O is reading key
files in the explicit `load_*` functions.

The envelope (UTF-8 JSON, one object with exactly these keys)::

    {"Envelope": "edge-signed-v1",
     "KeyId": "<sha256 hex of the signer's raw 32-byte Ed25519 public key>",
     "ThingName": "<the core the document is meant for>",
     "Document": "<base64 of the exact UTF-8 JSON bytes of the deployment document>",
     "Signature": "<base64 of the Ed25519 signature over the signed message>"}

    signed message = b"edge-deployment-v1\n" + ThingName (UTF-8) + b"\n" + document bytes

The document travels as base64 so the signature covers the very bytes the core parses: no JSON
canonicalisation, no chance that two parsers read one signed text differently. The thing name is
in the signed message so that a document signed for one core can't be replayed to another that
trusts the same key (thing names can't contain a newline, so the message splits one way only).
The context line names the purpose and the version, so a signature made for anything else
with the same key can never pass for a deployment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import (
    BadSignatureError,
    EnvelopeMalformedError,
    InsecurePermissionsError,
    SigningKeyError,
    StaleDeploymentError,
    UnsignedDeploymentError,
    UntrustedKeyError,
    WrongThingError,
)
from edge.fsutil import read_private_file
from edge.model import MAX_DOCUMENT_BYTES

#: The "Envelope" value of the only envelope format there is.
ENVELOPE_FORMAT: Final = "edge-signed-v1"
#: First line of every signed message: what the signature is for, and which version.
SIGNATURE_CONTEXT: Final = b"edge-deployment-v1\n"
#: The keys of an envelope, all required, no others.
ENVELOPE_KEYS: Final = frozenset({"Envelope", "KeyId", "ThingName", "Document", "Signature"})
#: Largest envelope accepted: base64 makes the largest document 4/3 as big, and the other
#: fields take well under 1 KiB. Checked before any parsing.
MAX_ENVELOPE_BYTES: Final = MAX_DOCUMENT_BYTES * 4 // 3 + 4096
#: Ed25519 signatures are always 64 bytes.
SIGNATURE_BYTES: Final = 64
#: Key files are a few hundred bytes; anything much bigger is not a key.
MAX_KEY_FILE_BYTES: Final = 64 * 1024
_HEX = frozenset("0123456789abcdef")


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return a key's id: the SHA-256 (hex) of its raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def signed_message(document: bytes, thing_name: str) -> bytes:
    """Return the bytes a signature covers: context line, thing name line, document.

    Raises:
        ValueError: The thing name is empty or holds a newline (the message would be ambiguous).
    """
    if not thing_name or "\n" in thing_name:
        msg = "a thing name must be non-empty and hold no newline"
        raise ValueError(msg)
    return SIGNATURE_CONTEXT + thing_name.encode("utf-8") + b"\n" + document


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


@dataclass(frozen=True, slots=True)
class Opened:
    """What `open_envelope` let through: the document, and who signed it (None: unsigned)."""

    document: bytes
    key_id: str | None


@dataclass(frozen=True, slots=True)
class DeploymentTrust:
    """What a core trusts: its own thing name, the signers' public keys, and unsigned or not."""

    thing_name: str
    #: Public keys by `key_id`.
    keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    #: Development only: also accept documents that are not signed at all.
    allow_unsigned: bool = False

    @classmethod
    def of(
        cls, thing_name: str, keys: Iterable[Ed25519PublicKey], *, allow_unsigned: bool = False
    ) -> DeploymentTrust:
        """Build from a list of public keys."""
        return cls(thing_name, {key_id(k): k for k in keys}, allow_unsigned)

    @classmethod
    def load(
        cls, thing_name: str, key_paths: Iterable[Path], *, allow_unsigned: bool = False
    ) -> DeploymentTrust:
        """Read the trusted public keys from PEM files (see `load_public_key`).

        Raises:
            SigningKeyError: A file is missing, unreadable or not an Ed25519 public key.
        """
        return cls.of(
            thing_name, (load_public_key(p) for p in key_paths), allow_unsigned=allow_unsigned
        )

    def open(self, payload: bytes) -> Opened:
        """Verify a payload from the deployments topic; see `open_envelope`."""
        return open_envelope(
            payload, self.keys, thing_name=self.thing_name, allow_unsigned=self.allow_unsigned
        )


def open_envelope(
    payload: bytes,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    thing_name: str,
    allow_unsigned: bool = False,
) -> Opened:
    """Check a payload's envelope and signature; return the inner document's exact bytes.

    A payload that is not an envelope at all (any JSON without an "Envelope" key, or not JSON)
    is unsigned: refused, or with `allow_unsigned` returned as it is, for `parse_deployment` to
    judge. A payload that *is* an envelope must be perfect whatever `allow_unsigned` says: a
    broken or untrusted signature is never waved through.

    Args:
        payload: The MQTT payload.
        trusted: Trusted public keys by `key_id`.
        thing_name: This core's thing name; the envelope must have been signed for it.
        allow_unsigned: Let unsigned payloads through (development only).

    Returns:
        The document bytes and the signer's key id (None for an unsigned payload).

    Raises:
        UnsignedDeploymentError: The payload is not signed and `allow_unsigned` is false.
        EnvelopeMalformedError: The envelope breaks the format.
        WrongThingError: It was signed for another core.
        UntrustedKeyError: It was signed with a key not in `trusted`.
        BadSignatureError: The signature does not verify: altered or forged.
    """
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise EnvelopeMalformedError(
            f"the payload is {len(payload)} bytes, more than the {MAX_ENVELOPE_BYTES} allowed"
        )
    envelope = _envelope_object(payload)
    if envelope is None:
        if allow_unsigned:
            return Opened(payload, None)
        raise UnsignedDeploymentError
    fields = _envelope_fields(envelope)
    if fields["ThingName"] != thing_name:
        raise WrongThingError(thing_name, fields["ThingName"])
    signer = fields["KeyId"]
    public_key = trusted.get(signer)
    if public_key is None:
        raise UntrustedKeyError(signer)
    document = _strict_b64(fields["Document"], "Document")
    signature = _strict_b64(fields["Signature"], "Signature")
    if len(signature) != SIGNATURE_BYTES:
        raise EnvelopeMalformedError(f"Signature must be {SIGNATURE_BYTES} bytes")
    try:
        public_key.verify(signature, signed_message(document, thing_name))
    except (InvalidSignature, ValueError):
        raise BadSignatureError(signer) from None
    return Opened(document, signer)


def _envelope_object(payload: bytes) -> dict[str, Any] | None:
    """Return the payload's JSON object if it has an "Envelope" key, else None (unsigned)."""
    repeated: list[str] = []

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            repeated.append("key")
        return result

    try:
        value = json.loads(payload.decode("utf-8"), object_pairs_hook=unique)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or "Envelope" not in value:
        return None
    if repeated:
        # Two readers could disagree about which of the repeated values counts.
        raise EnvelopeMalformedError("a key appears twice in the envelope")
    return value


def _envelope_fields(envelope: dict[str, Any]) -> dict[str, str]:
    """Check the envelope's keys and types; return its fields."""
    if envelope.get("Envelope") != ENVELOPE_FORMAT:
        raise EnvelopeMalformedError(
            f"unknown envelope format; this core reads only {ENVELOPE_FORMAT!r}"
        )
    keys = set(envelope)
    if keys != ENVELOPE_KEYS:
        missing, extra = sorted(ENVELOPE_KEYS - keys), sorted(keys - ENVELOPE_KEYS)
        problem = f"missing {', '.join(missing)}" if missing else f"unknown key {extra[0]!r}"
        raise EnvelopeMalformedError(f"the envelope has {problem}")
    for name, value in envelope.items():
        if not isinstance(value, str) or not value:
            raise EnvelopeMalformedError(f"{name} must be a non-empty string")
    kid = envelope["KeyId"]
    if len(kid) != 64 or not set(kid) <= _HEX:  # noqa: PLR2004 - a SHA-256 in hex
        raise EnvelopeMalformedError("KeyId must be 64 lowercase hex digits")
    return envelope


def _strict_b64(text: str, name: str) -> bytes:
    """Decode canonical base64 only, so one envelope has exactly one spelling."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeMalformedError(f"{name} is not valid base64") from None
    # b64decode ignores the unused low bits of the last character: "QQ==" and "QR==" both
    # decode to b"A". Re-encoding closes that gap, so no altered envelope still verifies.
    if base64.b64encode(data).decode("ascii") != text:
        raise EnvelopeMalformedError(f"{name} is not canonical base64")
    return data


# --- replay ----------------------------------------------------------------------------------


def _instant(text: str) -> datetime:
    """Parse an ISO-8601 timestamp; one without an offset is taken as UTC."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def check_fresh(deployment_id: str, created_at: str, applied_created_at: str | None) -> None:
    """Refuse a document created before the deployment the store was last built from.

    A document as old as the applied one passes: it is that same deployment redelivered (QoS 1
    is at-least-once), which the core answers from its history.

    Args:
        deployment_id: The document's DeploymentId.
        created_at: Its CreatedAt.
        applied_created_at: CreatedAt of the deployment the store came from (None: none yet).

    Raises:
        StaleDeploymentError: `created_at` is strictly earlier than `applied_created_at`.
    """
    if applied_created_at is None:
        return
    try:
        older = _instant(created_at) < _instant(applied_created_at)
    except ValueError:
        # parse_deployment checked created_at; a store record that doesn't parse predates
        # this check and can't be compared, so it can't be what refuses a deployment.
        return
    if older:
        raise StaleDeploymentError(deployment_id, created_at, applied_created_at)


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
    """Read a trusted Ed25519 public key (PEM SubjectPublicKeyInfo, as `edge cloud init` writes).

    Raises:
        SigningKeyError: The file is missing, unreadable or not an Ed25519 public key.
    """
    try:
        with path.open("rb") as file:
            data = file.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SigningKeyError(
            str(path),
            "no such file; copy the control plane's public key (printed by `edge cloud init`)",
        ) from None
    except OSError as exc:
        raise SigningKeyError(str(path), f"can't be read: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise SigningKeyError(str(path), "is too large to be a public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(str(path), f"is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(str(path), f"is a {type(key).__name__}, not an Ed25519 key")
    return key


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
