# SPDX-License-Identifier: Apache-2.0
"""A TLS client key that stays in a PKCS#11 token: `[mqtt] key_file = "pkcs11:..."`.

Python's `ssl` loads a client key only from a PEM file, through OpenSSL. OpenSSL 3 can read a
key from a token when its pkcs11-provider is loaded (Debian's `pkcs11-provider` package): the
provider decodes a PEM block `PKCS#11 PROVIDER URI` naming the key by its RFC 7512 URI, and
signs the handshake inside the token. So `load_token_client_key`:

1. checks with python-pkcs11 that the token, its PIN and the key are there (`find_token_key`),
   so a wrong PIN or a missing object is named as such, not as OpenSSL's "PEM lib";
2. loads the provider into the process's default OpenSSL context, once, with the token's module
   (`OSSL_LIB_CTX_load_config` through ctypes: `ssl` offers no way to load a provider, and the
   core has used OpenSSL long before it reads its config, so `OPENSSL_CONF` would be too late);
3. hands `SSLContext.load_cert_chain` that PEM block, in a file of a private temporary directory
   that is removed once loaded: the context keeps a handle on the token key, not the file.

The provider is configured with `no-deinit` (the token module may be shared with python-pkcs11
in the same process, and finalizing it at exit would pull it from under the other user) and
`block-operations = digest` (hashing stays in OpenSSL's default provider, not the token).
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import os
import ssl
import tempfile
import threading
from pathlib import Path
from urllib.parse import quote

from edge.errors import ConfigError, CoreKeyError
from edge.secrets.keyref import TokenKeyRef
from edge.secrets.pkcs11 import find_token_key

#: What to install where pkcs11-provider is missing.
INSTALL_HINT = (
    "install OpenSSL's pkcs11-provider (Debian 13 and later: `apt-get install pkcs11-provider`; "
    "Debian 12: from bookworm-backports, `bash .ci/install-pkcs11-provider` does it)"
)
# The PEM label and the description string pkcs11-provider's decoder expects (its uri2pem tool).
_PEM_LABEL = "PKCS#11 PROVIDER URI"
_PEM_DESCRIPTION = b"PKCS#11 Provider URI v1.0"
# ASN.1 tags of the block: SEQUENCE { desc VisibleString, uri UTF8String }.
_SEQUENCE, _VISIBLE_STRING, _UTF8_STRING = 0x30, 0x1A, 0x0C
_SHORT_LENGTH_MAX = 0x7F
# What OpenSSL_version() reports (OPENSSL_VERSION, OPENSSL_MODULES_DIR in <openssl/crypto.h>).
_OPENSSL_VERSION, _OPENSSL_MODULES_DIR = 0, 8

# The module the provider was loaded with: one per process, as OpenSSL keeps one per context.
_loaded_module: Path | None = None
_lock = threading.Lock()


def load_token_client_key(
    context: ssl.SSLContext, cert_file: Path, ref: TokenKeyRef, *, setting: str
) -> None:
    """Present `cert_file` with the private key `ref` names, which never leaves its token.

    Args:
        context: The client context to load the pair into.
        cert_file: The PEM certificate of the token key.
        ref: The token key.
        setting: The config key that named it, for messages ("[mqtt] key_file").

    Raises:
        ConfigError: The token, PIN or key is not there (named as such), pkcs11-provider is not
            installed, or the key does not belong to the certificate.
        InsecurePermissionsError: The pin-source file is readable by group or others.
    """
    try:
        find_token_key(ref)
    except CoreKeyError as exc:
        raise ConfigError(ref.uri, f"can't be used as {setting}: {exc.problem}") from None
    _load_provider(ref)
    with tempfile.TemporaryDirectory(prefix="edge-token-key-") as tmp:
        key_file = Path(tmp) / "key.pem"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(provider_pem(ref))  # holds a pin-value only if the URI did
        try:
            context.load_cert_chain(str(cert_file), str(key_file))
        except (OSError, ssl.SSLError) as exc:
            detail = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            raise ConfigError(
                str(cert_file),
                f"can't be presented with {ref.uri} ({detail}): the certificate must be a PEM "
                f"file issued for the token's key {ref.describe()}",
            ) from None


def provider_pem(ref: TokenKeyRef) -> str:
    """The PEM block pkcs11-provider decodes into a handle on the token key."""
    der = _tlv(
        _SEQUENCE,
        _tlv(_VISIBLE_STRING, _PEM_DESCRIPTION) + _tlv(_UTF8_STRING, provider_uri(ref).encode()),
    )
    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN {_PEM_LABEL}-----\n{body}-----END {_PEM_LABEL}-----\n"


def provider_uri(ref: TokenKeyRef) -> str:
    """The key's URI as pkcs11-provider reads it: selectors, type=private and the PIN's source."""
    path = [
        f"{name}={quote(value, safe='')}"
        for name, value in (
            ("token", ref.token),
            ("manufacturer", ref.manufacturer),
            ("serial", ref.serial),
            ("model", ref.model),
            ("slot-id", None if ref.slot_id is None else str(ref.slot_id)),
            ("object", ref.label),
        )
        if value is not None
    ]
    if ref.key_id is not None:
        path.append("id=" + "".join(f"%{b:02x}" for b in ref.key_id))
    path.append("type=private")
    if ref.pin_source is not None:
        query = f"?pin-source=file:{quote(str(ref.pin_source), safe='/')}"
    elif ref.pin is not None:
        query = f"?pin-value={quote(ref.pin, safe='')}"
    else:
        query = ""
    return "pkcs11:" + ";".join(path) + query


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n <= _SHORT_LENGTH_MAX:
        return bytes([tag, n]) + value
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + value


def _load_provider(ref: TokenKeyRef) -> None:
    """Load pkcs11-provider with `ref`'s module into OpenSSL's default context, once."""
    global _loaded_module  # noqa: PLW0603 - one provider per process, as OpenSSL has it
    with _lock:
        if _loaded_module == ref.module:
            return
        if _loaded_module is not None:
            raise ConfigError(
                ref.uri,
                f"uses PKCS#11 module {ref.module}, but this process loaded OpenSSL's "
                f"pkcs11-provider with {_loaded_module}; TLS keys must share one module",
            )
        problem = provider_problem()
        libcrypto = _libcrypto()
        if problem is not None or isinstance(libcrypto, str):
            raise ConfigError(ref.uri, problem or str(libcrypto))
        config = (
            "openssl_conf = edge_init\n"
            "[edge_init]\nproviders = edge_providers\n"
            "[edge_providers]\ndefault = edge_default\npkcs11 = edge_pkcs11\n"
            "[edge_default]\nactivate = 1\n"
            "[edge_pkcs11]\n"
            f"pkcs11-module-path = {ref.module}\n"
            "pkcs11-module-quirks = no-deinit\n"
            "pkcs11-module-block-operations = digest\n"
            "activate = 1\n"
        )
        with tempfile.TemporaryDirectory(prefix="edge-openssl-") as tmp:
            path = Path(tmp) / "openssl.cnf"
            path.write_text(config, encoding="utf-8")
            ok = libcrypto.OSSL_LIB_CTX_load_config(None, str(path).encode())
        if ok != 1:
            libcrypto.ERR_clear_error()
            raise ConfigError(
                ref.uri, f"OpenSSL can't load its pkcs11-provider with module {ref.module}"
            )
        _loaded_module = ref.module


def provider_problem() -> str | None:
    """Why this Python can't use OpenSSL's pkcs11-provider, with the fix; None if it can."""
    libcrypto = _libcrypto()
    if isinstance(libcrypto, str):
        return libcrypto
    # "MODULESDIR: "/usr/lib/x86_64-linux-gnu/ossl-modules"", overridden by $OPENSSL_MODULES.
    built_in = (libcrypto.OpenSSL_version(_OPENSSL_MODULES_DIR) or b"").decode()
    directory = os.environ.get("OPENSSL_MODULES") or built_in.partition('"')[2].rstrip('"')
    module = Path(directory) / "pkcs11.so"
    if not module.is_file():
        return f"OpenSSL's pkcs11-provider is not installed (no {module}): {INSTALL_HINT}"
    return None


def _libcrypto() -> ctypes.CDLL | str:
    """The shared libcrypto that `ssl` uses, or why there is none to load a provider into."""
    name = ctypes.util.find_library("crypto")
    if ssl.OPENSSL_VERSION_INFO < (3,) or name is None:
        return (
            "a TLS key in a token needs Python's ssl linked to a shared OpenSSL 3, not "
            f"{ssl.OPENSSL_VERSION}"
        )
    libcrypto = ctypes.CDLL(name)
    libcrypto.OpenSSL_version.restype = ctypes.c_char_p
    libcrypto.OpenSSL_version.argtypes = [ctypes.c_int]
    libcrypto.OSSL_LIB_CTX_load_config.restype = ctypes.c_int
    libcrypto.OSSL_LIB_CTX_load_config.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    # A Python with its own OpenSSL would leave the system one unused: loading into it is moot.
    version = (libcrypto.OpenSSL_version(_OPENSSL_VERSION) or b"").decode()
    if version != ssl.OPENSSL_VERSION:
        return (
            f"Python's ssl uses {ssl.OPENSSL_VERSION} but the shared libcrypto is {version}; "
            "a TLS key in a token needs Python built against the system's OpenSSL 3"
        )
    return libcrypto
