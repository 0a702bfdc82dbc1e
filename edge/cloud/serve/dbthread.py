# SPDX-License-Identifier: Apache-2.0
"""The service's blocking database work, on one thread that owns one `Database`.

Database calls block, and a SQLite connection may only be used by the thread that opened it,
so every request's reads and writes go to one worker thread; the event loop only awaits them.
One thread is plenty: each call holds the database for milliseconds, and the control plane's
writes take one lock at a time anyway (see `edge.cloud.db`). Other processes (`edge cloud`
commands, other replicas) use the same database at the same time through their own
connections; `Database` makes that safe.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Self, TypeVar

from edge.cloud.db import Claim, Database

_T = TypeVar("_T")


class DatabaseThread:
    """An async context manager that opens the database on its own thread and runs calls there."""

    def __init__(self, opener: Callable[[], Database]) -> None:
        self._opener = opener
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-cloud-db")
        self._db: Database | None = None
        self._claim: Claim | None = None

    def claiming(self, claim: Claim) -> DatabaseThread:
        """This thread and connection, recording `claim` in the first write (`Database.with_claim`).

        Not a context manager of its own: the original opens and closes the database.
        """
        view = copy.copy(self)
        view._claim = claim  # noqa: SLF001 - a copy of this very object
        return view

    async def __aenter__(self) -> Self:
        """Open (and migrate) the database on the worker thread.

        Raises:
            CloudDatabaseError: It can't be opened.
        """
        try:
            self._db = await self._submit(self._opener)
        except BaseException:
            self._executor.shutdown(wait=True)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the connection on its thread, then stop the thread (after calls in flight)."""
        db, self._db = self._db, None
        if db is not None:
            # Shielded: a cancelled shutdown must still close the connection it opened.
            await asyncio.shield(self._submit(db.close))
        self._executor.shutdown(wait=True)

    async def call(self, fn: Callable[[Database], _T]) -> _T:
        """Run `fn(database)` on the database thread and return its result (or raise its error)."""
        db = self._db
        if db is None:
            raise RuntimeError("the database thread is not open")
        claim = self._claim
        if claim is not None:
            db = db.with_claim(claim)
        return await self._submit(lambda: fn(db))

    async def _submit(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
