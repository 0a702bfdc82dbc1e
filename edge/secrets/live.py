# SPDX-License-Identifier: Apache-2.0
"""The live secrets: the one owner of what the core serves, and the only way to change it.

`LiveSecrets` holds the encrypted store, the contents it last wrote (with a generation number
that grows by one at every commit), the index the IPC answers from, and the redactor's set of
values. Two writers hand it new contents, each based on the generation it read:

- the deployment agent, inside `rotation()`: it holds the rotation lock for the whole
  application (fetch, prepare, commit), so nothing else commits under it;
- the refresher, with `commit(base, contents)`: it fetches without the lock and commits only
  if no rotation is under way and `base` is still the current generation; otherwise it is
  refused with `StaleBaseError` (a deployment got in first, and its store is the newer one).

A commit writes the store (atomically), then swaps the contents, the index and the redactor's
values, then tells the listeners (the IPC's answer cache, the stale-read clock), then awaits the
commit's barriers (the workers' caches acknowledging the change): the commit returns, and the
deployment or refresh reports it, only after them. If the write fails, nothing is swapped. No
writer ever cancels another: the lock orders them and the generation tells a writer that its
base is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from edge.heap import settle_heap
from edge.redaction import REDACTOR, SecretRedactor
from edge.secrets.contents import StoreContents
from edge.secrets.index import Reader, SecretIndex


class StaleBaseError(Exception):
    """New contents were based on a generation that is no longer the live one."""

    def __init__(self, base: int, current: int, *, rotating: bool) -> None:
        self.base = base
        self.current = current
        self.rotating = rotating
        why = "a rotation is under way" if rotating else f"generation {current} is live"
        super().__init__(f"contents based on generation {base} are stale: {why}")


class EncryptedStore(Protocol):
    """The store on disk, as far as the live secrets read and write it."""

    async def aload(self) -> StoreContents | None:
        """Read and decrypt the store; None if there is none yet."""
        ...

    async def asave(self, contents: StoreContents) -> None:
        """Encrypt and replace the store atomically."""
        ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The live contents and the generation they belong to; never changes once taken."""

    generation: int
    contents: StoreContents


class LiveSecrets:
    """Owns the store, the live contents and their generation, the index and the redactor."""

    def __init__(self, store: EncryptedStore, *, redactor: SecretRedactor = REDACTOR) -> None:
        """Hold `store`; until `load`, the live contents are empty (generation 0)."""
        self._store = store
        self._redactor = redactor
        self._current = Snapshot(0, StoreContents())
        self._readers: tuple[Reader, ...] = ()
        self._index = SecretIndex()
        self._lock = asyncio.Lock()
        #: Values of contents being built by the rotation under way: masked before they are live.
        self._pending: list[str | bytes] = []
        self._listeners: list[Callable[[], None]] = []
        self._barriers: list[Callable[[], Awaitable[None]]] = []

    async def load(self) -> Snapshot:
        """Read the store at start (empty if there is none) and mask its values in every log."""
        contents = await self._store.aload() or StoreContents()
        self._current = Snapshot(0, contents)
        self._index = SecretIndex.build(contents, self._readers)
        self._mask()
        return self._current

    @property
    def current(self) -> Snapshot:
        """The live contents with their generation: the base for new contents."""
        return self._current

    @property
    def contents(self) -> StoreContents:
        """The live contents (what the store on disk holds)."""
        return self._current.contents

    @property
    def index(self) -> SecretIndex:
        """What the IPC answers from: the live secrets and who may read them."""
        return self._index

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every index swap: answers given before may no longer hold."""
        self._listeners.append(callback)

    def after_commit(self, barrier: Callable[[], Awaitable[None]]) -> None:
        """Await `barrier()` at the end of every commit, before the commit returns.

        For what must be true before a change is reported: no worker still serves an answer
        from before it. It must not raise (the commit is made; there is nothing to undo).
        """
        self._barriers.append(barrier)

    def grant(self, readers: Iterable[Reader]) -> None:
        """Set who may read which secret in the stored deployment, at start.

        Called before any worker runs, so no answer can be cached yet: tells no listener.
        """
        self._readers = tuple(readers)
        self._index = SecretIndex.build(self._current.contents, self._readers)

    @contextlib.asynccontextmanager
    async def rotation(self) -> AsyncIterator[Rotation]:
        """Hold the rotation lock: no other commit happens until the block ends.

        Waits for a commit under way to finish; the base is read after that, so it is the
        newest. Values masked with `Rotation.mask` and never committed stop being masked when
        the block ends.
        """
        async with self._lock:
            rotation = Rotation(self._current, mask=self._mask_pending, commit=self._commit)
            try:
                yield rotation
            finally:
                rotation.close()
                if self._pending:
                    self._pending = []
                    self._mask()
                # What the rotation built and dropped (documents, answers, the old contents,
                # the workers it replaced) is freed now, and its pages go back to the kernel.
                settle_heap()

    async def commit(
        self, base: Snapshot, contents: StoreContents, *, readers: Iterable[Reader] | None = None
    ) -> Snapshot:
        """Make `contents`, built from `base`, live, unless another rotation came first.

        Never waits for the lock: a rotation under way (a deployment) will replace the store
        anyway, so contents built beside it are stale already.

        Raises:
            StaleBaseError: A rotation is under way or `base` is no longer the live generation.
            StoreWriteError: The store could not be written; nothing changed.
        """
        rotating = self._lock.locked()
        if rotating or base.generation != self._current.generation:
            raise StaleBaseError(base.generation, self._current.generation, rotating=rotating)
        async with self.rotation() as rotation:
            return await rotation.commit(contents, readers=readers)

    async def _commit(
        self, base: Snapshot, contents: StoreContents, readers: Iterable[Reader] | None
    ) -> Snapshot:
        # Masked before the write: an error from it must not quote a new value either.
        self._pending.extend(contents.values())
        self._mask()
        await self._store.asave(contents)
        self._current = Snapshot(base.generation + 1, contents)
        if readers is not None:
            self._readers = tuple(readers)
        self._pending = []
        self._mask()  # values rotated out are no longer secrets of this core
        self._index = SecretIndex.build(contents, self._readers)
        for callback in self._listeners:
            callback()
        for barrier in self._barriers:
            await barrier()
        return self._current

    def _mask_pending(self, values: Iterable[str | bytes]) -> None:
        self._pending.extend(values)
        self._mask()

    def _mask(self) -> None:
        self._redactor.update(itertools.chain(self._current.contents.values(), self._pending))


class Rotation:
    """The rotation lock, held: the base it read, masking ahead of time, and the one commit."""

    def __init__(
        self,
        base: Snapshot,
        *,
        mask: Callable[[Iterable[str | bytes]], None],
        commit: Callable[[Snapshot, StoreContents, Iterable[Reader] | None], Awaitable[Snapshot]],
    ) -> None:
        #: The live contents when the lock was taken; they stay live until `commit`.
        self.base = base
        self._mask = mask
        self._commit = commit
        #: Committed, or its block ended: a rotation commits once, while it holds the lock.
        self._done = False

    def close(self) -> None:
        """End the rotation (its block ended): it can no longer commit."""
        self._done = True

    def mask(self, values: Iterable[str | bytes]) -> None:
        """Mask values that may soon be live (just fetched), before anything can mention them."""
        self._mask(values)

    async def commit(
        self, contents: StoreContents, *, readers: Iterable[Reader] | None = None
    ) -> Snapshot:
        """Write `contents` to the store and make them live; `readers` replaces the grants.

        Raises:
            RuntimeError: The rotation's block has ended, or it already committed.
            StoreWriteError: The store could not be written; nothing changed.
        """
        if self._done:
            raise RuntimeError("a rotation commits once, inside its block")
        self._done = True
        return await self._commit(self.base, contents, readers)
