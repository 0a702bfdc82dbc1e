# SPDX-License-Identifier: Apache-2.0
"""Who may speak for a worker on the IPC: its token, and what the kernel says about the caller.

A worker proves who it is with a token the process manager registered for it (`WorkerIdentity`),
and the kernel (`SO_PEERCRED`, not the peer's word) has to agree: the same uid, and a pid that is
the worker's or one of its descendants. The server (`edge.ipc.server`) keeps the registry; this
module holds the identity and the checks, which touch nothing but /proc.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from dataclasses import dataclass
from typing import Final

#: How far up the process tree a peer may be from the worker it claims to be (a worker's shell
#: script starting Python is 1-2 levels; the bound keeps a /proc walk short whatever happens).
MAX_ANCESTRY_DEPTH: Final = 32
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Who a token belongs to, and what the kernel must confirm about whoever presents it.

    Attributes:
        function_arn: The (qualified) ARN of the function the worker runs.
        uid: If set, the connecting process's uid (`SO_PEERCRED`) must be exactly this.
        pid: If set, the connecting process must be this process or one of its descendants.
        pid_pending: The worker is being started and its pid is not known yet: a Hello with
            this token waits (within the Hello timeout) until the identity is registered again
            with the pid, and is judged against that. Without it, any process of the same uid
            that read the token (from /proc/<pid>/environ, say) could get in first.
        adopted_only: Accept the token only on the connection `adopt` was given for it (a
            worker running as another user, whose socketpair's peer credentials name the core):
            another worker of that user can't use a stolen token on its own connection.
    """

    function_arn: str
    uid: int | None = None
    pid: int | None = None
    pid_pending: bool = False
    adopted_only: bool = False


def token_digest(token: str) -> bytes:
    """The key a token is registered and looked up under; the token itself is never kept."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def peer_credentials(sock: socket.socket | None) -> tuple[int | None, int | None]:
    """Return (pid, uid) of the process that connected, from the kernel, or Nones."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None, None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None, None
    pid, uid, _gid = _PEERCRED.unpack(raw)
    return pid, uid


def identity_problem(
    identity: WorkerIdentity | None,
    digest: bytes,
    *,
    adopted_for: bytes | None,
    peer_pid: int | None,
    peer_uid: int | None,
) -> str | None:
    """Say why a caller may not present the token of `digest`, or None if it may.

    Args:
        identity: What the token is registered as, or None if it isn't.
        digest: The presented token's digest.
        adopted_for: For a connection handed over to one worker, its token's digest.
        peer_pid: The caller's pid, from the kernel.
        peer_uid: The caller's uid, from the kernel.
    """
    if identity is None:
        return "unknown or revoked token"
    if adopted_for is not None and adopted_for != digest:
        return "another worker's token on a handed-over connection"
    if identity.adopted_only and adopted_for != digest:
        return "this worker's token is only valid on the connection handed to it"
    if identity.uid is not None and peer_uid != identity.uid:
        return "peer uid does not match the worker's"
    if identity.pid is not None and (
        peer_pid is None or not _descends_from(peer_pid, identity.pid)
    ):
        return "peer process is not the worker or one of its descendants"
    return None


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether `pid` is `ancestor` or below it in the process tree (/proc, bounded walk)."""
    for _ in range(MAX_ANCESTRY_DEPTH):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        parent = _parent_pid(pid)
        if parent is None:
            return False
        pid = parent
    return False


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:  # noqa: PTH123 - procfs, one small read
            stat_line = f.read()
    except OSError:
        return None
    # Format: "pid (comm) state ppid ...". comm may hold spaces and parentheses, so split
    # after the last ')'.
    fields = stat_line[stat_line.rfind(b")") + 2 :].split()
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None
