# SPDX-License-Identifier: Apache-2.0
"""What the demo prints: numbered steps, commands as typed, every secret value masked."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from typing import Final, TextIO

from edge.redaction import SecretRedactor

#: Commands longer than this are shown over several lines, cut before an option.
COMMAND_WIDTH: Final = 92


class Printer:
    """Prints the demo's lines through the core's redaction; bold headings on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.redactor = SecretRedactor()
        tty = getattr(stream, "isatty", lambda: False)()
        colour = tty and "NO_COLOR" not in os.environ  # no-color.org
        self._bold, self._reset = ("\033[1m", "\033[0m") if colour else ("", "")

    def mask(self, values: Iterable[str]) -> None:
        """Mask these values (and only these) in everything printed from now on."""
        self.redactor.update(values)

    def say(self, text: str = "") -> None:
        """Print one or more lines, masked."""
        self.stream.write(self.redactor.mask(text) + "\n")
        self.stream.flush()

    def heading(self, text: str) -> None:
        """Print a step heading, after a blank line."""
        self.say(f"\n{self._bold}{text}{self._reset}")

    def command(self, args: list[str]) -> None:
        """Print a command as one would type it in the workspace, long ones over lines."""
        lines = ["$"]
        for word in map(shlex.quote, args):
            if word.startswith("--") and len(lines[-1]) + len(word) > COMMAND_WIDTH:
                lines.append("   ")
            lines[-1] += " " + word
        self.say("    " + " \\\n    ".join(lines))
