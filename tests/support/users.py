# SPDX-License-Identifier: Apache-2.0
"""Another user for worker tests: a Python that user can run, and a checkout it can reach."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The repository: workers of another user import `edge` (and the venv's packages) from here.
REPO = Path(__file__).resolve().parents[2]
#: Held while a test opens the way to the checkout, so tests on other xdist workers that do the
#: same never restore a mode while one of them still needs it.
_LOCK = Path("/tmp/edge-tests-reachable.lock")


def python_for(user: pwd.struct_passwd) -> str | None:
    """A Python of this minor version that `user` can run (the test's may be under /root)."""
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(minor, path="/usr/local/bin:/usr/bin")):
        if candidate is None:
            continue
        try:
            done = subprocess.run(
                [candidate, "-S", "-c", "pass"],
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
                capture_output=True,
                check=False,
                cwd="/",
            )
        except PermissionError:
            continue
        if done.returncode == 0:
            return candidate
    return None


@contextlib.contextmanager
def checkout_reachable() -> Iterator[None]:
    """Let other users traverse every directory above the checkout, for the test's duration.

    A clone in a 0700 directory (what `mktemp -d` makes, as CI may use) keeps another user's
    worker from importing `edge`. Only the search bit is added (nothing becomes listable), and
    each mode is restored afterwards.
    """
    with _LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        changed: list[tuple[Path, int]] = []
        try:
            for directory in reversed(REPO.parents):
                mode = stat.S_IMODE(directory.stat().st_mode)
                if not mode & stat.S_IXOTH:
                    os.chmod(directory, mode | stat.S_IXOTH)
                    changed.append((directory, mode))
            yield
        finally:
            for directory, mode in reversed(changed):
                os.chmod(directory, mode)


def python_or_skip(user: pwd.struct_passwd) -> str:
    """`python_for(user)`, or skip the test saying how to get one."""
    python = python_for(user)
    if python is None:
        pytest.skip(
            f"no Python of this version that {user.pw_name} can run: apt-get install python3.11"
        )
    return python


@contextlib.contextmanager
def shared_directory(prefix: str) -> Iterator[Path]:
    """A new 0755 directory under /var/tmp, removed afterwards.

    For files another user must reach: pytest's tmp_path lies under a 0700 directory.
    """
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    try:
        directory.chmod(0o755)
        yield directory
    finally:
        shutil.rmtree(directory)
