# SPDX-License-Identifier: Apache-2.0
"""Names of groups and definitions: at most 128 characters of printable text.

botocore's Greengrass model sets no limit on `Name` (a plain `__string`), and AWS documents
one only for a resource's Name (128 characters of `[a-zA-Z0-9:_-]`). Group and definition names
get the same length, but any printable text, as the group model allows for resource names
(`edge.model.group`): what a name must never hold is what breaks a log line, a terminal or the
database (control characters, NUL, lone surrogates, which are not Unicode text and can't be
stored as UTF-8), and stricter rules would refuse names AWS took.
"""

from __future__ import annotations

import unicodedata
from typing import Final

from edge.cloud.errors import NameInvalidError

#: Longest name, in characters: AWS's limit for a resource's Name in the same API.
MAX_NAME_LENGTH: Final = 128


def check_name(option: str, name: str | None) -> str | None:
    """Return `name` if it is a valid group or definition name (None: no name given).

    Args:
        option: The option or member naming it, for the message (`--name`).
        name: The name.

    Raises:
        NameInvalidError: It is empty, longer than `MAX_NAME_LENGTH` characters, or holds a
            character that isn't printable; the message says which and where.
    """
    if name is None:
        return None
    if not name:
        raise NameInvalidError(option, "must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise NameInvalidError(
            option, f"must be at most {MAX_NAME_LENGTH} characters, not {len(name)}"
        )
    for index, char in enumerate(name):
        if not char.isprintable():
            raise NameInvalidError(
                option,
                f"character {index + 1} is U+{ord(char):04X}, {_what(char)}; a name must be "
                f"printable text (spaces allowed, no control characters)",
            )
    return name


def _what(char: str) -> str:
    category = unicodedata.category(char)
    if category == "Cs":
        return "a lone UTF-16 surrogate (not Unicode text)"
    if category == "Cc":
        return "a control character"
    return "not printable"
