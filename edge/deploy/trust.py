# SPDX-License-Identifier: Apache-2.0
"""What a core trusts, and how it opens a payload: pure checks here, the signature in a child.

Every check that needs no crypto runs in the core, before any process starts
(`edge.envelope.check_envelope`: size, JSON, format, thing name, the signer's key id among the
trusted ones, base64, signature length), so a forged document with an unknown key id costs a
JSON parse and no more. Only the Ed25519 verification itself runs in the core's crypto child
(`edge.secrets.seal_process.Verifier`), which is given the raw public key, the signature and
the signed message. The trusted keys' ids are computed at start without any crypto library
(`edge.envelope.load_trusted_key`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edge.envelope import Opened, check_envelope, load_trusted_key, raw_key_id
from edge.errors import BadSignatureError
from edge.secrets.seal_process import Verifier

if TYPE_CHECKING:
    from pathlib import Path

#: Verifies an Ed25519 signature: (raw public key, signature, message) -> whether it holds.
Verify = Callable[[bytes, bytes, bytes], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class DeploymentTrust:
    """What a core trusts: its own thing name, the signers' public keys, and unsigned or not."""

    thing_name: str
    #: Raw 32-byte Ed25519 public keys, by key id (`edge.envelope.raw_key_id`).
    keys: Mapping[str, bytes] = field(default_factory=dict)
    #: Development only: also accept documents that are not signed at all.
    allow_unsigned: bool = False
    #: Where signatures are verified: the crypto child, unless told otherwise.
    verify: Verify = field(default_factory=Verifier)

    @classmethod
    def of(
        cls,
        thing_name: str,
        keys: Iterable[bytes],
        *,
        allow_unsigned: bool = False,
        verify: Verify | None = None,
    ) -> DeploymentTrust:
        """Build from raw public keys; signatures checked in the crypto child unless `verify`."""
        by_id = {raw_key_id(k): k for k in keys}
        return cls(thing_name, by_id, allow_unsigned, verify or Verifier())

    @classmethod
    def load(
        cls,
        thing_name: str,
        key_paths: Iterable[Path],
        *,
        allow_unsigned: bool = False,
        verify: Verify | None = None,
    ) -> DeploymentTrust:
        """Read the trusted public keys from PEM files (see `edge.envelope.load_trusted_key`).

        Raises:
            SigningKeyError: A file is missing, unreadable or not an Ed25519 public key.
        """
        keys = [load_trusted_key(p) for p in key_paths]
        return cls.of(thing_name, keys, allow_unsigned=allow_unsigned, verify=verify)

    async def open(self, payload: bytes) -> Opened:
        """Check a payload from the deployments topic; verify its signature in the child.

        Returns:
            The document's exact bytes and its signer's key id (None: unsigned, allowed).

        Raises:
            SignatureError: As `edge.envelope.check_envelope` (no child is started for any of
                those); `BadSignatureError` if the signature does not verify;
                `SignatureCheckError` if it could not be checked at all.
        """
        checked = check_envelope(
            payload, self.keys, thing_name=self.thing_name, allow_unsigned=self.allow_unsigned
        )
        if isinstance(checked, Opened):
            return checked
        if not await self.verify(self.keys[checked.key_id], checked.signature, checked.message):
            raise BadSignatureError(checked.key_id)
        return Opened(checked.document, checked.key_id)
