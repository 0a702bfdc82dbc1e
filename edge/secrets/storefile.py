# SPDX-License-Identifier: Apache-2.0
"""The store file, without its crypto: the format, reading it safely, replacing it atomically.

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

The sealing itself (`edge.secrets.sealing`) needs `cryptography`, which the running core never
imports: it seals and opens the store in a short-lived child (`edge.secrets.sealer`). What is
here is what both sides share, and what the core does itself: turning contents into the
plaintext that is sealed and back (`pack_contents`, `unpack_contents`), reading the file with
its checks (`read_sealed`, in whichever process opens it), and `StoreFile`, the half of a store
that replaces the file: temp file + fsync + rename + directory fsync (see `edge.fsutil`), mode
0600, a failed save leaving the old file byte-for-byte.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

import msgpack

from edge.errors import StoreCorruptError, StoreError, StoreSymlinkError, StoreWriteError
from edge.fsutil import (
    PRIVATE_FILE_MODE,
    atomic_replace,
    fsync_dir,
    read_private_file,
    remove_stale_temp_files,
)
from edge.secrets.contents import StoreContents, from_plain, to_plain

if TYPE_CHECKING:
    from pathlib import Path

    from structlog.typing import FilteringBoundLogger

#: Name of the store file inside the core's state directory.
STORE_FILE_NAME: Final = "secrets.store"

#: First bytes of every store file, so a misplaced file is recognised before any parsing.
MAGIC: Final = b"EDGESTOR"
#: Version of the container format described in this module's docstring.
FORMAT_VERSION: Final = 1
#: The content cipher; named in the header so a future format can change it.
CIPHER: Final = "AES-256-GCM"
#: Cap on the header. Ours is about 150 bytes; 4 KiB leaves room for future fields while
#: keeping what an unauthenticated length can make us read trivially small.
MAX_HEADER_LEN: Final = 4 * 1024
#: Cap on the wrapped data key. ECIES wraps are 125 bytes; an RSA-OAEP block is the modulus
#: size, and `edge.secrets.keyref.MAX_RSA_BITS` (16384, OpenSSL's limit) gives 2048 bytes.
MAX_WRAPPED_KEY_LEN: Final = 2 * 1024
#: AES-256.
DATA_KEY_LEN: Final = 32
U32: Final = struct.Struct(">I")

# Everything msgpack.unpackb raises for bad input: ExtraData, FormatError, StackError and an
# incomplete input are ValueErrors; invalid UTF-8 is a UnicodeDecodeError (also a ValueError);
# an unhashable map key is a TypeError; the rest derive from UnpackException.
MSGPACK_ERRORS: Final[tuple[type[Exception], ...]] = (
    ValueError,
    TypeError,
    msgpack.UnpackException,
)


@contextmanager
def map_exceptions(
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


def pack_contents(contents: StoreContents) -> bytes:
    """The plaintext that is sealed: msgpack of the contents' plain form.

    Raises:
        StoreError: The contents hold something msgpack can't encode (say, an integer in the
            group document beyond 64 bits).
    """
    try:
        packed: bytes = msgpack.packb(to_plain(contents), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        # msgpack's messages name types and limits, never values.
        msg = f"store contents can't be serialised ({type(exc).__name__}: {exc})"
        raise StoreError(msg) from exc
    return packed


def unpack_contents(plaintext: bytes, path: str) -> StoreContents:
    """The contents an opened store holds.

    Raises:
        StoreCorruptError: The plaintext is not msgpack, or not the plain form of contents.
    """
    with map_exceptions(path, {MSGPACK_ERRORS: "the decrypted contents are not valid msgpack"}):
        plain = msgpack.unpackb(plaintext, raw=False, use_list=True)
    try:
        return from_plain(plain)
    except StoreError as exc:
        # from_plain's message names keys and types only, never values.
        raise StoreCorruptError(path, str(exc)) from exc


def read_sealed(path: Path) -> bytes | None:
    """Read a store file, never through a symbolic link, refusing one others can reach.

    Returns:
        The file's bytes, or None if there is none.

    Raises:
        StoreSymlinkError: The path is a symbolic link.
        InsecurePermissionsError: Group or other users have any access to the file.
        StoreError: The file exists but can't be opened or read.
    """
    try:
        return read_private_file(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreSymlinkError(str(path)) from None
        msg = f"secret store {path} can't be read ({exc.strerror or exc})"
        raise StoreError(msg) from exc


class StoreFile:
    """The file half of a store: where it is, replacing it, and cleaning up after crashes.

    Subclasses seal and open it (in-process, or in the core's crypto child). Saves replace
    the whole file atomically; the store does not order concurrent saves: the caller (the
    live secrets) saves one rotation at a time.
    """

    def __init__(self, *, path: Path, logger: FilteringBoundLogger | None = None) -> None:
        """Describe a store; nothing is read or written yet.

        Args:
            path: The store file, usually `<state_dir>/STORE_FILE_NAME`. Its directory must
                exist when saving.
            logger: Where to log store events; `edge.log.get_logger("store")` if not given.
        """
        if logger is None:
            # Here, not at the top: the crypto child reads store files and logs nothing.
            from edge.log import get_logger  # noqa: PLC0415

            logger = get_logger("store")
        self._path = path
        self._log = logger
        #: Successful saves (store rotations) by this object, for metrics.
        self.rotations = 0

    @property
    def path(self) -> Path:
        """The store file."""
        return self._path

    def exists(self) -> bool:
        """Return whether the store file exists (a fresh core has none); a link counts."""
        return os.path.lexists(self._path)

    def write(self, blob: bytes) -> None:
        """Atomically replace the store file with a sealed blob.

        On success the new file (mode 0600) is in place and fsynced. If the directory can't be
        fsynced after the rename, the save still counts: the new file is what every reader now
        sees, and only its survival across a power cut is uncertain. That is logged as
        `store.dir_sync_failed` rather than raised, because raising would claim the previous
        store is still in place.

        Raises:
            StoreWriteError: Writing failed (disk full, read-only filesystem, permissions...).
                The previous store is untouched and no temporary file is left behind.
        """
        where = str(self._path)
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
