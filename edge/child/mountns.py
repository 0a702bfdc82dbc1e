# SPDX-License-Identifier: Apache-2.0
"""A worker's own view of the filesystem: the core's secrets covered by empty read-only mounts.

Runs inside the worker, before Landlock, as the first step of `edge.child.confine`
(and as `python -m edge.child.mountns probe` when the core starts, to learn whether the
kernel allows it). Imports nothing from the core side and no dataclasses.

Landlock denies a worker the core's files, but it leaves them where they are: the names are
there to list, and Landlock doesn't govern `chmod`, so a worker of the core's own uid could
loosen their modes. In a private mount namespace the worker sees instead an empty read-only
tmpfs over each hidden directory and an empty read-only file over each hidden file: the store
and the key are not there to name, and a cover can't be changed (EROFS). Mounts are made
private first, so nothing done here reaches the core's view.

A root core needs only CLONE_NEWNS; the worker then switches to its RunAs user here, after the
mounts. Another user needs a user namespace as well, mapping only its own ids, and gives up
every capability it holds in that namespace once the covers are up (they would let it unmount
them). The core's IPC socket lies in the hidden state directory: it is bound back, alone, at
its own path, so the SDK still connects by name.
"""

from __future__ import annotations

import os
import stat
import sys

from edge.child.privileges import ConfinementError, drop_capabilities, load_libc

# Annotations only: a worker loads no `typing` (see edge/child/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_NOATIME = 1024
_MS_NODIRATIME = 2048
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MS_RELATIME = 1 << 21
_MS_STRICTATIME = 1 << 24
_ST_NOATIME = 1024
_ST_NODIRATIME = 2048
_ST_RELATIME = 4096
#: What every cover carries: nothing on it can be written, run, or be a device or setuid.
_SEALED = _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
#: The covers hold no data; a small size keeps a mistake from using memory.
_TMPFS_OPTIONS = b"mode=0700,size=16k,nr_inodes=64"
#: How the namespace is entered: as root (CLONE_NEWNS) or as another user (with CLONE_NEWUSER).
AS_ROOT = "root"
AS_USER = "user"


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: bytes | None
) -> None:
    ctypes, libc = load_libc()
    encode = os.fsencode
    if libc.mount(
        None if source is None else encode(source),
        encode(target),
        None if fstype is None else fstype.encode(),
        ctypes.c_ulong(flags),
        data,
    ):
        errno = ctypes.get_errno()
        raise ConfinementError(f"mount {fstype or 'bind'} on {target}: {os.strerror(errno)}")


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as file:  # noqa: PTH123 - no pathlib: lean
        file.write(text)


def enter(kind: str) -> None:
    """Enter a new mount namespace (and, as a non-root user, a user namespace mapping only us).

    Needs a single-threaded process: the runtime has started no thread yet.
    """
    ctypes, libc = load_libc()
    uid, gid = os.getuid(), os.getgid()
    flags = _CLONE_NEWNS | (_CLONE_NEWUSER if kind == AS_USER else 0)
    if libc.unshare(flags) != 0:
        errno = ctypes.get_errno()
        what = "CLONE_NEWUSER|CLONE_NEWNS" if kind == AS_USER else "CLONE_NEWNS"
        raise ConfinementError(f"unshare({what}): {os.strerror(errno)}")
    if kind == AS_USER:
        try:
            # setgroups must be denied before an unprivileged process may write its gid_map.
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
        except OSError as exc:
            raise ConfinementError(f"user namespace id map: {exc.strerror}") from exc
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE, None)


def _kept_flags(path: str) -> int:
    """The flags a remount of `path`'s bind must keep: a user namespace may not clear them."""
    flags = os.statvfs(path).f_flag
    kept = flags & (_MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    if flags & _ST_NOATIME:
        kept |= _MS_NOATIME
    elif flags & _ST_RELATIME:
        kept |= _MS_RELATIME
    else:
        kept |= _MS_STRICTATIME
    if flags & _ST_NODIRATIME:
        kept |= _MS_NODIRATIME
    return kept


def _bind_sealed(source: str, target: str) -> None:
    """Bind `source` over `target`, then make that bind read-only (a bind ignores flags)."""
    _mount(source, target, None, _MS_BIND, None)
    _mount(None, target, None, _MS_BIND | _MS_REMOUNT | _SEALED | _kept_flags(target), None)


def _outermost(paths: list[str]) -> list[str]:
    """The paths that lie under no other path of the list."""
    out: list[str] = []
    for path in sorted(set(paths)):
        if not any(path.startswith(kept.rstrip("/") + "/") for kept in out):
            out.append(path)
    return out


def _split(hidden: list[str]) -> tuple[list[str], list[str]]:
    """The outermost hidden paths that exist: (directories, regular files)."""
    dirs: list[str] = []
    files: list[str] = []
    for path in _outermost(hidden):
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue  # nothing there to hide (yet: a worker can't create it, Landlock says)
        if stat.S_ISDIR(mode):
            dirs.append(path)
        elif stat.S_ISREG(mode):
            files.append(path)
        # Nothing else is covered: a device named as a hidden file (AWS_CONFIG_FILE=/dev/null)
        # must stay the device every program expects.
    return dirs, files


def cover(hidden: list[str], reachable: list[str]) -> list[str]:
    """Cover every existing hidden path; bind each reachable one back at its path.

    Returns the paths covered. Paths are absolute and real (the core resolved them).
    """
    dirs, files = _split(hidden)
    if files and not dirs:
        raise ConfinementError("a hidden file needs a hidden directory to stage its cover in")
    # Opened before anything is covered: afterwards these paths lead into a cover.
    kept: list[tuple[str, int]] = []
    for path in reachable:
        if any(path.startswith(d + "/") for d in dirs):
            try:
                kept.append((path, os.open(path, os.O_PATH | os.O_CLOEXEC)))
            except OSError:
                continue  # not there yet (the probe at start): nothing to bind
    try:
        if files:
            _cover_files(files, stage=dirs[0])
        for path in dirs:
            _cover_dir(path, [(target, fd) for target, fd in kept if target.startswith(path + "/")])
    finally:
        for _, fd in kept:
            os.close(fd)
    return dirs + files


def _cover_files(files: list[str], *, stage: str) -> None:
    """Bind an empty read-only file of its own over each file.

    The empty files live on a tmpfs of their own at `stage`, a hidden directory whose own
    cover then stacks on top: nothing can reach them by name, and the binds of them stay. One
    each, so that no Landlock rule on one path's inode could ever reach another's.
    """
    _mount("tmpfs", stage, "tmpfs", 0, _TMPFS_OPTIONS)
    empties = []
    for index in range(len(files)):
        empty = os.path.join(stage, str(index))  # noqa: PTH118 - no pathlib: lean
        os.close(os.open(empty, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o444))
        empties.append(empty)
    _mount(None, stage, None, _MS_REMOUNT | _SEALED, _TMPFS_OPTIONS)
    for empty, path in zip(empties, files, strict=True):
        _bind_sealed(empty, path)


def _cover_dir(path: str, kept: list[tuple[str, int]]) -> None:
    """An empty read-only tmpfs over `path`, holding only the kept (target, O_PATH fd) binds."""
    _mount("tmpfs", path, "tmpfs", 0, _TMPFS_OPTIONS)
    for target, fd in kept:
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)  # noqa: PTH103, PTH120
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        _bind_sealed(f"/proc/self/fd/{fd}", target)
    _mount(None, path, None, _MS_REMOUNT | _SEALED, _TMPFS_OPTIONS)


def isolate(plan: dict[str, Any]) -> None:
    """Carry out the namespace part of a plan: enter, cover, then give up what could undo it."""
    kind = str(plan["namespace"])
    enter(kind)
    cover([str(p) for p in plan.get("hidden", ())], [str(p) for p in plan.get("reachable", ())])
    if kind == AS_USER:
        drop_capabilities()  # those of the new user namespace: enough to unmount the covers


def probe(kind: str, hidden: list[str]) -> str:
    """Try the whole step in this (throwaway) process: '' if it works, else what failed."""
    try:
        enter(kind)
        cover(hidden, [])
        if kind == AS_USER:
            drop_capabilities()
    except ConfinementError as exc:
        return str(exc)
    return ""


if __name__ == "__main__":
    # python -S -m edge.child.mountns probe KIND [HIDDEN...]: prints what failed, if anything.
    problem = probe(sys.argv[2], sys.argv[3:])
    sys.stdout.write(problem)
    sys.exit(1 if problem else 0)
