# SPDX-License-Identifier: Apache-2.0
r"""Signed deployment envelopes, without the crypto: the format and every check but the signature.

The control plane seals every deployment document it publishes (`edge.signing`); the core opens
each payload before anything parses it (`edge.deploy.trust`). Everything here is pure and needs
no `cryptography`, so the core runs each of these checks itself before any process starts,
and only the Ed25519 verification runs in its crypto child.

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
from collections.abc import Container
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from edge.errors import (
    EnvelopeMalformedError,
    SigningKeyError,
    StaleDeploymentError,
    UnsignedDeploymentError,
    UntrustedKeyError,
    WrongThingError,
)
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
#: The DER of every Ed25519 SubjectPublicKeyInfo up to its 32-byte key (RFC 8410, section 4):
#: SEQUENCE (42 bytes) { SEQUENCE { OID 1.3.101.112 } BIT STRING (33 bytes, 0 unused bits) }.
ED25519_SPKI_PREFIX: Final = bytes.fromhex("302a300506032b6570032100")
#: Ed25519 public keys are always 32 bytes.
ED25519_KEY_BYTES: Final = 32
_HEX: Final = frozenset("0123456789abcdef")
#: Other public key algorithms, by the DER of their OID, to name them in a message.
_OTHER_ALGORITHMS: Final = {
    bytes.fromhex("2a864886f70d010101"): "an RSA",
    bytes.fromhex("2a864886f70d01010a"): "an RSA-PSS",
    bytes.fromhex("2a8648ce3d0201"): "an EC",
    bytes.fromhex("2a8648ce380401"): "a DSA",
    bytes.fromhex("2b656e"): "an X25519",
    bytes.fromhex("2b656f"): "an X448",
    bytes.fromhex("2b6571"): "an Ed448",
}
_PEM_BEGIN: Final = b"-----BEGIN "
_PEM_DASHES: Final = b"-----"


def raw_key_id(raw_public_key: bytes) -> str:
    """Return a key's id from its raw 32-byte Ed25519 public key: the SHA-256, in hex."""
    return hashlib.sha256(raw_public_key).hexdigest()


def signed_message(document: bytes, thing_name: str) -> bytes:
    """Return the bytes a signature covers: context line, thing name line, document.

    Raises:
        ValueError: The thing name is empty or holds a newline (the message would be ambiguous).
    """
    if not thing_name or "\n" in thing_name:
        msg = "a thing name must be non-empty and hold no newline"
        raise ValueError(msg)
    return SIGNATURE_CONTEXT + thing_name.encode("utf-8") + b"\n" + document


@dataclass(frozen=True, slots=True)
class Opened:
    """A payload let through: the document, and who signed it (None: unsigned)."""

    document: bytes
    key_id: str | None


@dataclass(frozen=True, slots=True)
class Signed:
    """An envelope that passed every check but its signature, which is still to be verified."""

    document: bytes
    #: The signer's key id: one of the trusted ones.
    key_id: str
    signature: bytes
    #: What the signature must cover (`signed_message`).
    message: bytes


def check_envelope(
    payload: bytes,
    trusted: Container[str],
    *,
    thing_name: str,
    allow_unsigned: bool = False,
) -> Opened | Signed:
    """Check everything in a payload that needs no crypto; say what is left to verify.

    A payload that is not an envelope at all (any JSON without an "Envelope" key, or not JSON)
    is unsigned: refused, or with `allow_unsigned` returned as it is, for `parse_deployment` to
    judge. A payload that *is* an envelope must be perfect whatever `allow_unsigned` says: a
    broken or untrusted signature is never waved through.

    Args:
        payload: The MQTT payload.
        trusted: The ids (`raw_key_id`) of the keys whose signatures are accepted.
        thing_name: This core's thing name; the envelope must have been signed for it.
        allow_unsigned: Let unsigned payloads through (development only).

    Returns:
        `Opened` for an unsigned payload let through; `Signed` for an envelope whose
        signature the caller must verify against the key `key_id` names before believing it.

    Raises:
        UnsignedDeploymentError: The payload is not signed and `allow_unsigned` is false.
        EnvelopeMalformedError: The envelope breaks the format.
        WrongThingError: It was signed for another core.
        UntrustedKeyError: It was signed with a key not in `trusted`.
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
    if signer not in trusted:
        raise UntrustedKeyError(signer)
    document = _strict_b64(fields["Document"], "Document")
    signature = _strict_b64(fields["Signature"], "Signature")
    if len(signature) != SIGNATURE_BYTES:
        raise EnvelopeMalformedError(f"Signature must be {SIGNATURE_BYTES} bytes")
    return Signed(document, signer, signature, signed_message(document, thing_name))


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
        return b64decode_canonical(text)
    except ValueError as exc:
        raise EnvelopeMalformedError(f"{name} is {exc}") from None


def b64decode_canonical(text: str) -> bytes:
    """Decode canonical, padded base64, and nothing else.

    `b64decode` ignores the unused low bits of the last character: "QQ==" and "QR==" both
    decode to b"A". Re-encoding closes that gap, so one value has exactly one spelling.

    Raises:
        ValueError: "not valid base64" or "not canonical base64".
    """
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise ValueError("not canonical base64")
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


# --- trusted keys ----------------------------------------------------------------------------


def load_trusted_key(path: Path) -> bytes:
    """Read a trusted Ed25519 public key (PEM SubjectPublicKeyInfo, as `edge cloud init` writes).

    Returns:
        The raw 32-byte public key.

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
        return parse_public_key_pem(data)
    except ValueError as exc:
        raise SigningKeyError(str(path), str(exc)) from None


def parse_public_key_pem(data: bytes) -> bytes:
    """The raw Ed25519 public key in a PEM file, read strictly, with no crypto library.

    As `cryptography`'s loader: the first PEM block counts, text around it is ignored (RFC 7468
    explanatory text), whitespace inside it too; its label must be PUBLIC KEY and its base64
    canonical. Its DER must then be exactly an Ed25519 SubjectPublicKeyInfo (RFC 8410): the
    12 bytes of `ED25519_SPKI_PREFIX` and 32 bytes of key. Stricter than that loader in one
    way: PEM headers (`Proc-Type: ...`, which only encrypted private keys have) are refused,
    as that loader refuses a blank line, which would end them.

    Raises:
        ValueError: What is wrong, as the end of "<path> ...": "is not a PEM public key (...)"
            or "is an RSA key, not an Ed25519 key".
    """
    start = data.find(_PEM_BEGIN)
    if start < 0:
        raise ValueError("is not a PEM public key (no -----BEGIN PUBLIC KEY----- line)")
    label_at = start + len(_PEM_BEGIN)
    label_end = data.find(_PEM_DASHES, label_at)
    label = data[label_at:label_end]
    if data[start - 1 : start] == b"-" or label_end < 0 or any(c in label for c in b"\r\n"):
        raise ValueError("is not a PEM public key (its -----BEGIN line is broken)")
    shown = label.decode("ascii", "replace")
    body_at = label_end + len(_PEM_DASHES)
    body_end = data.find(b"-----END " + label + _PEM_DASHES, body_at)
    if body_end < 0:
        raise ValueError(f"is not a PEM public key (no -----END {shown}----- line)")
    if label != b"PUBLIC KEY":
        raise ValueError(f"is not a PEM public key (its first PEM block is {shown!r})")
    body = data[body_at:body_end].lstrip(b" \t\r\n")
    if b"\n\n" in body or b"\r\n\r\n" in body:
        # A blank line ends RFC 1421 headers, which only encrypted private keys have.
        raise ValueError("is not a PEM public key (it has headers or a blank line)")
    try:
        der = b64decode_canonical(b"".join(body.split()).decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("is not a PEM public key (its body is not canonical base64)") from None
    if len(der) == len(ED25519_SPKI_PREFIX) + ED25519_KEY_BYTES and der.startswith(
        ED25519_SPKI_PREFIX
    ):
        return der[len(ED25519_SPKI_PREFIX) :]
    other = _OTHER_ALGORITHMS.get(_algorithm_oid(der) or b"")
    if other is not None:
        raise ValueError(f"is {other} key, not an Ed25519 key")
    raise ValueError("is not a PEM public key (not an Ed25519 SubjectPublicKeyInfo, RFC 8410)")


def _algorithm_oid(der: bytes) -> bytes | None:
    """The algorithm OID's bytes of a SubjectPublicKeyInfo, or None where it has none."""
    # SubjectPublicKeyInfo ::= SEQUENCE { SEQUENCE { OID, parameters }, BIT STRING }
    spki = _der_content(der, 0, 0x30)
    algorithm = _der_content(der, spki[0], 0x30) if spki else None
    oid = _der_content(der, algorithm[0], 0x06) if algorithm else None
    return der[oid[0] : oid[1]] if oid else None


def _der_content(der: bytes, at: int, tag: int) -> tuple[int, int] | None:
    """Where the content of the DER element at `at` starts and ends, if it has `tag`."""
    if at + 2 > len(der) or der[at] != tag:
        return None
    size, at = der[at + 1], at + 2
    if size & 0x80:  # long form: the next (size & 0x7f) bytes are the length
        count = size & 0x7F
        if count == 0 or at + count > len(der):
            return None
        size, at = int.from_bytes(der[at : at + count], "big"), at + count
    return (at, at + size) if at + size <= len(der) else None
