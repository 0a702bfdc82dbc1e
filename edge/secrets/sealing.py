# SPDX-License-Identifier: Apache-2.0
"""Sealing and opening the store's bytes: AES-256-GCM under a data key wrapped to the core key.

The file format is `edge.secrets.storefile`'s. Every seal draws a fresh random 256-bit data
key, so a nonce is never reused under a key and an old file reveals nothing about a new one.
The *associated data* of both the key wrap and the content encryption is the first 12+H bytes
(magic, header length and header): the header is read before anything is decrypted, to say
"sealed by another key" plainly, and binding it to both ciphers means any change to it, or to
any later byte, fails authentication. A file is therefore either exactly what this core wrote
or a `StoreCorruptError`, never a partial read. Lengths are checked against named caps before
anything is sliced, so a damaged length field can't ask for a huge allocation.

This module imports `cryptography`, and so only the processes that seal or open a store load
it: the core's crypto child (`edge.secrets.sealer`) and the short-lived CLI commands.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.errors import StoreCorruptError, StoreError
from edge.secrets.storefile import (
    CIPHER,
    DATA_KEY_LEN,
    FORMAT_VERSION,
    MAGIC,
    MAX_HEADER_LEN,
    MAX_WRAPPED_KEY_LEN,
    MSGPACK_ERRORS,
    U32,
    map_exceptions,
)

if TYPE_CHECKING:
    from edge.secrets.keys import CoreKey, CorePublicKey

_NONCE_LEN: Final = 12  # the 96-bit nonce GCM is defined for
_TAG_LEN: Final = 16

# Longest repr of an unexpected header value quoted in an error: the header is not yet
# authenticated when we quote it, and a message is no place for 4 KiB of garbage.
_QUOTE_LEN: Final = 40


def seal_plaintext(plaintext: bytes, key: CorePublicKey) -> bytes:
    """Encrypt a store's plaintext into the store file format, under a fresh random data key.

    Args:
        plaintext: What `edge.secrets.storefile.pack_contents` made of the contents.
        key: The core key (its public half is enough) the data key is wrapped to.

    Returns:
        The complete file.

    Raises:
        StoreError: The plaintext is too large for AES-GCM (2 GiB).
    """
    header = msgpack.packb(
        {
            "v": FORMAT_VERSION,
            "cipher": CIPHER,
            "wrap": key.algorithm,
            "key": key.fingerprint,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        use_bin_type=True,
    )
    aad = MAGIC + U32.pack(len(header)) + header
    data_key = AESGCM.generate_key(bit_length=DATA_KEY_LEN * 8)
    wrapped = key.wrap(data_key, aad=aad)
    # Random is safe and simplest: this data key encrypts exactly one message.
    nonce = os.urandom(_NONCE_LEN)
    try:
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, aad)
    except OverflowError as exc:
        msg = f"store contents are {len(plaintext)} bytes, more than AES-GCM can seal at once"
        raise StoreError(msg) from exc
    return b"".join((aad, U32.pack(len(wrapped)), wrapped, nonce, ciphertext))


def unseal_plaintext(blob: bytes, key: CoreKey, *, path: str = "<memory>") -> bytes:
    """Decrypt and authenticate a sealed store.

    Args:
        blob: The complete file.
        key: The core key it was sealed with.
        path: Where the blob came from, for error messages.

    Returns:
        The plaintext (`edge.secrets.storefile.unpack_contents` reads it).

    Raises:
        StoreCorruptError: `blob` is truncated, altered, of an unknown format version, or
            sealed with another key.
        CoreKeyError: The key is in a token that is gone, or refuses the login or the
            operation.
    """
    reader = _Reader(blob, path)
    if bytes(reader.take(len(MAGIC), "magic")) != MAGIC:
        raise StoreCorruptError(path, "it is not a secret store (bad magic bytes)")
    header_bytes = reader.take(reader.length("header length", MAX_HEADER_LEN), "header")
    aad = bytes(reader.consumed())
    _check_header(_decode_header(header_bytes, path), key, path)

    wrapped = reader.take(reader.length("wrapped-key length", MAX_WRAPPED_KEY_LEN), "wrapped key")
    nonce = reader.take(_NONCE_LEN, "nonce")
    ciphertext = reader.rest()
    if len(ciphertext) < _TAG_LEN:
        raise StoreCorruptError(path, "it is truncated: the file ends inside the ciphertext")

    with map_exceptions(
        path,
        {ValueError: "the data key does not authenticate: the header or wrapped key was altered"},
    ):
        data_key = key.unwrap(bytes(wrapped), aad=aad)
    if len(data_key) != DATA_KEY_LEN:
        # Only a writer holding our key could get here; still, refuse rather than guess.
        raise StoreCorruptError(path, f"the data key is {len(data_key)} bytes, not 32")
    with map_exceptions(
        path, {InvalidTag: "the contents do not authenticate: the file was altered or truncated"}
    ):
        return AESGCM(data_key).decrypt(bytes(nonce), ciphertext, aad)


def _decode_header(header_bytes: memoryview, path: str) -> dict[object, object]:
    with map_exceptions(path, {MSGPACK_ERRORS: "the header is not valid msgpack"}):
        # Limits default to the input size, which MAX_HEADER_LEN already caps.
        header = msgpack.unpackb(header_bytes, raw=False)
    if not isinstance(header, dict):
        raise StoreCorruptError(path, "the header is not a msgpack map")
    return header


def _check_header(header: dict[object, object], key: CoreKey, path: str) -> None:
    # Version first: a newer format may lay out everything after it differently.
    version = header.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version != FORMAT_VERSION:
        raise StoreCorruptError(
            path,
            f"unknown format version {_quote(version)}; this edge reads version "
            f"{FORMAT_VERSION} (was the store written by a newer edge?)",
        )
    fingerprint = header.get("key")
    if fingerprint != key.fingerprint:
        shown = fingerprint if isinstance(fingerprint, str) else _quote(fingerprint)
        raise StoreCorruptError(
            path,
            f"it was sealed with key {shown[:_QUOTE_LEN]}, this core's key is {key.fingerprint}",
        )
    if header.get("wrap") != key.algorithm:
        raise StoreCorruptError(
            path,
            f"its data key is wrapped with {_quote(header.get('wrap'))}, but this core's key "
            f"uses {key.algorithm!r}",
        )
    if header.get("cipher") != CIPHER:
        raise StoreCorruptError(path, f"unsupported cipher {_quote(header.get('cipher'))}")


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _QUOTE_LEN else f"{text[: _QUOTE_LEN - 3]}..."


class _Reader:
    """Cursor over a sealed blob; every read is bounds-checked and names what it reads."""

    __slots__ = ("_path", "_pos", "_view")

    def __init__(self, blob: bytes, path: str) -> None:
        # A memoryview, so slicing a large ciphertext doesn't copy it.
        self._view = memoryview(blob)
        self._pos = 0
        self._path = path

    def take(self, size: int, what: str) -> memoryview:
        if len(self._view) - self._pos < size:
            raise StoreCorruptError(
                self._path,
                f"it is truncated: the file ends inside the {what} "
                f"({len(self._view)} bytes in all)",
            )
        chunk = self._view[self._pos : self._pos + size]
        self._pos += size
        return chunk

    def length(self, what: str, limit: int) -> int:
        """Read a u32 length and check it against `limit` before anything is sliced by it."""
        (size,) = U32.unpack(self.take(U32.size, what))
        if not 1 <= size <= limit:
            raise StoreCorruptError(self._path, f"the {what} is {size}, outside 1..{limit}")
        return int(size)

    def consumed(self) -> memoryview:
        return self._view[: self._pos]

    def rest(self) -> memoryview:
        return self._view[self._pos :]
