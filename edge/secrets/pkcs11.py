# SPDX-License-Identifier: Apache-2.0
"""Core keys held in a PKCS#11 token (an HSM, a TPM's PKCS#11 front end, SoftHSM2).

`[core] private_key = "pkcs11:token=edge;object=core-key?pin-source=file:/etc/edge/pin"` names
a private key inside a token by an RFC 7512 URI, which `edge.secrets.keyref` parses. The store's
data key is then *unwrapped inside the token*; the private key is never read out (it is normally
non-extractable anyway):

* **RSA**: `C_Decrypt` with CKM_RSA_PKCS_OAEP, hash SHA-256, MGF1-SHA-256 and the store header
  as the OAEP label: exactly what `edge.secrets.keys` does in software. A token that can't do
  OAEP with SHA-256 and a label (SoftHSM 2.6 only does SHA-1 without one) is refused by name.
* **EC P-256**: `C_DeriveKey` with CKM_ECDH1_DERIVE (no KDF) computes the ECDH secret with the
  wrap's ephemeral point inside the token; the secret (not the private key) comes out as a
  short-lived session object, and HKDF + AES-GCM finish the ECIES unwrap in software.

Wrapping needs only the public key, so saving the store never touches the token. The public key
comes from `[core] public_key` (a PEM public key or certificate), else from the token: a
public-key or certificate object with the private key's CKA_ID (or label), else, for RSA, the
private key's public attributes (modulus and exponent).

Opening a key checks everything up front and then unwraps a test key once, so a missing
mechanism, a key the token won't use for decryption or a public key that doesn't match fails at
start (and at `edge init`) with a message naming the token, the object and what is missing,
rather than when the store is next read.

python-pkcs11 (the `pkcs11` extra) is imported only here, and only when a token key is opened,
so a core without the extra starts normally with a file key. `cryptography` is imported only
when a core key is opened (in the core's crypto child): the core finds its MQTT client key in a
token (`find_token_key`) without it. The untyped corners of that library
stay inside this module; the rest of `edge` sees `TokenKeyRef` and `TokenKey`.

The PIN is held in memory only while the key is open and never appears in a message, a log line
or a `repr`: URIs are shown with `pin-value` replaced by `***`.
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from edge.errors import CoreKeyError
from edge.fsutil import read_private_file
from edge.secrets.keyref import MAX_RSA_BITS, MIN_RSA_BITS, TokenKeyRef

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cryptography.hazmat.primitives.asymmetric import ec, rsa

#: Largest PIN file read: a PIN is a few bytes; a large file is a mistaken path.
MAX_PIN_FILE_SIZE = 4 * 1024

# DER of the P-256 OID 1.2.840.10045.3.1.7, as CKA_EC_PARAMS holds it (namedCurve).
_P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")
# A self-test data key: any 32 bytes do; the AAD marks them as not a store's.
_SELF_TEST_AAD = b"edge pkcs11 self-test"

# One operation at a time per process: a PKCS#11 session must not be used by two threads at
# once, and logins are per token, not per session. Unwraps are rare (store loads), so a single
# lock costs nothing measurable.
_lock = threading.Lock()


class TokenKey:
    """An opened private key in a token: it decrypts and derives there, and only there.

    Built by `open_token_key`, which has already checked that the key works. Each operation opens
    its own session (and logs in), so a token that was reset or re-plugged in between is simply
    found again.
    """

    __slots__ = ("_kind", "_lib", "_pin", "_public_key", "_ref", "_token_label")

    def __init__(
        self,
        *,
        ref: TokenKeyRef,
        lib: Any,  # noqa: ANN401 - python-pkcs11's lib; kept opaque outside this module
        token_label: str,
        pin: str | None,
        kind: Literal["ec", "rsa"],
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    ) -> None:
        self._ref = ref
        self._lib = lib
        self._token_label = token_label
        self._pin = pin
        self._kind: Literal["ec", "rsa"] = kind
        self._public_key = public_key

    @property
    def kind(self) -> Literal["ec", "rsa"]:
        """The key's family: "ec" or "rsa"."""
        return self._kind

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        """The key's public half, which is all that wrapping needs."""
        return self._public_key

    @property
    def uri(self) -> str:
        """The key's URI, PIN redacted."""
        return self._ref.uri

    def rsa_oaep_decrypt(self, ciphertext: bytes, label: bytes) -> bytes:
        """Decrypt an RSA-OAEP (SHA-256, MGF1-SHA-256) block with `label`, inside the token.

        Raises:
            ValueError: The block doesn't decrypt (altered, or for another key or label).
            CoreKeyError: The token is gone, refuses the login, or refuses the operation.
        """
        with self._session() as (pkcs11, key):
            try:
                return bytes(
                    key.decrypt(
                        ciphertext,
                        mechanism=pkcs11.Mechanism.RSA_PKCS_OAEP,
                        mechanism_param=(pkcs11.Mechanism.SHA256, pkcs11.MGF.SHA256, label),
                    )
                )
            except _data_errors(pkcs11) as exc:
                raise ValueError("wrapped key does not decrypt") from exc

    def ecdh(self, peer_point: bytes) -> bytes:
        """Return the ECDH shared secret (x-coordinate) with an uncompressed P-256 point.

        Raises:
            ValueError: The token rejects the point.
            CoreKeyError: The token is gone, refuses the login, or refuses the operation.
        """
        with self._session() as (pkcs11, key):
            attr = pkcs11.Attribute
            try:
                secret = key.derive_key(
                    pkcs11.KeyType.GENERIC_SECRET,
                    256,
                    mechanism=pkcs11.Mechanism.ECDH1_DERIVE,
                    mechanism_param=(pkcs11.KDF.NULL, None, peer_point),
                    # A session object that we may read: it is the ECDH secret, which protects
                    # only this one wrap, never the private key. It dies with the session.
                    template={attr.SENSITIVE: False, attr.EXTRACTABLE: True, attr.TOKEN: False},
                )
            except _data_errors(pkcs11) as exc:
                raise ValueError("the token rejects the wrapped key's point") from exc
            value = bytes(secret[attr.VALUE])
            secret.destroy()
            return value

    @contextmanager
    def _session(self) -> Iterator[tuple[Any, Any]]:
        pkcs11 = _import_pkcs11(self._ref)
        with _lock, _map_token_errors(self._ref, pkcs11, doing="using the key"):
            token = _find_token(self._ref, self._lib, pkcs11)
            with token.open(user_pin=self._pin) as session:
                yield pkcs11, _find_private_key(self._ref, session, pkcs11, pin=self._pin)

    def __repr__(self) -> str:
        """Name the key by URI (PIN redacted) and kind."""
        return f"TokenKey(uri={self._ref.uri!r}, kind={self._kind!r})"


def open_token_key(ref: TokenKeyRef) -> TokenKey:
    """Find the key in its token, check it can unwrap, and return it; it never leaves the token.

    Raises:
        CoreKeyError: python-pkcs11 is missing, the module can't be loaded, no (or more than one)
            token or object matches, the PIN is wrong or locked, the object is not an RSA or EC
            P-256 private key, the token lacks the mechanism or the key may not be used for it,
            there is no public key, or the public key doesn't belong to the private key.
        InsecurePermissionsError: The pin-source file is readable by group or others.
    """
    from edge.secrets.token_public import token_public_key  # noqa: PLC0415 - see the docstring

    with _logged_in(ref, doing="opening the key") as (pkcs11, lib, token, session, pin):
        label = str(token.label)
        mechanisms = set(token.slot.get_mechanisms())
        key = _find_private_key(ref, session, pkcs11, pin=pin)
        kind = _check_key(ref, key, label, mechanisms, pkcs11)
        public_key = token_public_key(ref, session, key, kind, label, pkcs11)
    opened = TokenKey(
        ref=ref, lib=lib, token_label=label, pin=pin, kind=kind, public_key=public_key
    )
    _self_test(opened, label)
    return opened


def find_token_key(ref: TokenKeyRef) -> None:
    """Check that the token is there, takes the PIN and holds the private key `ref` names.

    For a key that others use through the token (the MQTT client key, which OpenSSL's
    pkcs11-provider signs with): the same findings and messages as `open_token_key`, without
    asking the key to unwrap.

    Raises:
        CoreKeyError: python-pkcs11 is missing, the module can't be loaded, no (or more than one)
            token or object matches, or the PIN is wrong, locked or missing.
        InsecurePermissionsError: The pin-source file is readable by group or others.
    """
    with _logged_in(ref, doing="finding the key") as (pkcs11, _, _, session, pin):
        _find_private_key(ref, session, pkcs11, pin=pin)


# -- helpers -----------------------------------------------------------------------------------


def _import_pkcs11(ref: TokenKeyRef) -> Any:  # noqa: ANN401 - the module, untyped by design
    try:
        import pkcs11  # noqa: PLC0415 - optional extra, imported only for token keys
    except ImportError:
        raise CoreKeyError(
            ref.uri,
            "keys in a PKCS#11 token need python-pkcs11; install it with "
            "`pip install 'edge[pkcs11]'`",
        ) from None
    return pkcs11


@contextmanager
def _logged_in(ref: TokenKeyRef, *, doing: str) -> Iterator[tuple[Any, Any, Any, Any, str | None]]:
    """A logged-in session on `ref`'s token: (python-pkcs11, lib, token, session, PIN).

    Under the module lock, with the library's errors turned into CoreKeyError messages.
    """
    pkcs11 = _import_pkcs11(ref)
    pin = _read_pin(ref)
    with _lock, _map_token_errors(ref, pkcs11, doing=doing):
        lib = _load_lib(ref, pkcs11)
        token = _find_token(ref, lib, pkcs11)
        with token.open(user_pin=pin) as session:
            yield pkcs11, lib, token, session, pin


def _load_lib(ref: TokenKeyRef, pkcs11: Any) -> Any:  # noqa: ANN401
    if not ref.module.is_file():
        raise CoreKeyError(ref.uri, f"PKCS#11 module {ref.module} does not exist")
    try:
        return pkcs11.lib(str(ref.module))
    except Exception as exc:  # any failure to load means "not a usable module"
        raise CoreKeyError(
            ref.uri, f"PKCS#11 module {ref.module} can't be loaded ({_ckr(exc)})"
        ) from exc


def _read_pin(ref: TokenKeyRef) -> str | None:
    if ref.pin is not None or ref.pin_source is None:
        return ref.pin
    try:
        data = read_private_file(ref.pin_source, max_size=MAX_PIN_FILE_SIZE)
    except FileNotFoundError:
        raise CoreKeyError(ref.uri, f"PIN file {ref.pin_source} does not exist") from None
    except OSError as exc:
        raise CoreKeyError(
            ref.uri, f"PIN file {ref.pin_source} can't be read ({exc.strerror})"
        ) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CoreKeyError(ref.uri, f"PIN file {ref.pin_source} is not UTF-8 text") from None
    # `echo 1234 > pin` leaves a newline that is not part of the PIN.
    pin = text.removesuffix("\n").removesuffix("\r")
    if not pin:
        raise CoreKeyError(ref.uri, f"PIN file {ref.pin_source} is empty")
    return pin


class _map_token_errors:  # noqa: N801 - used like contextlib's lower-case context managers
    """Turn python-pkcs11 errors into CoreKeyError messages that say what went wrong."""

    def __init__(self, ref: TokenKeyRef, pkcs11: Any, *, doing: str) -> None:  # noqa: ANN401
        self._ref = ref
        self._pkcs11 = pkcs11
        self._doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None or not isinstance(exc, self._pkcs11.PKCS11Error):
            return
        e = self._pkcs11.exceptions
        ref = self._ref
        where = ref.describe()
        if isinstance(exc, e.PinIncorrect):
            problem = (
                f"the token rejected the PIN for {where} (CKR_PIN_INCORRECT); check the URI's "
                "pin-value or pin-source. Tokens lock the PIN after a few wrong tries"
            )
        elif isinstance(exc, e.PinLocked):
            problem = (
                f"the user PIN of {where} is locked (CKR_PIN_LOCKED); unlock it with the SO PIN"
            )
        elif isinstance(exc, e.PinExpired):
            problem = f"the user PIN of {where} has expired (CKR_PIN_EXPIRED); set a new one"
        elif isinstance(exc, e.PinLenRange | e.PinInvalid):
            problem = f"the PIN for {where} is not a valid PIN for this token ({_ckr(exc)})"
        elif isinstance(exc, e.UserPinNotInitialized):
            problem = f"the user PIN of {where} was never set (CKR_USER_PIN_NOT_INITIALIZED)"
        elif isinstance(exc, e.DeviceRemoved | e.TokenNotPresent | e.TokenNotRecognised):
            problem = f"the token of {where} is not present ({_ckr(exc)}); plug it in"
        else:
            problem = f"the token failed while {self._doing} {where} ({_ckr(exc)})"
        raise CoreKeyError(ref.uri, problem) from exc


def _data_errors(pkcs11: Any) -> tuple[type[BaseException], ...]:  # noqa: ANN401
    e = pkcs11.exceptions
    # What a token answers for a block or point that is not for this key. SoftHSM says
    # CKR_GENERAL_ERROR for a bad OAEP block; the self-test at open rules out the other causes.
    return (
        e.EncryptedDataInvalid,
        e.EncryptedDataLenRange,
        e.DataInvalid,
        e.DataLenRange,
        e.GeneralError,
        e.FunctionFailed,
        e.DomainParamsInvalid,
        e.PublicKeyInvalid,
    )


def _ckr(exc: BaseException) -> str:
    """Name a python-pkcs11 exception by its PKCS#11 return value, e.g. CKR_PIN_INCORRECT."""
    name = type(exc).__name__
    if not hasattr(exc, "__module__") or not type(exc).__module__.startswith("pkcs11"):
        return f"{name}: {exc}"
    return "CKR_" + re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def _find_token(ref: TokenKeyRef, lib: Any, pkcs11: Any) -> Any:  # noqa: ANN401
    wanted = {
        "token": ref.token,
        "manufacturer": ref.manufacturer,
        "serial": ref.serial,
        "model": ref.model,
    }
    present: list[str] = []
    found: list[Any] = []
    for slot in lib.get_slots(token_present=True):
        try:
            token = slot.get_token()
        except pkcs11.PKCS11Error:
            continue  # a slot whose token went away between the two calls
        if not token.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED:
            continue  # an empty slot (SoftHSM always offers one for a new token)
        have = {
            "token": str(token.label),
            "manufacturer": str(token.manufacturer_id),
            "serial": bytes(token.serial).decode("ascii", "replace"),
            "model": str(token.model),
        }
        present.append(repr(have["token"]))
        if ref.slot_id is not None and int(slot.slot_id) != ref.slot_id:
            continue
        if all(v is None or have[k] == v for k, v in wanted.items()):
            found.append(token)
    if len(found) == 1:
        return found[0]
    selector = ";".join(f"{k}={v}" for k, v in wanted.items() if v is not None) or "any token"
    if not found:
        tokens = ", ".join(present) or "none"
        raise CoreKeyError(
            ref.uri,
            f"no token matches {selector} in module {ref.module} (tokens present: {tokens})",
        )
    raise CoreKeyError(
        ref.uri,
        f"{len(found)} tokens match {selector} in module {ref.module}; add serial=... to the "
        "URI to pick one",
    )


def _find_private_key(ref: TokenKeyRef, session: Any, pkcs11: Any, *, pin: str | None) -> Any:  # noqa: ANN401
    attr = pkcs11.Attribute
    template: dict[Any, Any] = {}
    if ref.label is not None:
        template[attr.LABEL] = ref.label
    if ref.key_id is not None:
        template[attr.ID] = ref.key_id
    objects = list(session.get_objects(template))
    private = [o for o in objects if o[attr.CLASS] == pkcs11.ObjectClass.PRIVATE_KEY]
    where = ref.describe()
    if len(private) == 1:
        return private[0]
    if len(private) > 1:
        raise CoreKeyError(
            ref.uri, f"{len(private)} private keys match {where}; add id=... to the URI"
        )
    others = [o for o in objects if o[attr.CLASS] != pkcs11.ObjectClass.PUBLIC_KEY]
    if others:
        what = _describe_object(others[0], pkcs11)
        raise CoreKeyError(
            ref.uri,
            f"{where} is {what}, not a private key; edge needs an RSA (2048 bits or more) or "
            "EC P-256 private key",
        )
    hint = (
        "; no PIN was given, and private keys are only visible after login: add "
        "pin-source=file:... (or pin-value=...) to the URI"
        if pin is None
        else ""
    )
    raise CoreKeyError(ref.uri, f"there is no private key {where}{hint}")


def _describe_object(obj: Any, pkcs11: Any) -> str:  # noqa: ANN401
    attr = pkcs11.Attribute
    cls = obj[attr.CLASS]
    if cls == pkcs11.ObjectClass.SECRET_KEY:
        return f"a secret key (CKK_{_enum_name(obj[attr.KEY_TYPE])})"
    return f"an object of class CKO_{_enum_name(cls)}"


def _enum_name(value: Any) -> str:  # noqa: ANN401
    return str(getattr(value, "name", value))


def _check_key(
    ref: TokenKeyRef,
    key: Any,  # noqa: ANN401
    token_label: str,
    mechanisms: set[Any],
    pkcs11: Any,  # noqa: ANN401
) -> Literal["ec", "rsa"]:
    attr = pkcs11.Attribute
    key_type = key[attr.KEY_TYPE]
    where = f"object {key[attr.LABEL]!r} in token {token_label!r}"
    if key_type == pkcs11.KeyType.RSA:
        bits = int.from_bytes(bytes(key[attr.MODULUS]), "big").bit_length()
        if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
            raise CoreKeyError(
                ref.uri,
                f"{where} is a {bits}-bit RSA key; edge needs {MIN_RSA_BITS} to {MAX_RSA_BITS}",
            )
        if pkcs11.Mechanism.RSA_PKCS_OAEP not in mechanisms:
            raise CoreKeyError(
                ref.uri,
                f"token {token_label!r} lacks mechanism CKM_RSA_PKCS_OAEP, which edge needs to "
                f"unwrap the store's data key with RSA {where}",
            )
        if not key[attr.DECRYPT]:
            raise CoreKeyError(
                ref.uri, f"{where} may not be used to decrypt (CKA_DECRYPT is false)"
            )
        return "rsa"
    if key_type == pkcs11.KeyType.EC:
        if bytes(key[attr.EC_PARAMS]) != _P256_PARAMS:
            raise CoreKeyError(
                ref.uri, f"{where} is an EC key on a curve other than P-256 (secp256r1)"
            )
        if pkcs11.Mechanism.ECDH1_DERIVE not in mechanisms:
            raise CoreKeyError(
                ref.uri,
                f"token {token_label!r} lacks mechanism CKM_ECDH1_DERIVE, which edge needs to "
                f"unwrap the store's data key with EC {where}",
            )
        if not key[attr.DERIVE]:
            raise CoreKeyError(
                ref.uri, f"{where} may not be used for key derivation (CKA_DERIVE is false)"
            )
        return "ec"
    raise CoreKeyError(
        ref.uri,
        f"{where} is a CKK_{_enum_name(key_type)} private key; edge supports RSA and EC P-256",
    )


def _self_test(key: TokenKey, token_label: str) -> None:
    """Wrap a random key with the public key and unwrap it in the token; refuse on failure.

    This is the only reliable mechanism check: tokens list CKM_RSA_PKCS_OAEP whatever hashes
    and labels they accept, and a configured public key may belong to another private key.
    """
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415 - docstring
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa  # noqa: PLC0415

    probe = os.urandom(32)
    where = key._ref.object_name()  # noqa: SLF001 - same module
    public = key.public_key
    try:
        if isinstance(public, rsa.RSAPublicKey):
            wrapped = public.encrypt(
                probe,
                padding.OAEP(
                    mgf=padding.MGF1(hashes.SHA256()),
                    algorithm=hashes.SHA256(),
                    label=_SELF_TEST_AAD,
                ),
            )
            got = key.rsa_oaep_decrypt(wrapped, _SELF_TEST_AAD)
            want = probe
        else:
            ephemeral = ec.generate_private_key(ec.SECP256R1())
            point = ephemeral.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            got = key.ecdh(point)
            want = ephemeral.exchange(ec.ECDH(), public)
    except (ValueError, CoreKeyError) as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        if key.kind == "rsa":
            problem = (
                f"token {token_label!r} can't decrypt RSA-OAEP with SHA-256, MGF1-SHA-256 and "
                f"a label using {where}: mechanism CKM_RSA_PKCS_OAEP with those parameters "
                f"failed ({_ckr(cause)}). edge needs a token that supports them (SoftHSM2 2.6 "
                "offers OAEP with SHA-1 only), or an EC P-256 key with CKM_ECDH1_DERIVE"
            )
        else:
            problem = (
                f"token {token_label!r} can't derive an ECDH secret with {where}: mechanism "
                f"CKM_ECDH1_DERIVE (no KDF, extractable generic secret) failed ({_ckr(cause)})"
            )
        raise CoreKeyError(key.uri, problem) from exc
    if got != want:
        raise CoreKeyError(
            key.uri,
            f"the public key ({'[core] public_key' if key._ref.public_key else 'from the token'})"  # noqa: SLF001
            f" does not belong to private {where} in token {token_label!r}",
        )
