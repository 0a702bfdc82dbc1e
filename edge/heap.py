# SPDX-License-Identifier: Apache-2.0
"""Handing the C heap's free pages back to the kernel, where the C library can.

CPython allocates objects bigger than 512 bytes, and its own 256 KiB arenas' bookkeeping,
with the C library's `malloc`. glibc returns freed memory to the kernel only from the top of
its heap, so after start (the import-time garbage) and after a store rotation (a deployment's
documents, the fetched answers, the old contents) free pages in the middle stay resident.
`malloc_trim(0)` releases them (`madvise(MADV_DONTNEED)` on every free page). Other C
libraries (musl) have no such call and need none: there it does nothing.

A deployment also leaves reference cycles: each worker it replaces is a process object
whose tasks, pipes and stream buffers refer to it and to each other, a few hundred objects in
all. Left to the collector's own schedule they pile up over several deployments before a full
collection frees them, and each pile spreads CPython's small-object arenas a little further
(about 2 MB more resident after 50 deployments than after the first, bench/README.md).
`settle_heap` collects them first, so that the trim finds their pages free.
"""

from __future__ import annotations

import ctypes
import functools
import gc
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    # dlopen(NULL): the symbols already loaded into the process, the C library's among them;
    # no search for the library file (`ctypes.util.find_library` runs ldconfig in a child).
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_free_heap() -> bool:
    """Return the heap's free pages to the kernel (glibc); return whether anything was freed."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def settle_heap() -> None:
    """Free a rotation's cyclic garbage, then return the heap's free pages.

    About a millisecond after a deployment: the objects made at start are frozen out of the
    collector's sight (`gc.freeze` in `edge run`), so only what came after is walked.
    """
    gc.collect()
    release_free_heap()
