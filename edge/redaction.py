# SPDX-License-Identifier: Apache-2.0
"""The last line of defence: every known secret value masked in every string that leaves.

The code never logs a secret value on purpose; `SecretRedactor` makes sure an accident (an
exception message from a library, a worker's print, a traceback) can't leak one either: every
string in every event is scanned for every value the core holds, in every form a program
commonly prints it in (see `masked_forms`), and matches become `****`. `REDACTOR` is the
process's one redactor: `edge.log` runs it on every log event, `mask_payload` on what a caller
is answered with.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger

MASK = "****"
#: Values shorter than this are not masked: masking every "a" in every line would make logs
#: unreadable, and a value that short is not a credential anyone should rely on. Also the
#: length of the index key: every masked form is at least this long.
MIN_MASKED_LENGTH = 4
#: A line of a multi-line value (a PEM key, pretty-printed JSON) is masked on its own from this
#: length: output is split by line, so a whole multi-line value never shows up in one log line.
#: A PEM body line is 64 characters; shorter lines (a PEM's last one, `  "port": 5432,`) are
#: common enough in other output that masking them would blank unrelated text, and worth little
#: to anyone without the rest of the value.
MIN_LINE_LENGTH = 12
#: A string inside a JSON value is masked on its own from this length, wherever it shows up
#: (one field printed, the document re-serialised or `repr`'d): passwords, keys and tokens are
#: longer; shorter strings are mostly the document's vocabulary ("admin", "prod", "mysql") and
#: would blank those words everywhere.
MIN_JSON_STRING_LENGTH = 8
#: Forms that share their first `MIN_MASKED_LENGTH` characters are told apart by this many
#: before any is compared: every PEM and its escaped forms start `-----BEGIN`, and without it
#: each position of a line of dashes would be compared with every one of them (a 100-dash
#: line took 1 ms with 100 secrets, a third of them PEMs). Still one lookup per character
#: where no form starts.
WIDE_KEY_LENGTH = 16
#: Keys whose value is always masked, whatever it is.
_SECRET_KEYS = frozenset({"SecretString", "SecretBinary", "secret_string", "secret_binary"})
#: A PEM boundary line: the same in every PEM of a kind, so it carries nothing secret, and
#: masking it would hide which kind of key a log line is about.
_PEM_FRAMING = re.compile(r"-----(?:BEGIN|END) [^-]*-----")
#: What a line of JSON punctuation is made of (`{`, `},`, `]`): framing, not content.
_JSON_PUNCTUATION = '{}[],:" \t\r\n'

#: The forms of one value that the redactor masks.
FormsOf = Callable[[str | bytes], Iterable[str]]
#: Forms sharing their first `MIN_MASKED_LENGTH` characters: those shorter than
#: `WIDE_KEY_LENGTH`, and the longer ones by their first `WIDE_KEY_LENGTH` characters.
_Bucket = tuple[tuple[str, ...], dict[str, tuple[str, ...]]]


class SecretRedactor:
    """Masks known secret values in text; safe to update from one thread while others read.

    Every form of every value (see `masked_forms`) is indexed by its first `MIN_MASKED_LENGTH`
    characters, so masking a line costs one dict lookup per character whatever the number of
    secrets and forms (a regex alternation of 10,000 values takes a third of a second to
    compile and milliseconds per line).
    """

    def __init__(self, *, forms: FormsOf | None = None) -> None:
        """Start empty.

        Args:
            forms: The forms to mask of one value (default: `masked_forms`); a benchmark
                passes a narrower one as its baseline.
        """
        self._index: dict[str, _Bucket] = {}
        self._forms: FormsOf = forms or masked_forms
        # Kept between updates by the one thread that updates, never read by `mask`:
        #: Each value held, with its forms.
        self._known: dict[str | bytes, tuple[str, ...]] = {}
        #: How many held values have each form (two secrets can share a line).
        self._holders: dict[str, int] = {}
        #: The forms held, by index key.
        self._grouped: dict[str, set[str]] = {}

    def update(self, values: Iterable[str | bytes]) -> None:
        """Replace the set of values to mask (call after every store rotation).

        Linear in the forms of the values that came or went, plus a copy of the index: a
        value's forms are computed when it first appears and kept while it stays, and only the
        index entries their forms fall under are rebuilt (a refresh that rotates one secret
        costs that secret's forms, not every secret's).
        """
        old = self._known
        known = {value: self._forms_of(value) for value in dict.fromkeys(values)}
        touched: set[str] = set()
        for value, forms in old.items():
            if value not in known:
                touched.update(self._release(forms))
        for value, forms in known.items():
            if value not in old:
                touched.update(self._hold(forms))
        self._known = known  # values rotated out are forgotten
        if not touched:
            return
        index = dict(self._index)
        for key in touched:
            grouped = self._grouped.get(key)
            if grouped:
                index[key] = _bucket(grouped)
            else:
                index.pop(key, None)
                self._grouped.pop(key, None)
        self._index = index  # one reference swap: readers see the old or the new index

    def _forms_of(self, value: str | bytes) -> tuple[str, ...]:
        forms = self._known.get(value)
        if forms is None:
            forms = tuple(f for f in self._forms(value) if len(f) >= MIN_MASKED_LENGTH)
        return forms

    def _hold(self, forms: tuple[str, ...]) -> Iterator[str]:
        """Count a new value's forms in; yield the index keys of those not held before."""
        holders = self._holders
        for form in forms:
            count = holders.get(form, 0)
            holders[form] = count + 1
            if not count:
                key = form[:MIN_MASKED_LENGTH]
                self._grouped.setdefault(key, set()).add(form)
                yield key

    def _release(self, forms: tuple[str, ...]) -> Iterator[str]:
        """Count a gone value's forms out; yield the index keys of those no value holds now."""
        holders = self._holders
        for form in forms:
            count = holders[form] - 1
            if count:
                holders[form] = count
            else:
                del holders[form]
                key = form[:MIN_MASKED_LENGTH]
                self._grouped[key].discard(form)
                yield key

    def mask(self, text: str) -> str:
        """Return text with every known secret value replaced by `****`."""
        index = self._index
        if not index or len(text) < MIN_MASKED_LENGTH:
            return text
        pieces: list[str] = []
        start = i = 0
        end = len(text) - MIN_MASKED_LENGTH
        while i <= end:
            bucket = index.get(text[i : i + MIN_MASKED_LENGTH])
            if bucket is None:
                i += 1
                continue
            short, wide = bucket
            match = _first_match(wide.get(text[i : i + WIDE_KEY_LENGTH], ()), text, i)
            if match is None:
                match = _first_match(short, text, i)
            if match is None:
                i += 1
                continue
            pieces.extend((text[start:i], MASK))
            i += len(match)
            start = i
        if not pieces:
            return text
        pieces.append(text[start:])
        return "".join(pieces)

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        """Structlog processor: mask values in every field of the event."""
        return {k: MASK if k in _SECRET_KEYS else self._scrub(v) for k, v in event_dict.items()}

    def scrub(self, value: object) -> object:
        """Return `value` (text, bytes, or containers of them) with every known value masked.

        Strings are masked, mapping keys included; values under the `SecretString`-like keys
        become `****` whatever they are; containers come back as dicts and lists.
        """
        return self._scrub(value)

    def _scrub(self, value: object) -> object:  # noqa: PLR0911 - one return per kind of value
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, bytes):
            return self.mask(value.decode("utf-8", "replace"))
        if isinstance(value, Mapping):
            return {
                self.mask(k) if isinstance(k, str) else k: MASK
                if k in _SECRET_KEYS
                else self._scrub(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self._scrub(v) for v in value]
        if isinstance(value, BaseException):
            return self.mask(f"{type(value).__name__}: {value}")
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.mask(str(value))


def _bucket(forms: set[str]) -> _Bucket:
    """Index forms that share a key, longest first.

    Longest first, so a value that contains another (a whole PEM and its lines) is masked whole.
    """
    if len(forms) == 1:  # most keys: no sorting, no lists
        (form,) = forms
        return (
            ((form,), {})
            if len(form) < WIDE_KEY_LENGTH
            else ((), {form[:WIDE_KEY_LENGTH]: (form,)})
        )
    short: list[str] = []
    wide: dict[str, list[str]] = {}
    for form in forms:
        if len(form) < WIDE_KEY_LENGTH:
            short.append(form)
        else:
            wide.setdefault(form[:WIDE_KEY_LENGTH], []).append(form)
    return _longest_first(short), {k: _longest_first(v) for k, v in wide.items()}


def _longest_first(forms: list[str]) -> tuple[str, ...]:
    return tuple(sorted(forms, key=len, reverse=True))


def _first_match(candidates: tuple[str, ...], text: str, i: int) -> str | None:
    for candidate in candidates:
        if text.startswith(candidate, i):
            return candidate
    return None


def masked_forms(value: str | bytes) -> set[str]:
    """The ways a secret value can show up in text, each masked wherever it appears.

    For a text value, and for each part of it that can be printed on its own (its lines of at
    least `MIN_LINE_LENGTH` characters that aren't framing, and, for a JSON object or array,
    its strings of at least `MIN_JSON_STRING_LENGTH` characters and their lines):
    the text itself; JSON-escaped, with `ensure_ascii` and without (`json.dumps` escapes
    newlines, quotes, backslashes and, with `ensure_ascii`, every non-ASCII character); `repr`
    and `ascii` (Python's quoting and escapes); its UTF-8 as base64, standard and URL-safe.
    Forms are kept without their enclosing quotes or base64 padding: the quoted or padded text
    contains them, so masking the inner form masks it too, at no extra cost.

    JSON keys are not masked on their own: they name fields (`password`, `username`) the same
    way in every secret of a kind, carry nothing secret, and would blank those words in every
    log line. A key is still masked inside a line of the value, or the value itself, that holds it.

    A binary value is masked as base64 (standard and URL-safe), hex, its `repr` (what
    `print(value)` shows) and, when it is UTF-8, as the text it decodes to.
    """
    forms: set[str] = set()
    text: str | None
    if isinstance(value, str):
        text = value
    else:
        forms.update(_base64_forms(value))
        forms.add(value.hex())
        forms.add(repr(value)[2:-1])  # inside b'...'
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if text is not None:
        for piece in _pieces(text):
            forms.update(_text_forms(piece))
    return forms


def _pieces(text: str) -> set[str]:
    """The value, and the parts of it a program can print on their own."""
    pieces = {text}
    stripped = text.strip()
    if len(stripped) >= MIN_MASKED_LENGTH:
        pieces.add(stripped)  # print() of a value with a trailing newline
    if stripped[:1] in {"{", "["}:
        try:
            document = json.loads(stripped)
        except (ValueError, RecursionError):
            document = None
        pieces.update(s for s in _json_strings(document) if len(s) >= MIN_JSON_STRING_LENGTH)
    lines = [line for piece in pieces if "\n" in piece for line in _lines(piece)]
    pieces.update(lines)
    return pieces


def _lines(text: str) -> Iterator[str]:
    """The lines of a multi-line value worth masking on their own."""
    for raw in text.split("\n"):
        line = raw.strip()
        if len(line) >= MIN_LINE_LENGTH and not is_framing(line):
            yield line


def is_framing(line: str) -> bool:
    """Whether a line only frames a value: a PEM boundary, or JSON punctuation only."""
    return _PEM_FRAMING.fullmatch(line) is not None or not line.strip(_JSON_PUNCTUATION)


def _json_strings(document: object) -> Iterator[str]:
    """Every string value in a parsed JSON document, at any depth (not its keys)."""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _text_forms(piece: str) -> Iterator[str]:
    yield piece
    yield json.dumps(piece)[1:-1]
    yield json.dumps(piece, ensure_ascii=False)[1:-1]
    yield repr(piece)[1:-1]
    yield ascii(piece)[1:-1]
    yield from _base64_forms(piece.encode("utf-8", "surrogatepass"))


def _base64_forms(data: bytes) -> Iterator[str]:
    # Unpadded: a value embedded in a longer base64 text, or in a JWT, carries no padding.
    yield base64.b64encode(data).decode("ascii").rstrip("=")
    yield base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


#: The process-wide redactor; `LiveSecrets` (edge.secrets.live) feeds it at every store change.
REDACTOR = SecretRedactor()


def mask_payload(payload: bytes) -> bytes:
    """Mask secret values in a payload bound for a caller (a function's error document).

    A JSON payload stays valid JSON: its strings (keys included) are masked one by one, so a
    match can't cut an escape sequence in half; it is re-encoded only when something was
    masked. Any other payload is masked as UTF-8 text.
    """
    text = payload.decode("utf-8", "replace")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        masked = REDACTOR.mask(text)
        return payload if masked == text else masked.encode()
    scrubbed = REDACTOR.scrub(document)
    return payload if scrubbed == document else json.dumps(scrubbed).encode()
