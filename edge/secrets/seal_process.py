# SPDX-License-Identifier: Apache-2.0
"""The core's crypto, run in short-lived children: the store's seal and unseal, and signatures.

The running core never imports `cryptography`. Each operation starts
`python -m edge.secrets.sealer`, sends it one request and reads one answer
(`edge.secrets.seal_wire`, over `edge.oneshot`):

- `Unsealing` opens the store at start. `edge run` starts it right after reading the config,
  so the child's start overlaps the core's own imports; `ChildStore.aload` awaits its answer.
- `ChildStore` is the core's store: it unseals through `Unsealing`, and seals each rotation
  in a child given the public key the store was opened with, then writes the file itself
  (`StoreFile.write`: atomic, fsynced, 0600).
- `Verifier` checks an Ed25519 signature, one child at a time.

A child that can't start, dies, hangs or answers garbage fails the operation with the error
its caller already handles: a start that can't open the store stops with a `StoreError`; a
rotation that can't seal is a `StoreWriteError` (the old store untouched); a signature that
can't be checked is a `SignatureCheckError` (the deployment is refused, never accepted).
Plaintext crosses only the pipes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from edge.errors import EdgeError, SignatureCheckError, StoreError, StoreWriteError
from edge.log import get_logger
from edge.oneshot.run import NoAnswerError, OneShot
from edge.secrets.seal_wire import ERRORS, SEALER_MODULE, key_to_plain
from edge.secrets.storefile import StoreFile, pack_contents, unpack_contents

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from structlog.typing import FilteringBoundLogger

    from edge.secrets.contents import StoreContents
    from edge.secrets.keyref import TokenKeyRef

#: Opening the store at start: the child's start (importing `cryptography` takes about a second
#: on a slow 32-bit gateway), the key (a PKCS#11 token loads its module, logs in and test-
#: unwraps: seconds on a slow HSM) and the decryption. A minute is far beyond all of it, and
#: well inside systemd's default 90 s start timeout, so a hung token stops the core with a
#: message instead of holding it forever.
UNSEAL_DEADLINE_SECONDS: Final = 60.0
#: Sealing a rotation: a child's start and one wrap with the public key (no token involved).
#: Only a hung child reaches 30 s; the deployment or refresh waiting on it then fails cleanly.
SEAL_DEADLINE_SECONDS: Final = 30.0
#: Checking a signature: a child's start and one Ed25519 verification. Deployments are applied
#: one at a time, so a hung check holds the queue at most this long.
VERIFY_DEADLINE_SECONDS: Final = 10.0
#: The name of the child in log events (`sealer.process.output`) and messages.
_NAME: Final = "sealer"


class _FailedError(Exception):
    """A crypto child gave no usable answer; `why` completes "the sealer process ..."."""

    def __init__(self, why: str) -> None:
        self.why = why
        super().__init__(why)


def _start() -> OneShot | NoAnswerError:
    """A crypto child, started; or why it could not be."""
    try:
        return OneShot(SEALER_MODULE, name=_NAME)
    except NoAnswerError as exc:
        return exc


async def _answer(
    child: OneShot | NoAnswerError,
    request: Mapping[str, Any] | None,
    *,
    seconds: float,
    log: FilteringBoundLogger,
    result: type | tuple[type, ...],
) -> dict[str, Any]:
    """The child's answer frame, its `result` of type `result`; its error raised as the core's.

    Raises:
        EdgeError: The child's allow-listed error (see `seal_wire.ERRORS`).
        _FailedError: The child did not start, gave no answer within `seconds` or none at
            all, or not one that makes sense.
    """
    if isinstance(child, NoAnswerError):
        raise _FailedError(child.why)
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        frame = await child.exchange(request, deadline=deadline, log=log)
    except TimeoutError:
        raise _FailedError(f"gave no answer within {seconds:g} s") from None
    except NoAnswerError as exc:
        raise _FailedError(exc.why) from None
    if "error" in frame:
        try:
            error = ERRORS.from_plain(frame["error"])
        except ValueError:
            raise _FailedError("answered an error it may not answer") from None
        raise error
    if "failed" in frame:
        raise _FailedError(f"failed ({frame['failed']})")
    if not isinstance(frame.get("result"), result):
        raise _FailedError("answered something that is not an answer")
    return frame


class Unsealing:
    """The store's unseal at start, in a child started at once and answered later."""

    def __init__(self, key: Path | TokenKeyRef, path: Path) -> None:
        """Start the child for the store at `path` sealed with `key`; don't wait for it.

        Runs before any event loop: the request is small enough never to block.
        """
        self.path = path
        self._child = _start()
        if isinstance(self._child, OneShot):
            self._child.send_now({"op": "unseal", "key": key_to_plain(key), "path": str(path)})

    async def result(self, log: FilteringBoundLogger) -> tuple[bytes | None, bytes]:
        """Wait for the child: (the store's plaintext or None if there is none, the public key).

        Raises:
            CoreKeyError: The key is missing or unusable (`edge init` not run, a token...).
            InsecurePermissionsError: The key or store file is open to other users.
            StoreCorruptError: The store can't be decrypted.
            StoreSymlinkError: The store is a symbolic link.
            StoreError: The store can't be read, or the child gave no answer.
        """
        try:
            frame = await _answer(
                self._child,
                None,
                seconds=UNSEAL_DEADLINE_SECONDS,
                log=log,
                result=(bytes, type(None)),
            )
            public_key = frame.get("public_key")
            if not isinstance(public_key, bytes):
                raise _FailedError("answered without the key's public half")  # noqa: TRY301
        except _FailedError as exc:
            msg = f"secret store {self.path} could not be opened: the sealer process {exc.why}"
            raise StoreError(msg) from None
        return frame["result"], public_key

    def cancel(self) -> None:
        """Kill the child if nobody will ask for its answer (the core failed to start)."""
        if isinstance(self._child, OneShot):
            self._child.kill()


class ChildStore(StoreFile):
    """The core's store: sealed and opened in the crypto child, written here."""

    def __init__(
        self,
        *,
        path: Path,
        key: Path | TokenKeyRef,
        unsealing: Unsealing | None = None,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        """Describe the store; nothing runs until `aload` (unless `unsealing` already does).

        Args:
            path: The store file.
            key: The core key's reference (`[core] private_key`).
            unsealing: This store's unseal, started early; `aload` starts one otherwise.
            logger: Where to log store events and the child's stderr.
        """
        super().__init__(path=path, logger=logger)
        self._key = key
        self._unsealing = unsealing
        self._public_key: bytes | None = None

    async def aload(self) -> StoreContents | None:
        """Open the store: the contents, or None if there is none yet; the key checked anyway.

        Raises:
            CoreKeyError, InsecurePermissionsError, StoreCorruptError, StoreSymlinkError,
            StoreError: As `Unsealing.result`.
        """
        self.clean_stale_temp_files()
        unsealing, self._unsealing = self._unsealing or Unsealing(self._key, self.path), None
        plaintext, self._public_key = await unsealing.result(self._log)
        return None if plaintext is None else unpack_contents(plaintext, str(self.path))

    async def asave(self, contents: StoreContents) -> None:
        """Seal `contents` in a child and atomically replace the store file with them.

        Cancelling it before the file is written kills the child and leaves the store as it
        was; once the write has begun, it completes or fails atomically (see `StoreFile.write`).

        Raises:
            StoreWriteError: The contents can't be serialised, the child gave no sealed store,
                or writing failed. The previous store is untouched.
        """
        where = str(self.path)
        if self._public_key is None:
            raise StoreWriteError(where, "the store was never opened, so its key is not known")
        try:
            request = {
                "op": "seal",
                "public_key": self._public_key,
                "plaintext": pack_contents(contents),
            }
            frame = await _answer(
                _start(), request, seconds=SEAL_DEADLINE_SECONDS, log=self._log, result=bytes
            )
        except _FailedError as exc:
            raise StoreWriteError(where, f"the sealer process {exc.why}") from None
        except EdgeError as exc:
            raise StoreWriteError(where, str(exc)) from exc
        await asyncio.to_thread(self.write, frame["result"])

    def __repr__(self) -> str:
        """Name the file and the key's reference; never the contents."""
        shown = getattr(self._key, "uri", self._key)
        return f"ChildStore(path={str(self.path)!r}, key={str(shown)!r})"


class Verifier:
    """Checks Ed25519 signatures in the crypto child, one child at a time.

    One at a time, so that a flood of forged documents can't become a flood of processes
    (the deployment intake's rate limit bounds the rest).
    """

    def __init__(self, *, logger: FilteringBoundLogger | None = None) -> None:
        """Ready to check; nothing starts until a call."""
        self._log: FilteringBoundLogger = logger or get_logger("deploy")
        self._lock = asyncio.Lock()

    async def __call__(self, public_key: bytes, signature: bytes, message: bytes) -> bool:
        """Return whether `signature` is `public_key`'s over `message`.

        Raises:
            SignatureCheckError: The child gave no answer (the document must be refused).
        """
        request = {
            "op": "verify",
            "public_key": public_key,
            "signature": signature,
            "message": message,
        }
        async with self._lock:
            try:
                frame = await _answer(
                    _start(), request, seconds=VERIFY_DEADLINE_SECONDS, log=self._log, result=bool
                )
            except _FailedError as exc:
                raise SignatureCheckError(f"the sealer process {exc.why}") from None
            except EdgeError as exc:
                raise SignatureCheckError(str(exc)) from None
        return bool(frame["result"])
