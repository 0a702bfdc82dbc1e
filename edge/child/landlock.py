# SPDX-License-Identifier: Apache-2.0
"""Landlock: the file accesses a worker keeps for good, set before any function code runs.

Runs inside the worker (`edge.child.confine` carries out the core's plan), so it imports nothing
from the core side and no dataclasses: V1's 16 MB MemorySize must still fit.

A worker shares the filesystem with the core, usually as the same user. Unix permissions can't
keep it from the core's key, store and config, nor from writing another function's code or the
Python it runs. Landlock (Linux 5.13+) can: it is an allow-list of file accesses that the
process and its children keep for good. The plan the core hands over says which paths are
*hidden* (no read, no write: the state directory, keys, the config, cloud credentials),
which are *protected* (read-only: the code and the interpreters), and which are *writable*
(/tmp and what the operator adds). Landlock grants only whole subtrees, so "everything except
X" is built by granting each sibling along the way down to X (`partition`). Other processes
are out of reach as well: a Landlock domain can't ptrace, or read the /proc files of, a process
outside it, nor (ABI 6+) signal one.
"""

from __future__ import annotations

import os
import stat
import sys

from edge.child.privileges import ConfinementError, load_libc, no_new_privs

# Annotations only: a worker loads no `typing` (see edge/child/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

# Access rights, from <linux/landlock.h>. The numbers are part of the kernel's ABI.
_EXECUTE = 1 << 0
_WRITE_FILE = 1 << 1
_READ_FILE = 1 << 2
_READ_DIR = 1 << 3
_REMOVE_DIR = 1 << 4
_REMOVE_FILE = 1 << 5
_MAKE_CHAR = 1 << 6
_MAKE_DIR = 1 << 7
_MAKE_REG = 1 << 8
_MAKE_SOCK = 1 << 9
_MAKE_FIFO = 1 << 10
_MAKE_BLOCK = 1 << 11
_MAKE_SYM = 1 << 12
_REFER = 1 << 13  # ABI 2
_TRUNCATE = 1 << 14  # ABI 3
_SCOPE_SIGNAL = 1 << 1  # ABI 6
_READ = _READ_FILE | _READ_DIR
_WRITE_V1 = (
    _WRITE_FILE
    | _REMOVE_DIR
    | _REMOVE_FILE
    | _MAKE_CHAR
    | _MAKE_DIR
    | _MAKE_REG
    | _MAKE_SOCK
    | _MAKE_FIFO
    | _MAKE_BLOCK
    | _MAKE_SYM
)
#: Rights that mean something on a file (the rest apply to directories only).
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE
# The same syscall numbers on every architecture (allocated after the tables were unified).
_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
#: Devices every program expects; /dev as a whole is hidden (raw disks, memory, consoles).
DEVICES_READ = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
DEVICES_WRITE = ("/dev/null", "/dev/zero", "/dev/full")
#: A Landlock rule per path: even a crowded /tmp stays well under what the kernel accepts.
MAX_RULES = 20000


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where Landlock is missing or turned off."""
    ctypes, libc = load_libc()
    version = libc.syscall(
        _SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)
    )
    return max(0, int(version))


def _within(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def partition(root: str, excluded: Iterable[str]) -> tuple[list[str], list[str]]:
    """Cover `root` minus every excluded subtree: (whole subtrees, directories split on the way).

    Paths are absolute and real (no symlinks). Symlinks met on the way are left out: Landlock
    judges the path they resolve to, which has its own rule or none. A directory that can't be
    listed is left out with what is under it, since nothing there could be granted precisely.
    """
    hidden = sorted({p.rstrip("/") or "/" for p in excluded})
    if _within(root, hidden):
        return [], []
    inside = [h for h in hidden if _within(h, [root])]
    if not inside:
        return [root], []
    grants: list[str] = []
    splits: list[str] = [root]
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return [], []
    for entry in entries:
        if entry.is_symlink():
            continue
        sub_grants, sub_splits = partition(entry.path, inside)
        grants.extend(sub_grants)
        splits.extend(sub_splits)
    return grants, splits


def _write_rights(abi: int) -> int:
    """The write rights a kernel of this ABI knows (REFER came with 2, TRUNCATE with 3)."""
    return _WRITE_V1 | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0)  # noqa: PLR2004


def rules(plan: dict[str, Any], abi: int) -> list[tuple[str, int]]:
    """The (path, rights) rules that carry out a plan for a kernel of this ABI."""
    write = _write_rights(abi)
    hidden = [str(p) for p in plan.get("hidden", [])]
    protected = [str(p) for p in plan.get("protected", [])]
    readable, split = partition("/", [*hidden, "/dev"])
    out = [(path, _READ) for path in readable]
    out += [(path, _READ_DIR) for path in split]
    out += [(path, _READ_FILE) for path in DEVICES_READ]
    for root in plan.get("writable", []):
        whole, _ = partition(os.path.realpath(str(root)), [*hidden, *protected])
        out += [(path, _READ | write) for path in whole]
    out += [(path, _WRITE_FILE) for path in DEVICES_WRITE]
    return out


def open_rules(rule_list: list[tuple[str, int]]) -> list[tuple[int, int]]:
    """Open each rule's path (O_PATH) and fit its rights to what it is: (fd, rights) pairs."""
    opened: list[tuple[int, int]] = []
    for path, rights in rule_list[:MAX_RULES]:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # gone since it was listed, or not on this machine (/dev/full)
        allowed = rights if stat.S_ISDIR(os.fstat(fd).st_mode) else rights & _FILE_RIGHTS
        if allowed:
            opened.append((fd, allowed))
        else:
            os.close(fd)
    return opened


def restrict(opened: list[tuple[int, int]], abi: int) -> None:
    """Enforce the rules on this process and every child it will have; closes the fds."""
    ctypes, libc = load_libc()
    write = _write_rights(abi)
    scoped = _SCOPE_SIGNAL if abi >= 6 else 0  # noqa: PLR2004
    # struct landlock_ruleset_attr grew with the ABI; an older kernel refuses the longer form.
    fields = (_READ | write, 0, scoped) if abi >= 6 else (_READ | write,)  # noqa: PLR2004
    attr = (ctypes.c_uint64 * len(fields))(*fields)
    try:
        ruleset = libc.syscall(
            _SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), 0
        )
        if ruleset < 0:
            raise ConfinementError(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
        try:
            for fd, allowed in opened:
                # struct landlock_path_beneath_attr, packed: u64 allowed_access, s32 parent_fd.
                rule = allowed.to_bytes(8, sys.byteorder) + fd.to_bytes(4, sys.byteorder)
                if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, rule, 0):
                    raise ConfinementError(f"landlock_add_rule: {os.strerror(ctypes.get_errno())}")
            no_new_privs(ctypes, libc)  # Landlock's condition for an unprivileged process
            if libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) != 0:
                raise ConfinementError(f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(ruleset)
    finally:
        for fd, _ in opened:
            os.close(fd)
