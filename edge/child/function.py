# SPDX-License-Identifier: Apache-2.0
"""Function code's typed client for the core: read a secret by id, label or version; list grants.

    from edge.child.function import get_secret_value, list_secrets

    db = get_secret_value("app/db")                            # AWSCURRENT
    old = get_secret_value("app/db", VersionStage="AWSPREVIOUS")
    pinned = get_secret_value("app/db", VersionId=old["VersionId"])
    fresh = get_secret_value("app/db", Refresh=True)           # asks Secrets Manager first
    names = [s["Name"] for s in list_secrets()]

Worker-side and small: it imports the standard library, `edge.errors` and the IPC's client and
framing, nothing of the core, so a worker loads it as cheaply as the `greengrasssdk` path. Every
request of a worker process, this client's and the `greengrasssdk` compat layer's, goes through
`answer` over one shared connection: the one place answers come in, and where repeated secret
reads are answered from the process's cache (`edge.child.cache`: exact, kept true by the core).

Errors: `IpcCallError` with V1's `status` and a `message` naming the secret and the function
(403 not granted, 404 unknown secret or label or version not on this core, 400 bad arguments),
never a value; `IpcConnectionError` when the core can't be reached or the process doesn't run
under a core.
"""

from __future__ import annotations

import base64
import importlib
import os
import socket
import struct
import threading
from datetime import UTC, datetime

from edge.child.cache import AnswerCache, cache_key
from edge.errors import IpcCallError, IpcConnectionError
from edge.ipc.client import IpcClient
from edge.ipc.protocol import OP_GET_SECRET_VALUE, OP_LIST_SECRETS

# Annotations only: a worker loads no `typing` (see edge/child/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from edge.child.shapes import GrantedSecret, GrantedVersion, SecretValue

__all__ = [
    "GrantedSecret",
    "GrantedVersion",
    "IpcCallError",
    "IpcConnectionError",
    "SecretValue",
    "answer",
    "answers_cached",
    "call",
    "get_secret_value",
    "list_secrets",
    "shared_client",
]


#: Set for a worker of another user, which can't reach the core's socket: the connected sockets
#: the core handed it instead, for its requests and for its cache's watch.
HANDED_FD = "EDGE_IPC_FD"
HANDED_WATCH_FD = "EDGE_IPC_WATCH_FD"
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _claim(variable: str) -> int | None:
    """The socket the core handed this worker in `variable`, if this process may use it.

    It belongs to the process the core started: the kernel names the socketpair's maker (the
    core) as the peer, and only that process has the core as its parent. A process the worker
    forked or executed that sees the variable gets None. (The runtime has already made it
    close-on-exec, before the function's code ran: programs the function runs don't hold it.)
    """
    try:
        fd = int(os.environ[variable])
        probe = socket.socket(fileno=fd)
    except (KeyError, ValueError, OSError):
        return None
    try:
        raw = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    finally:
        probe.detach()
    return fd if _PEERCRED.unpack(raw)[0] == os.getppid() else None


_lock = threading.Lock()
_shared: IpcClient | None = None


def shared_client() -> IpcClient:
    """The worker process's one connection to the core, made from its environment.

    Raises:
        IpcConnectionError: The process doesn't run under an edge core (no `EDGE_IPC_SOCKET`
            or token in its environment).
    """
    global _shared  # noqa: PLW0603 - a process-wide connection is the point
    if _shared is not None:  # the common case: no lock once made
        return _shared
    with _lock:
        if _shared is None:
            socket_path = os.environ.get("EDGE_IPC_SOCKET")
            token = os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
            if not socket_path or not token:
                raise IpcConnectionError(
                    socket_path or "EDGE_IPC_SOCKET", "not running under an edge core"
                )
            handed = HANDED_FD in os.environ
            _shared = IpcClient(
                socket_path,
                token,
                inherited_fd=_claim(HANDED_FD) if handed else None,
                handed=handed,
            )
        return _shared


def _watch_client() -> IpcClient | None:
    """A second connection, for the cache's watch (see `edge.child.cache`); None if none."""
    # Only ever made after a call through the shared client succeeded: both are set.
    socket_path = os.environ["EDGE_IPC_SOCKET"]
    token = os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    if HANDED_FD not in os.environ:
        return IpcClient(socket_path, token)
    fd = _claim(HANDED_WATCH_FD)
    return None if fd is None else IpcClient(socket_path, token, inherited_fd=fd, handed=True)


# Closed on exec from the moment the SDK or this client is imported, not only once used.
for _variable in (HANDED_FD, HANDED_WATCH_FD):
    _claim(_variable)
# A function whose every read must reach the core (and its audit) sets EDGE_ANSWER_CACHE=off in
# its environment variables.
_cache = AnswerCache(None if os.environ.get("EDGE_ANSWER_CACHE") == "off" else _watch_client)


def answer(op: str, args: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """`call`, but a cached answer is returned as it is: read it, never change it.

    For this package's own callers (the typed client, the compat layer), which only read.
    """
    key = cache_key(op, args)
    if key is None:
        return shared_client().call(op, args, timeout)
    cache = _cache
    hit = cache.lookup(key)
    if hit is not None:
        return hit
    ticket = cache.ticket()
    result = shared_client().call(op, args, timeout)
    cache.store(ticket, key, result)
    cache.watch()
    return result


def call(op: str, args: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Send one request over the shared connection and return its answer (see `IpcClient.call`).

    A secret read the core answered before is answered from the process's cache while the core
    keeps it true (see `edge.child.cache`); the map returned is the caller's own.
    """
    return dict(answer(op, args, timeout))


def answers_cached() -> bool:
    """Whether this process caches the core's answers now (its watch is registered)."""
    return _cache.active


def get_secret_value(
    SecretId: str,  # noqa: N803 - boto3's and greengrasssdk's argument names
    *,
    VersionId: str | None = None,  # noqa: N803
    VersionStage: str | None = None,  # noqa: N803
    Refresh: bool = False,  # noqa: N803
    timeout: float | None = None,
) -> SecretValue:
    """Read a version of a secret the function was granted.

    Args:
        SecretId: The secret's name or ARN.
        VersionId: A version the core holds (one a deployed label points to).
        VersionStage: A deployed staging label; AWSCURRENT when neither is given.
        Refresh: Have the core ask Secrets Manager for the secret first (rate-limited by the
            core; its answer comes from the store as it is if that fails).
        timeout: Seconds to wait for the answer; None waits as long as it takes.

    Raises:
        IpcCallError: The core refused (see the module's docstring for the statuses).
        IpcConnectionError: The core can't be reached.
    """
    args: dict[str, Any] = {"SecretId": SecretId}
    if VersionId is not None:
        args["VersionId"] = VersionId
    if VersionStage is not None:
        args["VersionStage"] = VersionStage
    if Refresh:
        args["Refresh"] = True
    result = answer(OP_GET_SECRET_VALUE, args, timeout)
    value: SecretValue = {
        "ARN": result["ARN"],
        "Name": result["Name"],
        "VersionId": result["VersionId"],
        "VersionStages": list(result["VersionStages"]),
        "CreatedDate": datetime.fromtimestamp(result["CreatedDate"] / 1000, UTC),
    }
    if "SecretString" in result:
        value["SecretString"] = result["SecretString"]
    else:
        value["SecretBinary"] = base64.b64decode(result["SecretBinary"])
    return value


def list_secrets(timeout: float | None = None) -> list[GrantedSecret]:
    """The secrets the calling function may read, with their versions on this core; no values.

    Raises:
        IpcConnectionError: The core can't be reached.
    """
    secrets: list[GrantedSecret] = answer(OP_LIST_SECRETS, {}, timeout)["Secrets"]
    return secrets


#: The answers' `TypedDict`s: `typing` loads only for a function that asks for one of them.
_SHAPES = frozenset({"GrantedSecret", "GrantedVersion", "SecretValue"})


def __getattr__(name: str) -> Any:  # noqa: ANN401 - a TypedDict class
    """Load the answers' types on first use only (PEP 562; see `edge.child.shapes`)."""
    if name in _SHAPES:
        return getattr(importlib.import_module("edge.child.shapes"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
