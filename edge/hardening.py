# SPDX-License-Identifier: Apache-2.0
"""Process hardening for the core: what it holds in memory stays in memory.

`prctl(PR_SET_DUMPABLE, 0)` makes the kernel treat the core like a setuid program: no core
dumps (which would write decrypted secrets to disk), and `/proc/<pid>/mem`, `environ` and
`maps` and ptrace become root-only, so a worker running as the core's user can't read the
core's memory. (It can still read what that user may read on disk, the key and the store:
separate functions from the core with `RunAs`; see docs/security.md.) Workers are
new programs (execve), so they get the default back and are unaffected; the core's crypto
child (`edge.secrets.sealer`), which holds the key and the store's plaintext for a moment, makes
itself non-dumpable first thing.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Final

_PR_SET_DUMPABLE: Final = 4
_PR_GET_DUMPABLE: Final = 3


def _prctl() -> ctypes._NamedFuncPointer | None:
    if not sys.platform.startswith("linux"):
        return None
    # The interpreter's own symbols, libc's among them: no `find_library`, which runs
    # `ldconfig -p` (milliseconds that the core's crypto child would pay on each start).
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl


def forbid_memory_access() -> bool:
    """Make this process non-dumpable (Linux); return whether that is now the case."""
    prctl = _prctl()
    if prctl is None:
        return False
    prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    return is_dumpable() is False


def is_dumpable() -> bool | None:
    """Whether this process may be dumped or traced by its own user; None if unknown."""
    prctl = _prctl()
    if prctl is None:
        return None
    return bool(prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))
