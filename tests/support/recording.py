# SPDX-License-Identifier: Apache-2.0
"""A logger that keeps what a one-shot child wrote on its stderr, as the core relays it."""

from __future__ import annotations

from typing import Any


class RecordingLogger:
    """Keeps the `line` of every event logged (the child's stderr, relayed), or its name."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def _log(self, event: str, **fields: Any) -> None:
        self.lines.append(str(fields.get("line", event)))

    debug = info = warning = error = _log

    def pids(self, marker: str) -> list[int]:
        """The pids children announced with `{marker}=<pid>` lines."""
        return [int(line.split("=", 1)[1]) for line in self.lines if line.startswith(f"{marker}=")]
