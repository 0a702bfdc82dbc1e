# SPDX-License-Identifier: Apache-2.0
"""The public half of a core key held in a PKCS#11 token, found and checked against it.

`edge.secrets.pkcs11.open_token_key` needs the public key to wrap data keys in software; it
comes from `[core] public_key` (a PEM public key or certificate) or from the token itself (a
public key or certificate object with the private key's CKA_ID or label, or an RSA key's own
public attributes), and must belong to the private key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edge.errors import CoreKeyError

if TYPE_CHECKING:
    from pathlib import Path

    from edge.secrets.keyref import TokenKeyRef

#: Largest public key or certificate file read.
MAX_PUBLIC_KEY_FILE_SIZE: Final = 64 * 1024
#: An uncompressed P-256 point: 0x04, then X and Y of 32 bytes each.
_P256_POINT_LEN: Final = 65
_UNCOMPRESSED: Final = 0x04


def token_public_key(  # noqa: PLR0917 - one call, each argument a different thing
    ref: TokenKeyRef,
    session: Any,  # noqa: ANN401
    key: Any,  # noqa: ANN401
    kind: Literal["ec", "rsa"],
    token_label: str,
    pkcs11: Any,  # noqa: ANN401
) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """The public half of a token's private key: from `[core] public_key`, else the token.

    Raises:
        CoreKeyError: There is none, or it is not the private key's (kind, curve, modulus).
    """
    where = f"object {key[pkcs11.Attribute.LABEL]!r} in token {token_label!r}"
    found: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | None
    if ref.public_key is not None:
        found = _load_public_key_file(ref, ref.public_key)
        origin = f"public key file {ref.public_key}"
    else:
        found = _public_key_from_token(session, key, kind, pkcs11)
        origin = "the token's public key"
        if found is None:
            raise CoreKeyError(
                ref.uri,
                f"the token holds no public key or certificate for {where} (same id or label); "
                "set [core] public_key to its PEM public key or certificate",
            )
    want = rsa.RSAPublicKey if kind == "rsa" else ec.EllipticCurvePublicKey
    if not isinstance(found, want) or (
        isinstance(found, ec.EllipticCurvePublicKey) and not isinstance(found.curve, ec.SECP256R1)
    ):
        raise CoreKeyError(
            ref.uri, f"{origin} is not the {kind.upper()} public key of private {where}"
        )
    if isinstance(found, rsa.RSAPublicKey):
        # The modulus is a public attribute of the private key: compare, so a wrong public key
        # file is named as such rather than showing up as a failed decryption.
        modulus = int.from_bytes(bytes(key[pkcs11.Attribute.MODULUS]), "big")
        if found.public_numbers().n != modulus:
            raise CoreKeyError(ref.uri, f"{origin} does not belong to private {where}")
    return found


def _public_key_from_token(
    session: Any,  # noqa: ANN401
    key: Any,  # noqa: ANN401
    kind: Literal["ec", "rsa"],
    pkcs11: Any,  # noqa: ANN401
) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey | None:
    attr = pkcs11.Attribute
    key_id = bytes(key[attr.ID] or b"")
    # Pair by CKA_ID when the key has one (the PKCS#11 convention), else by label.
    match = {attr.ID: key_id} if key_id else {attr.LABEL: key[attr.LABEL]}
    for obj in session.get_objects({**match, attr.CLASS: pkcs11.ObjectClass.PUBLIC_KEY}):
        if kind == "rsa":
            return rsa.RSAPublicNumbers(
                int.from_bytes(bytes(obj[attr.PUBLIC_EXPONENT]), "big"),
                int.from_bytes(bytes(obj[attr.MODULUS]), "big"),
            ).public_key()
        point = _ec_point(bytes(obj[attr.EC_POINT]))
        if point is not None:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    from cryptography import x509  # noqa: PLC0415 - slow to import, certificates only

    for obj in session.get_objects({**match, attr.CLASS: pkcs11.ObjectClass.CERTIFICATE}):
        cert_key = x509.load_der_x509_certificate(bytes(obj[attr.VALUE])).public_key()
        if isinstance(cert_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            return cert_key
    if kind == "rsa":
        # Modulus and exponent are public attributes of an RSA private key, sensitive or not.
        return rsa.RSAPublicNumbers(
            int.from_bytes(bytes(key[attr.PUBLIC_EXPONENT]), "big"),
            int.from_bytes(bytes(key[attr.MODULUS]), "big"),
        ).public_key()
    return None


def _ec_point(value: bytes) -> bytes | None:
    """CKA_EC_POINT is a DER OCTET STRING around the point; some tokens give the bare point."""
    if len(value) == _P256_POINT_LEN and value[0] == _UNCOMPRESSED:
        return value
    if len(value) == _P256_POINT_LEN + 2 and value[:2] == bytes((_UNCOMPRESSED, _P256_POINT_LEN)):
        return value[2:]
    return None


def _load_public_key_file(
    ref: TokenKeyRef, path: Path
) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey | None:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PUBLIC_KEY_FILE_SIZE + 1)
    except FileNotFoundError:
        raise CoreKeyError(ref.uri, f"public key file {path} does not exist") from None
    except OSError as exc:
        raise CoreKeyError(
            ref.uri, f"public key file {path} can't be read ({exc.strerror})"
        ) from exc
    loaded: object
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            from cryptography import x509  # noqa: PLC0415 - slow to import, certificates only

            loaded = x509.load_pem_x509_certificate(data).public_key()
        else:
            loaded = serialization.load_pem_public_key(data)
    except ValueError:
        raise CoreKeyError(
            ref.uri, f"public key file {path} is not a PEM public key or certificate"
        ) from None
    if isinstance(loaded, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return loaded
    return None
