"""Free pages inside the C heap go back to the kernel when the core asks (glibc)."""

from __future__ import annotations

import os
import platform

import pytest

from edge.fixtures.procfs import vm_rss_kib
from edge.heap import release_free_heap

#: Blocks below glibc's mmap threshold (128 KiB), so they come from the heap itself; each
#: spans at least one whole page, which is what the trim can release from a hole.
BLOCK = 16 * 1024
BLOCKS = 4000


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc",
    reason="malloc_trim exists only in glibc; elsewhere edge.heap does nothing to test",
)
def test_freed_blocks_in_the_middle_of_the_heap_leave_the_resident_set() -> None:
    blocks = [bytearray(os.urandom(16)) * (BLOCK // 16) for _ in range(BLOCKS)]
    del blocks[::2]  # holes between live blocks: free() alone keeps their pages resident
    before = vm_rss_kib(os.getpid())
    assert release_free_heap()
    after = vm_rss_kib(os.getpid())
    # Half the blocks, 31 MiB, were freed; most of it must leave.
    assert before - after > BLOCK * BLOCKS // 2 // 1024 // 2, (before, after)
    assert len(blocks) == BLOCKS // 2
