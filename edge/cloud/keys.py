# SPDX-License-Identifier: Apache-2.0
"""The control plane's signing key: created once by `edge cloud init`, loaded by every deploy.

The private key is written 0600 with O_EXCL (never through a symlink, never over an existing
key); its public half goes beside it as `<signing_key>.pub`, in PEM, for cores to list in their
`[deployments] trusted_keys`. An existing key is never replaced: cores trust it, and a new one
would silently cut them off.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.errors import SigningKeyError
from edge.fsutil import PRIVATE_FILE_MODE, atomic_replace, fsync_dir, write_new_file
from edge.signing import key_id, load_signing_key, private_key_pem, public_key_pem

#: The public key is meant to be copied around: readable by all, writable by the owner.
PUBLIC_KEY_MODE = 0o644


@dataclass(frozen=True, slots=True)
class KeyFiles:
    """What `init_signing_key` did: the files, the key's id, and whether the key is new."""

    private_path: Path
    public_path: Path
    key_id: str
    created: bool


def init_signing_key(private_path: Path, public_path: Path) -> KeyFiles:
    """Create the signing key if it does not exist, and (re)write its public key file.

    Raises:
        SigningKeyError: The key can't be created, or an existing one can't be loaded.
    """
    created = False
    try:
        private_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        with contextlib.suppress(FileExistsError):
            write_new_file(private_path, private_key_pem(key), mode=PRIVATE_FILE_MODE)
            created = True
    except OSError as exc:
        raise SigningKeyError(str(private_path), f"can't be created: {exc}") from None
    # Load what is on disk (the new key, or the one that was there) and derive the public key
    # from it, so the .pub file always matches the key that signs.
    key = load_signing_key(private_path)
    try:
        atomic_replace(public_path, public_key_pem(key.public_key()), mode=PUBLIC_KEY_MODE)
        fsync_dir(public_path.parent)
    except OSError as exc:
        raise SigningKeyError(str(public_path), f"can't be written: {exc}") from None
    return KeyFiles(private_path, public_path, key_id(key.public_key()), created)
