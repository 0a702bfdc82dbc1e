# SPDX-License-Identifier: Apache-2.0
"""Private files for keys and the store: permission-checked reads and crash-safe writes.

The rules, and why:

* New files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` so we never write through a
  symlink or into a file someone else prepared (``O_EXCL`` also refuses a dangling symlink), and
  with mode 0600 forced by ``fchmod`` because the umask may only narrow what ``open`` asks for.
* A replacement is written to a temporary file *in the same directory* (``os.replace`` is only
  atomic within one filesystem), fsynced, renamed over the target, and then the directory is
  fsynced so the rename itself survives a power cut. A reader therefore sees the old file or the
  new one, never a mixture.
* Reads check the *opened* file (fstat): a regular file with no group or other access.
* A failed write removes its temporary file. A crash can't, so `remove_stale_temp_files` cleans
  up on the next start. Temporary files that a save in *this* process is still writing are
  registered in `_in_flight`, so a cleanup running in another thread never deletes them.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import threading
from contextlib import suppress
from typing import TYPE_CHECKING

from edge.errors import InsecurePermissionsError

if TYPE_CHECKING:
    from pathlib import Path

#: Mode of every file that holds key material or secrets: owner read/write only.
PRIVATE_FILE_MODE = 0o600

# Mode bits that let anyone but the owner reach a file. The owner's execute bit is harmless.
_GROUP_OTHER_BITS = 0o077

# Names of the temporary files of saves running in this process: names, not paths, so two
# spellings of one directory can't hide a live file (the random part keeps names unique). The
# lock makes "register, then create" in `atomic_replace` and "list, then unlink" in
# `remove_stale_temp_files` mutually exclusive, so a cleanup never sees an unregistered live file.
_in_flight: set[str] = set()
_in_flight_lock = threading.Lock()


def temp_prefix(path: Path) -> str:
    """Return the name prefix shared by every temporary file written for `path`."""
    # The leading dot keeps it out of casual `ls`; the target's name ties it to one file, so
    # cleaning up after `secrets.store` never touches another file's temporaries.
    return f".{path.name}.tmp-"


def write_new_file(path: Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE) -> None:
    """Create `path` (which must not exist), write `data` to it and fsync it.

    Args:
        path: The file to create. Its directory must exist.
        data: Everything the file will hold.
        mode: Permission bits, applied exactly regardless of the umask.

    Raises:
        FileExistsError: `path` already exists (it is left alone).
        OSError: Creating, writing or syncing failed; a file this call created is removed.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                # os.write may write less than asked (signals, pipes, some filesystems).
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        # The file is ours (O_EXCL proved nobody else had it), so a half-written one goes.
        with suppress(OSError):
            path.unlink()
        raise


def read_private_file(
    path: Path, *, max_size: int | None = None, follow_symlinks: bool = True
) -> bytes:
    """Read a file that holds key material or secrets, refusing it if others can reach it.

    The checks are made on the opened descriptor (fstat), not on the path, so the file can't
    be swapped between the check and the read.

    Args:
        path: The file.
        max_size: Refuse files bigger than this many bytes, if given.
        follow_symlinks: False: open with O_NOFOLLOW, so a symbolic link at `path` fails with
            ELOOP. For files the core itself writes (the store): a link there was put by
            someone else. Key files may be links (a mounted secret volume is made of them).

    Returns:
        The whole file.

    Raises:
        InsecurePermissionsError: Group or other users have any access to the file.
        FileNotFoundError: There is no such file.
        OSError: It can't be opened or read, is not a regular file (EISDIR/EINVAL), or is
            bigger than `max_size` (EFBIG). `strerror` says which.
    """
    nofollow = 0 if follow_symlinks else os.O_NOFOLLOW
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | nofollow)
    try:
        _check_private(path, os.fstat(fd), max_size)
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with file:
        data = file.read() if max_size is None else file.read(max_size + 1)
    if max_size is not None and len(data) > max_size:
        # It grew after the fstat.
        raise OSError(errno.EFBIG, f"more than the {max_size} bytes allowed")
    return data


def _check_private(path: Path, info: os.stat_result, max_size: int | None) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & _GROUP_OTHER_BITS:
        raise InsecurePermissionsError(str(path), mode, PRIVATE_FILE_MODE)
    if max_size is not None and info.st_size > max_size:
        raise OSError(errno.EFBIG, f"{info.st_size} bytes, more than the {max_size} allowed")


def fsync_dir(directory: Path) -> None:
    """Fsync a directory so a file created or renamed in it survives a power cut.

    Raises:
        OSError: The directory can't be opened or synced.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_replace(path: Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE) -> None:
    """Replace `path` with a file holding `data`, so readers see the old file or the new one.

    The directory is *not* synced here: the caller decides what a failure to sync it means,
    because by then the new file is already in place. Call `fsync_dir` next.

    Args:
        path: The file to replace or create. Its directory must exist.
        data: The new contents.
        mode: Permission bits of the new file.

    Raises:
        OSError: Anything failed before the rename; `path` is untouched and the temporary file
            is gone.
    """
    temp = path.with_name(f"{temp_prefix(path)}{os.getpid()}-{secrets.token_hex(8)}")
    with _in_flight_lock:
        _in_flight.add(temp.name)
    try:
        write_new_file(temp, data, mode=mode)
        try:
            os.replace(temp, path)
        except BaseException:
            with suppress(OSError):
                temp.unlink()
            raise
    finally:
        with _in_flight_lock:
            _in_flight.discard(temp.name)


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Remove temporary files left next to `path` by a save that crashed.

    Best effort: a file that can't be removed (read-only filesystem, say) is left, because a
    stale temporary file is harmless and must not stop the store from being read.

    Returns:
        The files removed.
    """
    prefix = temp_prefix(path)
    removed: list[Path] = []
    with _in_flight_lock:
        try:
            candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
        except OSError:
            return removed
        for candidate in candidates:
            if candidate.name in _in_flight:
                continue
            try:
                candidate.unlink()
            except OSError:
                continue
            removed.append(candidate)
    return removed
