# SPDX-License-Identifier: Apache-2.0
"""What every confinement step of a worker needs: the C library, and giving up privileges.

Runs inside the worker, so it imports nothing from the core side. `ctypes` is imported only
when a step asks for it (~300 KB of V1's 16 MB MemorySize).
"""

from __future__ import annotations

import os

# Annotations only: a worker loads no `typing` (see edge/child/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_PR_SET_SECUREBITS = 28
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
#: NOROOT, NO_SETUID_FIXUP and KEEP_CAPS, each locked: an exec by uid 0 gains nothing back.
_SECUREBITS_LOCKED_DOWN = 0x2F
_CAPABILITY_VERSION_3 = 0x20080522


class ConfinementError(Exception):
    """The worker could not be confined as the core asked."""


def load_libc() -> tuple[ModuleType, Any]:
    """The ctypes module and the C library, imported late (~300 KB of a 16 MB budget)."""
    import ctypes  # noqa: PLC0415

    return ctypes, ctypes.CDLL(None, use_errno=True)


def drop_capabilities() -> None:
    """Give up every capability for good, so uid 0 is an ordinary owner of root's files."""
    ctypes, libc = load_libc()
    # Locking the securebits and emptying the bounding set need CAP_SETPCAP, which a hardened
    # container may lack; no_new_privs below already keeps an exec from gaining anything back.
    libc.prctl(_PR_SET_SECUREBITS, _SECUREBITS_LOCKED_DOWN, 0, 0, 0)
    cap = 0
    while libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable, for both 32-bit halves
    if libc.capset(header, data) != 0:
        raise ConfinementError(f"capset: {os.strerror(ctypes.get_errno())}")
    no_new_privs(ctypes, libc)


def no_new_privs(ctypes: ModuleType, libc: Any) -> None:  # noqa: ANN401 - a ctypes CDLL
    """Keep any exec from gaining privileges (setuid bits, file capabilities) for good."""
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise ConfinementError(f"no_new_privs: {os.strerror(ctypes.get_errno())}")


def switch_user(uid: int, gid: int) -> None:
    """Become uid/gid with no supplementary groups (from root: every capability goes too)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
