# SPDX-License-Identifier: Apache-2.0
"""The worker's cache of the core's answers: exact, with no expiry, kept true by the core's pushes.

A function asks for its few secrets over and over. Once the core has answered a read, the same
read is answered here, from a dict, with no round trip, for exactly as long as the answer holds:

* Caching is on only while this process holds a watch with the core (`OP_WATCH`): a daemon
  thread keeps a long poll open on a connection of its own. The core answers the poll whenever
  its answers change (every rotation, refresh, revocation and redeploy), the thread drops every
  cached answer and only then acknowledges, in its next poll. The core waits for that
  acknowledgement before it reports the change done (and restarts a worker that doesn't give it
  within a second), so no answer from before a change is served after the change is reported.
* An answer is stored only if no invalidation came between its request being sent and its
  answer arriving (a generation number, taken before the request): an answer fetched before a
  change is never cached after it.
* When the watch is lost (the core went away, the connection broke) caching is off and the
  cache empty until the thread has a watch again. A worker of another user can't reach the
  core's socket: the core hands it a connected socket for the watch, used once; when that
  connection breaks, caching is off for good in that process.

Reads served from the cache are counted here and reported to the core with the next poll (after
an invalidation, and at least every heartbeat), which audits them as self-reported: a function
that holds a value can always skip the report, so the audit says so. A read racing another
thread's count of the same answer may go uncounted.

A forked child starts with an empty cache, caching off, and watches anew on its first read;
a forked child of a worker of another user, which has no connection of its own, never caches.
"""

from __future__ import annotations

import os
import threading
import time

from edge.errors import IpcCallError, IpcConnectionError
from edge.ipc.client import IpcClient
from edge.ipc.protocol import OP_GET_SECRET_VALUE, OP_GET_SECRET_VALUE_V1, OP_WATCH

# Annotations only: a worker loads no `typing` (see edge/child/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Hashable
    from typing import Any, Final

__all__ = ["MAX_ENTRIES", "AnswerCache", "cache_key"]

#: Distinct answers kept; emptied when full (a function reads a few secrets, not hundreds).
MAX_ENTRIES: Final = 256
#: Seconds between attempts to watch again after the core went away, doubling to the cap.
RETRY_INITIAL_SECONDS: Final = 0.05
RETRY_MAX_SECONDS: Final = 5.0
_NATIVE_ARGS: Final = frozenset({"SecretId", "VersionId", "VersionStage"})
# Statuses of a poll that end watching for good: the core doesn't know the operation (400) or
# refuses this worker (403: it is being replaced).
_FINAL_STATUSES: Final = frozenset({400, 403})
# The core dropped this watch (it missed an invalidation's deadline): watch again.
_UNKNOWN_WATCH: Final = 404


def cache_key(op: str, args: dict[str, Any]) -> Hashable | None:
    """The key a request's answer is cached under, or None if it must always reach the core.

    Only secret reads are cached, and never a `Refresh` read (it must reach Secrets Manager).
    The V1 SDK's JSON request is its own key; one that mentions Refresh, or escapes characters
    (which could spell it), is not cached rather than parsed.
    """
    if op == OP_GET_SECRET_VALUE_V1:
        payload = args.get("Payload")
        if (
            len(args) == 1
            and type(payload) is bytes
            and b"Refresh" not in payload
            and b"\\" not in payload
        ):
            return (op, payload)
        return None
    if op == OP_GET_SECRET_VALUE and args.keys() <= _NATIVE_ARGS:
        return (op, args.get("SecretId"), args.get("VersionId"), args.get("VersionStage"))
    return None


def _reported(key: Hashable) -> tuple[str, dict[str, Any]]:
    """The op and arguments a cache key stands for, as the core reads them in a report."""
    if not isinstance(key, tuple):  # pragma: no cover - keys come from cache_key
        raise TypeError(key)
    if key[0] == OP_GET_SECRET_VALUE_V1:
        return key[0], {"Payload": key[1]}
    names = ("SecretId", "VersionId", "VersionStage")
    return key[0], {n: v for n, v in zip(names, key[1:], strict=True) if v is not None}


def _pause_before_watching_again(
    exc: IpcCallError | IpcConnectionError, client: IpcClient, failures: int
) -> float | None:
    """Seconds to wait before watching again after a failed poll; None: stop watching for good."""
    status = getattr(exc, "status", None)
    if status in _FINAL_STATUSES:
        return None
    if isinstance(exc, IpcConnectionError) and not client.reconnects:
        return None  # a socket the core handed over: nothing to watch over any more
    if status == _UNKNOWN_WATCH:
        return 0.0  # a dropped watch is watched again at once
    return min(RETRY_MAX_SECONDS, RETRY_INITIAL_SECONDS * 2.0 ** min(failures, 10))


class AnswerCache:
    """The answers, their read counts, and the watch that keeps them true.

    Args:
        client: Makes the watch's own connection (the core's socket and this worker's token),
            or returns None when this process has none (it then never caches); None when
            the function turned caching off.
    """

    def __init__(self, client: Callable[[], IpcClient | None] | None) -> None:
        self._client = client
        self._entries: dict[Hashable, dict[str, Any]] = {}
        self._hits: dict[Hashable, int] = {}
        self._lock = threading.Lock()
        # Grows at every invalidation and every change of `_on`: see `ticket`.
        self._generation = 0
        self._on = False
        # The invalidation the entries reflect (the core's numbering).
        self._seq = 0
        self._watching = False
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    @property
    def active(self) -> bool:
        """Whether answers are cached now (the process holds a watch)."""
        return self._on

    def lookup(self, key: Hashable) -> dict[str, Any] | None:
        """The cached answer to `key` (shared: don't change it), counted as a read; or None."""
        entry = self._entries.get(key)
        if entry is not None:
            hits = self._hits
            hits[key] = hits.get(key, 0) + 1
        return entry

    def ticket(self) -> int:
        """Taken before sending a request: `store` keeps its answer only if nothing changed."""
        return self._generation if self._on else -1

    def store(self, ticket: int, key: Hashable, result: dict[str, Any]) -> None:
        """Keep the answer to `key` if no invalidation came since `ticket` was taken."""
        if ticket < 0:
            return
        with self._lock:
            # Off since the ticket was taken (the watch broke) also fails: off bumps it too, but
            # a ticket read across that change may hold the new generation.
            if ticket != self._generation or not self._on:
                return
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = result

    def watch(self) -> None:
        """Start the watch's thread, once per process (and again in a forked child)."""
        if self._watching or self._client is None:
            return
        with self._lock:
            if self._watching:
                return
            self._watching = True
        threading.Thread(target=self._run, name="edge-answer-cache", daemon=True).start()

    def reset(self, seq: int, *, on: bool) -> tuple[int, list[tuple[Hashable, int]]]:
        """Drop every answer, from invalidation `seq` on; return the reads counted before."""
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._on = on
            old, self._seq = self._seq, seq
            hits, self._hits = self._hits, {}
        return old, list(hits.items())

    def take_reads(self) -> tuple[int, list[tuple[Hashable, int]]]:
        """The reads counted since the last report, with the invalidation they were served under."""
        with self._lock:
            hits, self._hits = self._hits, {}
            seq = self._seq
        # list() of a dict's items runs in C without releasing the GIL: a consistent copy.
        return seq, list(hits.items())

    # --- the watch's thread ---------------------------------------------------------------------

    def _run(self) -> None:
        assert self._client is not None  # noqa: S101 - checked by watch()
        client = self._client()
        if client is None:
            return
        watch_id = old_id = seen = 0
        report: tuple[int, list[tuple[Hashable, int]]] = (0, [])
        failures = 0
        while True:
            args: dict[str, Any] = {"Watch": watch_id}
            if watch_id == 0:
                args["Replaces"] = old_id
            else:
                args["Seen"] = seen
                seq, reads = report if report[1] else self.take_reads()
                report = (0, [])
                if reads:
                    entries = [[*_reported(key), count] for key, count in reads]
                    args["Reads"] = {"Seq": seq, "Counts": entries}
            try:
                result = client.call(OP_WATCH, args)
            except (IpcCallError, IpcConnectionError) as exc:
                # Off at once: the core no longer tells this process when its answers change.
                report = self.reset(0, on=False)
                pause = _pause_before_watching_again(exc, client, failures + 1)
                if pause is None:
                    return
                watch_id, old_id = 0, watch_id or old_id
                if pause:
                    failures += 1
                    time.sleep(pause)
                continue
            failures = 0
            seq = result["Seq"]
            if watch_id == 0:
                watch_id, seen = result["Watch"], seq
                pending = self.reset(seq, on=True)
                report = pending if pending[1] else report
            elif seq != seen:
                # Dropped before acknowledging, which the next poll does.
                report = self.reset(seq, on=True)
                seen = seq

    def _after_fork(self) -> None:
        # The thread and the connection stay with the parent; the lock may have been held.
        self._lock = threading.Lock()
        self._entries = {}
        self._hits = {}
        self._on = False
        self._generation += 1
        self._watching = False
