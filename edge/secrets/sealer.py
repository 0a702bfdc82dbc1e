# SPDX-License-Identifier: Apache-2.0
"""The core's crypto process: `python -m edge.secrets.sealer`, one operation, then exit.

The running core never imports `cryptography` (9.5 MB of a Python core's memory): it opens
its store at start, seals it at each rotation and checks each deployment's signature in this
short-lived child, one operation per child (`edge.secrets.seal_wire` lists them). It reads one
request frame on stdin and writes one answer frame on a private copy of stdout. It writes
nothing to disk and logs nothing: plaintext crosses only the pipes.

It is lean on purpose, since a restarting core waits for its first answer: synchronous, no
asyncio, no logging set-up; just msgpack, `cryptography` and the key and store code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.errors import EdgeError
from edge.hardening import forbid_memory_access
from edge.oneshot.wire import answer_pipe, pack, read_frame
from edge.secrets.keys import CoreKey, CorePublicKey
from edge.secrets.seal_wire import ERRORS, key_from_plain
from edge.secrets.sealing import seal_plaintext, unseal_plaintext
from edge.secrets.storefile import read_sealed

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


def _unseal(request: Mapping[str, Any]) -> dict[str, Any]:
    # The key first, store file or not: a core with a bad key must not start.
    key = CoreKey.load(key_from_plain(request["key"]))
    path = Path(str(request["path"]))
    blob = read_sealed(path)
    plaintext = None if blob is None else unseal_plaintext(blob, key, path=str(path))
    return {"result": plaintext, "public_key": key.public_der}


def _seal(request: Mapping[str, Any]) -> dict[str, Any]:
    key = CorePublicKey.from_der(bytes(request["public_key"]))
    return {"result": seal_plaintext(bytes(request["plaintext"]), key)}


def _verify(request: Mapping[str, Any]) -> dict[str, Any]:
    # Here, not at the top: only this operation needs Ed25519.
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PublicKey,
    )

    try:
        key = Ed25519PublicKey.from_public_bytes(bytes(request["public_key"]))
        key.verify(bytes(request["signature"]), bytes(request["message"]))
    except (InvalidSignature, ValueError):
        return {"result": False}
    return {"result": True}


_OPS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "unseal": _unseal,
    "seal": _seal,
    "verify": _verify,
}


def serve(request: Mapping[str, Any]) -> dict[str, Any]:
    """Answer one request: its result, an allow-listed error, or the class of anything else."""
    try:
        return _OPS[str(request["op"])](request)
    except EdgeError as exc:
        plain = ERRORS.to_plain(exc)
        if plain is not None:
            return {"error": plain}
        return {"failed": type(exc).__name__}
    except Exception as exc:  # noqa: BLE001 - the class only: the text could quote plaintext
        return {"failed": type(exc).__name__}


def main() -> None:
    """Read one request on stdin, answer it on stdout, exit."""
    # As the core: no core dump of the key or the plaintext, no tracing by the same user.
    forbid_memory_access()
    out = answer_pipe()
    try:
        request = read_frame(0)
    except (EOFError, TypeError, ValueError):
        sys.exit(2)  # no request: the core went away, or a bug; nothing to answer
    out.write(pack(serve(request)))
    out.close()


if __name__ == "__main__":
    main()
