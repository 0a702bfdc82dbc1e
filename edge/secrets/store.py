# SPDX-License-Identifier: Apache-2.0
"""The encrypted local secret store: one file, envelope-encrypted, replaced atomically.

File format, version 1 (all integers unsigned 32-bit big-endian)::

    offset  size  field
    0       8     MAGIC = b"EDGESTOR"
    8       4     H, the header length (1 <= H <= MAX_HEADER_LEN)
    12      H     header: msgpack map {"v": 1, "cipher": "AES-256-GCM",
                  "wrap": CoreKey.algorithm, "key": CoreKey.fingerprint,
                  "created": ISO-8601 UTC time of the save}
    12+H    4     W, the wrapped-key length (1 <= W <= MAX_WRAPPED_KEY_LEN)
    16+H    W     the data key, wrapped to the core key (`CoreKey.wrap`)
    16+H+W  12    nonce
    28+H+W  rest  AES-256-GCM ciphertext and 16-byte tag of
                  msgpack(to_plain(contents)), packed with use_bin_type=True

Every save draws a fresh random 256-bit data key, so a nonce is never reused under a key and an
old file reveals nothing about a new one. The *associated data* of both the key wrap and the
content encryption is the first 12+H bytes (magic, header length and header): the header is
read before anything is decrypted, to say "sealed by another key" plainly, and binding it to
both ciphers means any change to it, or to any later byte, fails authentication. A file is
therefore either exactly what this core wrote or a `StoreCorruptError`, never a partial read.

Lengths are checked against named caps before anything is sliced, so a damaged length field
can't ask for a huge allocation. Files are 0600 and replaced with temp file + fsync + rename +
directory fsync (see `edge.fsutil`); a failed save leaves the old file byte-for-byte.
"""

from __future__ import annotations

import asyncio
import errno
import os
import struct
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.errors import StoreCorruptError, StoreError, StoreSymlinkError, StoreWriteError
from edge.fsutil import (
    PRIVATE_FILE_MODE,
    atomic_replace,
    fsync_dir,
    read_private_file,
    remove_stale_temp_files,
)
from edge.log import get_logger
from edge.secrets.contents import StoreContents, from_plain, to_plain

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

    from structlog.typing import FilteringBoundLogger

    from edge.secrets.keys import CoreKey

#: Name of the store file inside the core's state directory.
STORE_FILE_NAME = "secrets.store"

#: First bytes of every store file, so a misplaced file is recognised before any parsing.
MAGIC = b"EDGESTOR"
#: Version of the container format described in this module's docstring.
FORMAT_VERSION = 1
#: The content cipher; named in the header so a future format can change it.
CIPHER = "AES-256-GCM"
#: Cap on the header. Ours is about 150 bytes; 4 KiB leaves room for future fields while
#: keeping what an unauthenticated length can make us read trivially small.
MAX_HEADER_LEN = 4 * 1024
#: Cap on the wrapped data key. ECIES wraps are 125 bytes; an RSA-OAEP block is the modulus
#: size, and `edge.secrets.keyref.MAX_RSA_BITS` (16384, OpenSSL's limit) gives 2048 bytes.
MAX_WRAPPED_KEY_LEN = 2 * 1024
#: AES-256.
DATA_KEY_LEN = 32
_NONCE_LEN = 12  # the 96-bit nonce GCM is defined for
_TAG_LEN = 16
_U32 = struct.Struct(">I")

# Longest repr of an unexpected header value quoted in an error: the header is not yet
# authenticated when we quote it, and a message is no place for 4 KiB of garbage.
_QUOTE_LEN = 40

# Everything msgpack.unpackb raises for bad input: ExtraData, FormatError, StackError and an
# incomplete input are ValueErrors; invalid UTF-8 is a UnicodeDecodeError (also a ValueError);
# an unhashable map key is a TypeError; the rest derive from UnpackException.
_MSGPACK_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    msgpack.UnpackException,
)


class SecretStore:
    """The store file of one core, sealed with that core's key.

    Saves replace the whole file atomically. The store does not order concurrent saves: the
    caller (the deployment agent) saves one deployment at a time.
    """

    def __init__(
        self, *, path: Path, key: CoreKey, logger: FilteringBoundLogger | None = None
    ) -> None:
        """Describe a store; nothing is read or written until `load` or `save`.

        Args:
            path: The store file, usually `<state_dir>/STORE_FILE_NAME`. Its directory must
                exist when saving.
            key: The core key that seals and opens it.
            logger: Where to log store events; `edge.log.get_logger("store")` if not given.
        """
        self._path = path
        self._key = key
        self._log = logger or get_logger("store")
        #: Successful saves (store rotations) by this object, for metrics.
        self.rotations = 0

    @property
    def path(self) -> Path:
        """The store file."""
        return self._path

    def exists(self) -> bool:
        """Return whether the store file exists (a fresh core has none); a link counts."""
        return os.path.lexists(self._path)

    def load(self) -> StoreContents | None:
        """Read and decrypt the store; first remove temporary files a crashed save left.

        Returns:
            The contents, or None if there is no store file yet.

        Raises:
            StoreCorruptError: The file is truncated, altered, of an unknown format version,
                sealed with another key, or decrypts to something that isn't a store.
            InsecurePermissionsError: Group or other users have any access to the file.
            StoreError: The file exists but can't be opened or read.
        """
        self.clean_stale_temp_files()
        blob = self._read()
        if blob is None:
            return None
        return unseal(blob, self._key, path=str(self._path))

    def save(self, contents: StoreContents) -> None:
        """Seal `contents` with a fresh data key and atomically replace the store file with it.

        On success the new file (mode 0600) is in place and fsynced. If the directory can't be
        fsynced after the rename, the save still counts: the new file is what every reader now
        sees, and only its survival across a power cut is uncertain. That is logged as
        `store.dir_sync_failed` rather than raised, because raising would claim the previous
        store is still in place.

        Args:
            contents: Everything the store will hold; replaces what it held.

        Raises:
            StoreWriteError: The contents can't be serialised, or writing failed (disk full,
                read-only filesystem, permissions...). The previous store is untouched and no
                temporary file is left behind.
        """
        where = str(self._path)
        try:
            blob = seal(contents, self._key)
        except StoreError as exc:
            raise StoreWriteError(where, str(exc)) from exc
        try:
            atomic_replace(self._path, blob, mode=PRIVATE_FILE_MODE)
        except OSError as exc:
            # strerror, not str(exc): the latter names our temporary file, which is gone.
            raise StoreWriteError(where, exc.strerror or str(exc)) from exc
        self.rotations += 1
        try:
            fsync_dir(self._path.parent)
        except OSError as exc:
            self._log.warning("store.dir_sync_failed", path=where, error=exc.strerror or str(exc))

    async def aload(self) -> StoreContents | None:
        """`load` in a worker thread: decrypting a large store takes tens of milliseconds.

        Returns:
            As `load`.

        Raises:
            StoreCorruptError: As `load`.
            InsecurePermissionsError: As `load`.
            StoreError: As `load`.
        """
        return await asyncio.to_thread(self.load)

    async def asave(self, contents: StoreContents) -> None:
        """`save` in a worker thread, so sealing and fsync don't block the event loop.

        Cancelling the awaiting task can't stop the thread: the save still completes or fails
        atomically, so the file is never left half-written, but it may have been replaced.

        Args:
            contents: As `save`.

        Raises:
            StoreWriteError: As `save`.
        """
        await asyncio.to_thread(self.save, contents)

    def clean_stale_temp_files(self) -> list[Path]:
        """Remove temporary files that a save interrupted by a crash left next to the store.

        Temporary files of saves still running in this process are kept. Removal is best
        effort: a file that can't be removed is harmless and must not stop a load.

        Returns:
            The files removed.
        """
        removed = remove_stale_temp_files(self._path)
        for stale in removed:
            self._log.warning("store.stale_temp_removed", path=str(stale))
        return removed

    def _read(self) -> bytes | None:
        try:
            return read_private_file(self._path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreSymlinkError(str(self._path)) from None
            msg = f"secret store {self._path} can't be read ({exc.strerror or exc})"
            raise StoreError(msg) from exc

    def __repr__(self) -> str:
        """Name the file and the key; never the contents."""
        return f"SecretStore(path={str(self._path)!r}, key={self._key!r})"


def seal(contents: StoreContents, key: CoreKey) -> bytes:
    """Encrypt contents into the store file format, under a fresh random data key.

    Args:
        contents: What to seal.
        key: The core key the data key is wrapped to.

    Returns:
        The complete file, as described in this module's docstring.

    Raises:
        StoreError: The contents hold something msgpack can't encode (say, an integer in the
            group document beyond 64 bits) or are too large for AES-GCM (2 GiB).
    """
    try:
        plaintext = msgpack.packb(to_plain(contents), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        # msgpack's messages name types and limits, never values.
        msg = f"store contents can't be serialised ({type(exc).__name__}: {exc})"
        raise StoreError(msg) from exc
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
    aad = MAGIC + _U32.pack(len(header)) + header
    data_key = AESGCM.generate_key(bit_length=DATA_KEY_LEN * 8)
    wrapped = key.wrap(data_key, aad=aad)
    # Random is safe and simplest: this data key encrypts exactly one message.
    nonce = os.urandom(_NONCE_LEN)
    try:
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, aad)
    except OverflowError as exc:
        msg = f"store contents are {len(plaintext)} bytes, more than AES-GCM can seal at once"
        raise StoreError(msg) from exc
    return b"".join((aad, _U32.pack(len(wrapped)), wrapped, nonce, ciphertext))


def unseal(blob: bytes, key: CoreKey, *, path: str = "<memory>") -> StoreContents:
    """Decrypt and validate a sealed store.

    Args:
        blob: The complete file.
        key: The core key it was sealed with.
        path: Where the blob came from, for error messages.

    Returns:
        The contents.

    Raises:
        StoreCorruptError: `blob` is truncated, altered, of an unknown format version, sealed
            with another key, or decrypts to something that isn't a store.
    """
    reader = _Reader(blob, path)
    if reader.take(len(MAGIC), "magic") != MAGIC:
        raise StoreCorruptError(path, "it is not a secret store (bad magic bytes)")
    header_bytes = reader.take(reader.length("header length", MAX_HEADER_LEN), "header")
    aad = bytes(reader.consumed())
    _check_header(_decode_header(header_bytes, path), key, path)

    wrapped = reader.take(reader.length("wrapped-key length", MAX_WRAPPED_KEY_LEN), "wrapped key")
    nonce = reader.take(_NONCE_LEN, "nonce")
    ciphertext = reader.rest()
    if len(ciphertext) < _TAG_LEN:
        raise StoreCorruptError(path, "it is truncated: the file ends inside the ciphertext")

    with _map_exceptions(
        path,
        {ValueError: "the data key does not authenticate: the header or wrapped key was altered"},
    ):
        data_key = key.unwrap(bytes(wrapped), aad=aad)
    if len(data_key) != DATA_KEY_LEN:
        # Only a writer holding our key could get here; still, refuse rather than guess.
        raise StoreCorruptError(path, f"the data key is {len(data_key)} bytes, not 32")
    with _map_exceptions(
        path, {InvalidTag: "the contents do not authenticate: the file was altered or truncated"}
    ):
        plaintext = AESGCM(data_key).decrypt(bytes(nonce), ciphertext, aad)
    with _map_exceptions(path, {_MSGPACK_ERRORS: "the decrypted contents are not valid msgpack"}):
        plain = msgpack.unpackb(plaintext, raw=False, use_list=True)
    try:
        return from_plain(plain)
    except StoreError as exc:
        # from_plain's message names keys and types only, never values.
        raise StoreCorruptError(path, str(exc)) from exc


@contextmanager
def _map_exceptions(
    path: str, mapping: Mapping[type[Exception] | tuple[type[Exception], ...], str]
) -> Iterator[None]:
    """Turn a library's exceptions into StoreCorruptError, keeping the original as the cause.

    `mapping` is {exception type or tuple of types: problem}. Only the exception's type is
    quoted, never its text: it may echo decrypted bytes, and those may be secret.
    """
    try:
        yield
    except Exception as exc:
        for exc_type, problem in mapping.items():
            if isinstance(exc, exc_type):
                raise StoreCorruptError(path, f"{problem} ({type(exc).__name__})") from exc
        raise


def _decode_header(header_bytes: memoryview, path: str) -> dict[object, object]:
    with _map_exceptions(path, {_MSGPACK_ERRORS: "the header is not valid msgpack"}):
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
        (size,) = _U32.unpack(self.take(_U32.size, what))
        if not 1 <= size <= limit:
            raise StoreCorruptError(self._path, f"the {what} is {size}, outside 1..{limit}")
        return int(size)

    def consumed(self) -> memoryview:
        return self._view[: self._pos]

    def rest(self) -> memoryview:
        return self._view[self._pos :]
