# SPDX-License-Identifier: Apache-2.0
"""Another user for worker tests: a Python of this version that user can run."""

from __future__ import annotations

import pwd
import shutil
import subprocess
import sys


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
