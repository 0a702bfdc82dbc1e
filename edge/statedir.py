# SPDX-License-Identifier: Apache-2.0
"""The state directory: its mode, and the names inside it that the core writes and the CLI reads.

Kept apart from the modules that write them, so that a short-lived CLI command finds them
without importing the core.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Final

from edge.errors import InsecurePermissionsError, StateDirMissingError

#: The state directory holds the store and the IPC: its owner alone may enter it.
STATE_DIR_MODE: Final = 0o700

#: File (0600, in the 0700 IPC directory) holding the operator token of the running core.
ADMIN_TOKEN_FILE: Final = "operator.token"  # noqa: S105 - a file name, not a token


def check_state_dir(path: Path, config_path: Path) -> None:
    """Refuse a missing state directory, or one that others can enter."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise StateDirMissingError(path, config_path) from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise InsecurePermissionsError(str(path), mode, STATE_DIR_MODE)


def ipc_dir(state_dir: Path) -> Path:
    """The 0700 directory of the core's IPC socket and operator token."""
    return state_dir / "ipc"


def history_path(state_dir: Path) -> Path:
    """The deployment history: the final status documents of recent deployments."""
    return state_dir / "deployments.json"


def ipc_socket_path(state_dir: Path) -> Path:
    """The core's IPC socket, which workers and `edge invoke` connect to."""
    return ipc_dir(state_dir) / "core.sock"
