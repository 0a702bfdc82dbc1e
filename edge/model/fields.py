# SPDX-License-Identifier: Apache-2.0
"""Typed reads from parsed JSON whose errors name the offending entry, never the whole document.

Every check in the model goes through these helpers so that a wrong type anywhere in a
deployment document becomes a `DeploymentInvalidError` that says *where* it is, rather than a
`TypeError`/`KeyError` escaping from deep inside the parser. Messages quote at most one short
field, JSON-escaped and truncated: a document comes from the cloud, and whatever we quote ends up
in logs and in the Failure status we publish back.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from edge.errors import DeploymentInvalidError

#: Longest excerpt of a field quoted in an error message, in characters after escaping. Long
#: enough for an id or a typical full secret ARN (about 90 characters), short enough that a
#: hostile document can't make us log, or publish back in a Failure status, much of itself.
MAX_QUOTED_LENGTH = 100

#: Deepest nesting accepted anywhere in a group. A real V1 group is about 6 levels deep
#: (Group > Functions > entry > FunctionConfiguration > Environment > Variables); 64 leaves
#: room for any free-form configuration while keeping `copy.deepcopy`, msgpack (whose default
#: limit is 512) and every other recursive consumer far from Python's recursion limit.
MAX_NESTING_DEPTH = 64

#: Resource, function, connector, subscription, group and deployment ids, as the Greengrass V1
#: API constrains them ("Max length is 128 characters with pattern [a-zA-Z0-9:_-]+"). ASCII
#: only: these end up in MQTT topics, file names and log keys.
MAX_ID_LENGTH = 128
ID_PATTERN = re.compile(r"[A-Za-z0-9:_-]{1,128}", re.ASCII)


def quoted(text: str) -> str:
    """Quote a field for an error message: escaped, and cut to `MAX_QUOTED_LENGTH` characters."""
    # Escape what isn't printable (control and format characters, line separators, lone
    # surrogates) so the message is one safe line; keep printable non-ASCII readable. The limit
    # applies after escaping so that a string of escapes can't make the message long either.
    pieces: list[str] = []
    size = 0
    for char in text:
        piece = char if char.isprintable() and char not in '"\\' else _escape(char)
        if size + len(piece) > MAX_QUOTED_LENGTH:
            pieces.append("...")
            break
        pieces.append(piece)
        size += len(piece)
    return '"' + "".join(pieces) + '"'


def _escape(char: str) -> str:
    """Escape one character as a Python string literal would."""
    if char in '"\\':
        return "\\" + char
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"  # noqa: PLR2004 - BMP


def kind(value: object) -> str:
    """Name the JSON type of a value for an error message ("an array", "a number", ...)."""
    for python_type, name in _KINDS:
        if isinstance(value, python_type):
            return name
    return f"a Python {type(value).__name__}"


# Checked in order, so bool comes before int: True is an int in Python but a boolean in JSON.
_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (type(None), "null"),
    (bool, "a boolean"),
    ((int, float), "a number"),
    (str, "a string"),
    (list, "an array"),
    (dict, "an object"),
)


def entry_label(section: str, index: int, item: object) -> str:
    """Name a list entry for messages: `Resources[2] (Id "my-res")` when it carries a string Id."""
    ident = item.get("Id") if isinstance(item, dict) else None
    if isinstance(ident, str):
        return f"{section}[{index}] (Id {quoted(ident)})"
    return f"{section}[{index}]"


@dataclass(frozen=True, slots=True)
class Where:
    """A place in a document: an entry such as `Resources[2] (Id "x")`, and a field path in it."""

    entry: str = ""
    path: str = ""

    def __str__(self) -> str:
        """Render as `entry: path`, or whichever of the two is set."""
        if self.entry and self.path:
            return f"{self.entry}: {self.path}"
        return self.entry or self.path

    def at(self, key: str) -> Where:
        """Return the place of member `key` (a fixed field name) of the object here."""
        return Where(self.entry, f"{self.path}.{key}" if self.path else key)

    def item(self, index: int) -> Where:
        """Return the place of element `index` of the array here."""
        return Where(self.entry, f"{self.path}[{index}]")

    def member(self, key: str) -> Where:
        """Return the place of member `key` (a free-form key, hence quoted) of the object here."""
        return Where(self.entry, f"{self.path}[{quoted(key)}]")

    def error(self, problem: str) -> DeploymentInvalidError:
        """Build the error for a problem at this place; the caller raises it."""
        where = str(self)
        return DeploymentInvalidError(f"{where} {problem}" if where else problem)


def as_object(value: object, where: Where) -> dict[str, Any]:
    """Return `value` if it is a JSON object, else raise naming `where`."""
    if not isinstance(value, dict):
        raise where.error(f"must be an object, not {kind(value)}")
    return value


def require(obj: dict[str, Any], key: str, where: Where) -> object:
    """Return member `key` of the object at `where`, raising if it is absent."""
    if key not in obj:
        raise where.at(key).error("is missing")
    return obj[key]


def check_string(value: object, where: Where) -> str:
    """Return `value` if it is a non-empty string, else raise naming `where`."""
    if not isinstance(value, str):
        raise where.error(f"must be a string, not {kind(value)}")
    if not value:
        raise where.error("must not be empty")
    return value


def get_string(obj: dict[str, Any], key: str, where: Where) -> str:
    """Return required non-empty string member `key` of the object at `where`."""
    return check_string(require(obj, key, where), where.at(key))


def check_identifier(value: object, where: Where) -> str:
    """Return `value` if it is a Greengrass id (1-128 of `A-Za-z0-9:_-`), else raise."""
    text = check_string(value, where)
    if ID_PATTERN.fullmatch(text) is None:
        raise where.error(
            f'{quoted(text)} must be 1-{MAX_ID_LENGTH} characters of letters, digits, ":", "_" '
            f'or "-"'
        )
    return text


def get_identifier(obj: dict[str, Any], key: str, where: Where) -> str:
    """Return required id member `key` of the object at `where`."""
    return check_identifier(require(obj, key, where), where.at(key))


def get_array(obj: dict[str, Any], key: str, where: Where) -> list[Any]:
    """Return optional array member `key` of the object at `where`; absent means empty."""
    if key not in obj:
        return []
    value = obj[key]
    if not isinstance(value, list):
        raise where.at(key).error(f"must be an array, not {kind(value)}")
    return value


def get_object(obj: dict[str, Any], key: str, where: Where) -> dict[str, Any]:
    """Return optional object member `key` of the object at `where`; absent means empty."""
    if key not in obj:
        return {}
    return as_object(obj[key], where.at(key))


def get_string_map(obj: dict[str, Any], key: str, where: Where) -> dict[str, str]:
    """Return optional member `key` as a string-to-string object; absent means empty."""
    mapping = get_object(obj, key, where)
    for name, value in mapping.items():
        if not isinstance(value, str):
            raise where.at(key).member(name).error(f"must be a string, not {kind(value)}")
    return mapping


def check_tree(value: object, where: Where, *, depth: int) -> None:
    """Check that `value` is plain JSON data we can store and copy safely, or raise.

    Rejects nesting deeper than `MAX_NESTING_DEPTH` (counting `value` as level `depth`), keys
    that aren't strings, non-JSON Python values, infinite numbers, and strings with lone
    surrogates. JSON can
    spell a lone surrogate such as U+D800 as an escape, but it can't be encoded as UTF-8, so
    msgpack would fail on it when the store is written, long after the deployment was accepted.
    """
    # Iterative on purpose: this guards the recursive consumers, so it must not recurse itself.
    stack: list[tuple[object, int]] = [(value, depth)]
    while stack:
        node, level = stack.pop()
        if level > MAX_NESTING_DEPTH:
            raise where.error(f"is nested more than {MAX_NESTING_DEPTH} levels deep")
        if isinstance(node, dict):
            for key, child in node.items():
                if not isinstance(key, str):
                    raise where.error(f"has a key that is {kind(key)}, not a string")
                _check_scalar(key, where)
                stack.append((child, level + 1))
        elif isinstance(node, list):
            stack.extend((child, level + 1) for child in node)
        else:
            _check_scalar(node, where)


def _check_scalar(node: object, where: Where) -> None:
    """Raise unless `node` is a JSON scalar we can store: null, boolean, finite number, text."""
    if isinstance(node, str):
        # ASCII is by far the common case and can't hold a surrogate; skip the encode for it.
        if not node.isascii():
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                raise where.error("contains a string with a lone UTF-16 surrogate") from None
    elif isinstance(node, float):
        # json reads 1e400 as infinity, which strict JSON can't write back out.
        if not math.isfinite(node):
            raise where.error("contains a number that is not finite")
    elif node is not None and not isinstance(node, bool | int):
        raise where.error(f"contains {kind(node)}, which is not JSON data")
