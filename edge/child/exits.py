# SPDX-License-Identifier: Apache-2.0
"""The exit statuses by which a worker tells the core why it ended before serving.

Both sides read them: the runtime exits with them, and the core (`edge.workers.process`) turns
them into the reason an invocation or a log line gives. This module imports nothing, so the
core may read it without loading anything that runs in the child.
"""

from __future__ import annotations

# Annotations only: a worker loads no `typing` (see edge/child/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

#: The handler can't be loaded; the manager reports it on the invocation.
HANDLER_LOAD_FAILED: Final = 3
#: The core asked for confinement and it could not be applied.
SANDBOX_FAILED: Final = 4
#: The RunAs user can't execute the interpreter (the core says what to set).
INTERPRETER_UNREACHABLE: Final = 5
