# SPDX-License-Identifier: Apache-2.0
"""Naming the core key: a PKCS#11 URI parsed into a `TokenKeyRef`, and the RSA sizes accepted.

The config, the sandbox and the CLI need to tell a key file from a token key, and to know which
files a token key reads (its PIN file), without loading anything that talks to a token. This
module is that part: pure parsing of RFC 7512 URIs, with no PKCS#11 library and no crypto.
`edge.secrets.pkcs11` opens a `TokenKeyRef`; `edge.secrets.keys` loads either kind of key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes

#: URI scheme of RFC 7512.
SCHEME = "pkcs11:"

#: Smallest RSA modulus accepted: NIST SP 800-131A disallows less, and so does Greengrass.
MIN_RSA_BITS = 2048
#: Largest RSA modulus accepted: OpenSSL's own limit (OPENSSL_RSA_MAX_MODULUS_BITS). It also
#: bounds a wrapped key at 2048 bytes, which the store relies on to cap what it reads.
MAX_RSA_BITS = 16384

# RFC 7512 path attributes we select by, and the query attributes we understand. pin-value and
# pin-source are also accepted in the path, as OpenSSL's libp11 writes them there.
_PATH_ATTRS = frozenset(
    {"token", "manufacturer", "serial", "model", "slot-id", "object", "id", "type"}
)
_QUERY_ATTRS = frozenset({"pin-value", "pin-source", "module-path"})
_PIN_ATTRS = frozenset({"pin-value", "pin-source"})


@dataclass(frozen=True, slots=True)
class TokenKeyRef:
    """A private key in a PKCS#11 token, as named by `[core] private_key` and friends.

    Built by `parse_token_key_uri`; opening it (`edge.secrets.pkcs11.open_token_key`) talks to
    the token.
    """

    #: The URI for messages, with any pin-value replaced by `***`.
    uri: str
    #: The PKCS#11 module (shared library) to load.
    module: Path
    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    slot_id: int | None = None
    #: CKA_LABEL of the key.
    label: str | None = None
    #: CKA_ID of the key.
    key_id: bytes | None = None
    #: The user PIN given inline (`pin-value`); never shown.
    pin: str | None = field(default=None, repr=False)
    #: A file holding the user PIN (`pin-source`), read when the key is opened.
    pin_source: Path | None = None
    #: A PEM public key or certificate of the key (`[core] public_key`), if configured.
    public_key: Path | None = None

    def object_name(self) -> str:
        """Name the key object for messages: "object 'core'", "id 01" or both."""
        what = []
        if self.label is not None:
            what.append(f"object {self.label!r}")
        if self.key_id is not None:
            what.append(f"id {self.key_id.hex()}")
        return " ".join(what)

    def describe(self) -> str:
        """Say which object in which token, for messages: "object 'core' in token 'edge'"."""
        where = self.token if self.token is not None else self.serial or "(any)"
        return f"{self.object_name()} in token {where!r}"


def is_pkcs11_uri(text: str) -> bool:
    """Tell a PKCS#11 URI from a key file path."""
    return text[: len(SCHEME)].lower() == SCHEME


def parse_token_key_uri(  # noqa: C901, PLR0912, PLR0915 - one branch per attribute reads best
    text: str, *, base_dir: Path, module: Path | None, public_key: Path | None
) -> TokenKeyRef:
    """Parse an RFC 7512 PKCS#11 URI naming the core's private key.

    Args:
        text: The URI, e.g. `pkcs11:token=edge;object=core?pin-source=file:/etc/edge/pin`.
        base_dir: Relative paths (module-path, pin-source) are resolved against it.
        module: `[core] pkcs11_module`, if set.
        public_key: `[core] public_key`, if set.

    Returns:
        The reference, not yet opened.

    Raises:
        ValueError: The URI is malformed, names an unsupported attribute, lacks an object, or
            no module is given. The message never quotes a pin-value.
    """
    shown = redact_uri(text)
    if not is_pkcs11_uri(text):
        raise ValueError(f"{shown} is not a pkcs11: URI")
    path_part, _, query_part = text[len(SCHEME) :].partition("?")
    attrs: dict[str, str] = {}
    for where, part, sep, known in (
        ("path", path_part, ";", _PATH_ATTRS | _PIN_ATTRS),
        ("query", query_part, "&", _QUERY_ATTRS),
    ):
        for item in filter(None, part.split(sep)):
            name, eq, raw = item.partition("=")
            name = name.lower()
            if not eq or not raw:
                raise ValueError(f"{shown}: attribute {name!r} needs a value ({name}=...)")
            if name not in known:
                supported = ", ".join(sorted(known))
                raise ValueError(
                    f"{shown}: unsupported {where} attribute {name!r}; edge understands "
                    f"{supported} here"
                )
            if name in attrs:
                raise ValueError(f"{shown}: attribute {name!r} is given twice")
            attrs[name] = raw
    if "pin-value" in attrs and "pin-source" in attrs:
        raise ValueError(f"{shown}: give pin-value or pin-source, not both")
    if "object" not in attrs and "id" not in attrs:
        raise ValueError(f"{shown}: name the key with object=<label> and/or id=<%xx bytes>")
    if attrs.get("type", "private") != "private":
        raise ValueError(f"{shown}: type must be 'private' (the core key is a private key)")

    def text_attr(name: str) -> str | None:
        raw = attrs.get(name)
        if raw is None:
            return None
        try:
            return unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise ValueError(f"{shown}: {name} is not percent-encoded UTF-8") from None

    def path_attr(name: str) -> Path | None:
        value = text_attr(name)
        if value is None:
            return None
        if name == "pin-source":
            # RFC 7512 makes pin-source a URI; file: is the only scheme that makes sense here.
            # A bare path is accepted too, as p11-kit and libp11 do.
            if value.startswith("file://"):
                value = value[len("file://") :]
            elif value.startswith("file:"):
                value = value[len("file:") :]
            elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", value):
                raise ValueError(f"{shown}: pin-source must be a file: URI or a path")
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base_dir / p).resolve()

    slot_id = None
    if "slot-id" in attrs:
        raw_slot = text_attr("slot-id") or ""
        if not raw_slot.isdecimal():
            raise ValueError(f"{shown}: slot-id must be a decimal number")
        slot_id = int(raw_slot)
    key_id = unquote_to_bytes(attrs["id"]) if "id" in attrs else None
    uri_module = path_attr("module-path")
    if uri_module is not None and module is not None and uri_module != module:
        raise ValueError(
            f"{shown}: module-path {uri_module} differs from [core] pkcs11_module {module}; "
            "give one of them"
        )
    module = uri_module or module
    if module is None:
        raise ValueError(
            f"{shown}: which PKCS#11 module? Set [core] pkcs11_module to its shared library "
            "(SoftHSM2: /usr/lib/softhsm/libsofthsm2.so) or add ?module-path=... to the URI"
        )
    return TokenKeyRef(
        uri=shown,
        module=module,
        token=text_attr("token"),
        manufacturer=text_attr("manufacturer"),
        serial=text_attr("serial"),
        model=text_attr("model"),
        slot_id=slot_id,
        label=text_attr("object"),
        key_id=key_id,
        pin=text_attr("pin-value"),
        pin_source=path_attr("pin-source"),
        public_key=public_key,
    )


def redact_uri(text: str) -> str:
    """Return a PKCS#11 URI with its pin-value replaced by `***`, safe for any message."""
    return re.sub(r"(?i)(pin-value=)[^;&?]*", r"\1***", text)
