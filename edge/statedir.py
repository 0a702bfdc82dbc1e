# SPDX-License-Identifier: Apache-2.0
"""Names inside the state directory that the core writes and the `edge` CLI reads.

Kept apart from the modules that write them, so that a short-lived CLI command finds them
without importing the core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

#: File (0600, in the 0700 IPC directory) holding the operator token of the running core.
ADMIN_TOKEN_FILE: Final = "operator.token"  # noqa: S105 - a file name, not a token


def ipc_dir(state_dir: Path) -> Path:
    """The 0700 directory of the core's IPC socket and operator token."""
    return state_dir / "ipc"


def ipc_socket_path(state_dir: Path) -> Path:
    """The core's IPC socket, which workers and `edge invoke` connect to."""
    return ipc_dir(state_dir) / "core.sock"
