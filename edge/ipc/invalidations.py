# SPDX-License-Identifier: Apache-2.0
"""The core's side of the workers' answer caches: who watches, what was pushed, who acknowledged.

A worker caches the answers it got (`edge.child.cache`) only while it holds a watch here. A watch
is a long poll over `OP_WATCH` on a connection of its own: each of its requests acknowledges the
latest invalidation the worker applied (`Seen`) and waits for the next one. `invalidate` (called
by the core after every commit of its live secrets) starts a new invalidation, answers every
waiting poll at once, and waits until every watch acknowledged it, or until a deadline: the
watches that didn't are returned, for the core to restart their workers. So once it returns,
no worker serves an answer from before the commit out of its cache.

Reads the caches served are reported with the polls, tagged with the invalidation they were
served under; the snapshot of the core's answers at each invalidation is kept (the current and
the previous one) so the reads are resolved against what the worker was actually answered from.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from edge.ipc.auth import WorkerIdentity

__all__ = ["ACK_TIMEOUT_SECONDS", "HEARTBEAT_SECONDS", "Invalidations", "Watch"]

#: How long `invalidate` waits for every watch's acknowledgement by default. A worker's push
#: thread answers within a GIL switch interval (5 ms) of being woken even under load: one that
#: hasn't in a second is stopped, frozen or holds the GIL, and is restarted.
ACK_TIMEOUT_SECONDS: Final = 1.0
#: A waiting poll is answered after this long even if nothing changed, so a worker reports the
#: reads its cache served at least this often.
HEARTBEAT_SECONDS: Final = 10.0
#: Snapshots kept for resolving reported reads: a report names the invalidation its reads were
#: served under, which is the current or the previous one. A worker can't fall further behind:
#: `invalidate` drops a watch that hasn't acknowledged within its deadline, and the core restarts
#: its worker, cache and uncounted reads with it. Each snapshot is a whole index of answers
#: (hundreds of KB for a hundred secrets), so no more are kept than that.
MAX_SNAPSHOTS: Final = 2

_S = TypeVar("_S")
ReadsReport = Callable[[WorkerIdentity, _S, list[Any]], None]


@dataclass(eq=False, slots=True)
class Watch:
    """One worker connection's watch."""

    watch_id: int
    identity: WorkerIdentity
    #: The latest invalidation the worker said its cache reflects.
    seen: int
    #: The poll waiting to be answered, if one is.
    poll: asyncio.Future[None] | None = field(default=None)


class Invalidations(Generic[_S]):
    """The watches of the workers' caches and the invalidations pushed to them.

    Args:
        current: The snapshot the core answers from now (its secret index).
        on_reads: Given each report of cached reads: the worker, the snapshot its reads were
            served from, and the reported entries as the worker sent them (check them).
        heartbeat: Seconds after which a waiting poll is answered anyway.
    """

    def __init__(
        self,
        *,
        current: Callable[[], _S],
        on_reads: ReadsReport[_S],
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self._current = current
        self._on_reads = on_reads
        self._heartbeat = heartbeat
        self._seq = 1
        self._snapshots: dict[int, _S] = {}
        self._watches: dict[int, Watch] = {}
        self._ids = itertools.count(1)
        # Set whenever a watch acknowledges or goes away: `invalidate` looks again.
        self._progress = asyncio.Event()
        #: Invalidations pushed, and watches that missed the deadline (for metrics and tests).
        self.pushed = 0
        self.unacknowledged = 0

    @property
    def seq(self) -> int:
        """The current invalidation's number; a watch that has seen it caches nothing older."""
        return self._seq

    @property
    def watches(self) -> int:
        """Watches registered (workers whose caches are on)."""
        return len(self._watches)

    async def watch(self, identity: WorkerIdentity, args: dict[str, Any]) -> dict[str, Any]:
        """Serve one poll (see `OP_WATCH`).

        Raises:
            ValueError: The arguments are malformed.
            LookupError: The watch is unknown (it was dropped: the worker must watch anew and
                drop its cache).
        """
        watch_id, seen = args.get("Watch"), args.get("Seen", 0)
        if type(watch_id) is not int or type(seen) is not int or not 0 <= seen <= self._seq:
            raise ValueError("Watch and Seen must be ints, Seen at most the current invalidation")
        if watch_id == 0:
            return self._register(identity, args.get("Replaces"))
        found = self._watches.get(watch_id)
        if found is None or found.identity.function_arn != identity.function_arn:
            raise LookupError(f"watch {watch_id} is not registered; watch again")
        watch = found
        reads = args.get("Reads")
        if isinstance(reads, dict):
            self._report(identity, reads)
        if seen > watch.seen:
            watch.seen = seen
            self._progress.set()
        if seen < self._seq:
            return {"Seq": self._seq}
        poll = watch.poll = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self._heartbeat):
                await poll
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            # Its connection is gone: so is the cache it stood for.
            self._drop(watch)
            raise
        finally:
            if watch.poll is poll:
                watch.poll = None
        return {"Seq": self._seq}

    async def invalidate(self, within: float = ACK_TIMEOUT_SECONDS) -> list[WorkerIdentity]:
        """Push an invalidation to every watch; wait until each acknowledged it, or `within` s.

        Call it after the core's answers changed (the new snapshot is `current()`).

        Returns:
            The workers whose watches did not acknowledge in time; their watches are dropped
            (restart them: their caches may hold what the change revoked).
        """
        self._seq += 1
        self.pushed += 1
        seq = self._seq
        self._snapshot(seq)
        for watch in self._watches.values():
            if watch.poll is not None and not watch.poll.done():
                watch.poll.set_result(None)
        try:
            async with asyncio.timeout(within):
                while any(w.seen < seq for w in self._watches.values()):
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            pass
        late = [w for w in self._watches.values() if w.seen < seq]
        for watch in late:
            self._drop(watch)
        self.unacknowledged += len(late)
        return [w.identity for w in late]

    def _register(self, identity: WorkerIdentity, replaces: object) -> dict[str, Any]:
        # A worker that lost its watch's connection watches anew and names the old one.
        old = self._watches.get(replaces) if type(replaces) is int else None
        if old is not None and old.identity.function_arn == identity.function_arn:
            self._drop(old)
        watch = Watch(next(self._ids), identity, self._seq)
        self._watches[watch.watch_id] = watch
        self._snapshot(self._seq)
        return {"Watch": watch.watch_id, "Seq": self._seq}

    def _drop(self, watch: Watch) -> None:
        if self._watches.pop(watch.watch_id, None) is not None:
            self._progress.set()

    def _snapshot(self, seq: int) -> None:
        if seq not in self._snapshots:
            self._snapshots[seq] = self._current()
            for old in [s for s in self._snapshots if s <= seq - MAX_SNAPSHOTS]:
                del self._snapshots[old]

    def _report(self, identity: WorkerIdentity, reads: dict[str, Any]) -> None:
        seq, counts = reads.get("Seq"), reads.get("Counts")
        snapshot = self._snapshots.get(seq) if type(seq) is int else None
        if snapshot is not None and isinstance(counts, list):
            self._on_reads(identity, snapshot, counts)
