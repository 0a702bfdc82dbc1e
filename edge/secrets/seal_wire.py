# SPDX-License-Identifier: Apache-2.0
"""What crosses the pipes between the core and its crypto process (`edge.secrets.sealer`).

One request frame, one answer frame (`edge.oneshot.wire`). Requests, by `op`:

- `unseal`: {"key": a key reference, "path": the store file} -> {"result": the plaintext or
  None (no store yet), "public_key": the key's DER SubjectPublicKeyInfo}. The key is loaded and
  checked even when there is no store file, so a bad key fails the core's start.
- `seal`: {"public_key": as unseal answered, "plaintext"} -> {"result": the sealed file}.
  Sealing needs only the public key, so the child never reads the private key (or logs into a
  token) to seal, and the store is sealed to the very key that opened it.
- `verify`: {"public_key": 32 raw Ed25519 bytes, "signature", "message"} -> {"result": bool}.

An error answers {"error": ...} from the closed allow-list `ERRORS`, the same classes and
messages the core raised when it did this in-process; anything else that goes wrong in the
child answers {"failed": the exception's class name} (never its text, which could quote
decrypted bytes).

A key reference is {"file": path} or {"token": the fields of a `TokenKeyRef`}; a token's inline
PIN crosses the pipe (never argv or the environment), as it would have stayed in memory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from edge.errors import (
    CoreKeyError,
    InsecurePermissionsError,
    StoreCorruptError,
    StoreError,
    StoreSymlinkError,
)
from edge.oneshot.wire import ErrorTable, by_fields
from edge.secrets.keyref import TokenKeyRef

if TYPE_CHECKING:
    from collections.abc import Mapping

#: The child's module.
SEALER_MODULE: Final = "edge.secrets.sealer"

#: The errors the child may answer.
ERRORS: Final = ErrorTable(
    "the sealer process",
    {
        StoreCorruptError: by_fields(StoreCorruptError, "path", "problem"),
        StoreSymlinkError: by_fields(StoreSymlinkError, "path"),
        # StoreError itself carries only its message (an unreadable file, an oversized seal).
        StoreError: (lambda e: {"message": str(e)}, lambda args: StoreError(str(args["message"]))),
        InsecurePermissionsError: by_fields(InsecurePermissionsError, "path", "mode", "wanted"),
        CoreKeyError: by_fields(CoreKeyError, "path", "problem"),
    },
)

# TokenKeyRef's fields that are paths; the rest are str, int, bytes or None, as msgpack keeps them.
_PATH_FIELDS: Final = frozenset({"module", "pin_source", "public_key"})


def key_to_plain(key: Path | TokenKeyRef) -> dict[str, Any]:
    """A key reference (`[core] private_key`) as a map."""
    if isinstance(key, Path):
        return {"file": str(key)}
    fields = {f.name: getattr(key, f.name) for f in dataclasses.fields(key)}
    return {
        "token": {
            k: str(v) if k in _PATH_FIELDS and v is not None else v for k, v in fields.items()
        }
    }


def key_from_plain(plain: Mapping[str, Any]) -> Path | TokenKeyRef:
    """Rebuild `key_to_plain`'s reference.

    Raises:
        TypeError: The map is neither kind of reference.
    """
    if "file" in plain:
        return Path(str(plain["file"]))
    token = plain.get("token")
    if not isinstance(token, dict):
        raise TypeError("not a key reference")
    fields: dict[str, Any] = {
        str(k): Path(v) if k in _PATH_FIELDS and v is not None else v for k, v in token.items()
    }
    return TokenKeyRef(**fields)
