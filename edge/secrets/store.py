# SPDX-License-Identifier: Apache-2.0
"""The encrypted local secret store, sealed and opened in this process with the core key.

One file, envelope-encrypted (format: `edge.secrets.storefile`; crypto: `edge.secrets.sealing`),
replaced atomically. This is the store of the short-lived commands (`edge secrets list`,
`edge status` with no core running), tests and benchmarks. The running core holds no key and
imports no crypto: its store is `edge.secrets.seal_process.ChildStore`, which does the same in a
short-lived child.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from edge.errors import StoreError, StoreWriteError
from edge.secrets.keys import CoreKey
from edge.secrets.sealing import seal_plaintext, unseal_plaintext
from edge.secrets.storefile import (
    MAGIC,
    MAX_HEADER_LEN,
    STORE_FILE_NAME,
    StoreFile,
    pack_contents,
    read_sealed,
    unpack_contents,
)
from edge.statedir import check_state_dir

if TYPE_CHECKING:
    from pathlib import Path

    from structlog.typing import FilteringBoundLogger

    from edge.config import Config
    from edge.secrets.contents import StoreContents

__all__ = [
    "MAGIC",
    "MAX_HEADER_LEN",
    "STORE_FILE_NAME",
    "SecretStore",
    "open_store",
    "seal",
    "unseal",
]


class SecretStore(StoreFile):
    """The store file of one core, sealed with that core's key, in this process."""

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
        super().__init__(path=path, logger=logger)
        self._key = key

    def load(self) -> StoreContents | None:
        """Read and decrypt the store; first remove temporary files a crashed save left.

        Returns:
            The contents, or None if there is no store file yet.

        Raises:
            StoreCorruptError: The file is truncated, altered, of an unknown format version,
                sealed with another key, or decrypts to something that isn't a store.
            StoreSymlinkError: The store is a symbolic link.
            InsecurePermissionsError: Group or other users have any access to the file.
            StoreError: The file exists but can't be opened or read.
        """
        self.clean_stale_temp_files()
        blob = read_sealed(self.path)
        if blob is None:
            return None
        return unseal(blob, self._key, path=str(self.path))

    def save(self, contents: StoreContents) -> None:
        """Seal `contents` with a fresh data key and atomically replace the store file with it.

        See `StoreFile.write` for what a save guarantees.

        Args:
            contents: Everything the store will hold; replaces what it held.

        Raises:
            StoreWriteError: The contents can't be serialised, or writing failed (disk full,
                read-only filesystem, permissions...). The previous store is untouched and no
                temporary file is left behind.
        """
        try:
            blob = seal(contents, self._key)
        except StoreError as exc:
            raise StoreWriteError(str(self.path), str(exc)) from exc
        self.write(blob)

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

    def __repr__(self) -> str:
        """Name the file and the key; never the contents."""
        return f"SecretStore(path={str(self.path)!r}, key={self._key!r})"


def seal(contents: StoreContents, key: CoreKey) -> bytes:
    """Encrypt contents into the store file format, under a fresh random data key.

    Raises:
        StoreError: The contents hold something msgpack can't encode (say, an integer in the
            group document beyond 64 bits) or are too large for AES-GCM (2 GiB).
    """
    return seal_plaintext(pack_contents(contents), key)


def unseal(blob: bytes, key: CoreKey, *, path: str = "<memory>") -> StoreContents:
    """Decrypt and validate a sealed store.

    Raises:
        StoreCorruptError: `blob` is truncated, altered, of an unknown format version, sealed
            with another key, or decrypts to something that isn't a store.
    """
    return unpack_contents(unseal_plaintext(blob, key, path=path), path)


def open_store(config: Config) -> SecretStore:
    """Check the state directory and key, and return the store (not yet loaded).

    Raises:
        StateDirMissingError: `edge init` has not been run.
        CoreKeyError: The key is missing or unusable.
        InsecurePermissionsError: The state directory or key file is open to others.
    """
    check_state_dir(config.core.state_dir, config.path)
    key = CoreKey.load(config.core.private_key)
    return SecretStore(path=config.core.state_dir / STORE_FILE_NAME, key=key)
