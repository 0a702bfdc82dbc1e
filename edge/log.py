# SPDX-License-Identifier: Apache-2.0
"""Structured logging (structlog) with a last-line-of-defence redaction of secret values.

The code never logs a secret value on purpose; `SecretRedactor` makes sure an accident (an
exception message from a library, a worker's print, a traceback) can't leak one either: every
string in every event is scanned for every value the core holds, in every form a program
commonly prints it in (see `masked_forms`), and matches become `****`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, TextIO, cast

#: What `structlog.dev` (which `import structlog` always loads) imports whenever it is installed,
#: for tracebacks and colours the core doesn't use: `rich` alone is 4.8 MB of RSS and ~20 ms of
#: start in every process that logs (a `[demo]` install brings it, through amqtt and typer).
#: Tracebacks here are plain (see `configure_logging`) and colours are ANSI codes either way.
_STRUCTLOG_EXTRAS: Final = ("rich", "colorama", "better_exceptions")


def _import_structlog() -> None:
    """Import structlog with its optional extras hidden, so it never loads them.

    A `None` in `sys.modules` makes `import rich` raise ImportError, which `structlog.dev`
    catches to fall back on plain output. Only for the duration of this import: the names are
    released afterwards, so anything else in the process may still import them. Must be the
    process's first import of structlog to have an effect; `edge.cli` imports this module
    before any module that imports structlog.
    """
    if "structlog" in sys.modules:
        return
    hidden = [name for name in _STRUCTLOG_EXTRAS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401, PLC0415 - imported here, with its extras hidden
    finally:
        for name in hidden:
            if sys.modules.get(name, "") is None:
                del sys.modules[name]


_import_structlog()

import structlog  # noqa: E402 - after `_import_structlog`, which imports it first
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger  # noqa: E402

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


#: `[log] format` / `--log-format` values; "auto" picks console on a terminal, JSON elsewhere.
LOG_FORMATS = ("auto", "console", "json")
#: `[log] level` / `--log-level` values.
LOG_LEVELS = ("debug", "info", "warning", "error")


def resolve_format(fmt: str, stream: TextIO) -> str:
    """Return "console" or "json": "auto" means console on a terminal, JSON lines otherwise.

    A person at a terminal reads coloured lines; a file, a pipe, journald or a container's log
    driver gets one JSON object per line that tools can parse.
    """
    if fmt != "auto":
        return fmt
    return "console" if _is_tty(stream) else "json"


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


#: structlog's method names, by the stdlib level they log at.
_METHOD_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "msg": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


class _LevelGate:
    """Drops events below the process's current level, which a deployment may change.

    Loggers are bound once (`get_logger`) with structlog's level filter fixed in their class,
    so a level that changes while the core runs (a group's `GreengrassSystem` logger) is
    applied here, first in the chain, before any work is done on the event.
    """

    def __init__(self) -> None:
        self.configured = logging.INFO
        self.group: int | None = None

    def __call__(self, _logger: object, method: str, event: EventDict) -> EventDict:
        threshold = self.configured if self.group is None else self.group
        if _METHOD_LEVELS.get(method, logging.INFO) < threshold:
            raise structlog.DropEvent
        return event


_GATE = _LevelGate()


def set_group_level(level: str | None) -> None:
    """Log at `level` ("debug" … "error") from now on; None goes back to the configured one."""
    _GATE.group = None if level is None else logging.getLevelNamesMapping()[level.upper()]


class _LogFile:
    """A copy of the log in a file of bounded size: `core.log`, then `core.log.1`.

    Each holds at most half the space, so the two never take more than it. Lines arrive
    rendered and masked; colour codes (a console renderer on a terminal) are left out.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._half = max(1, max_bytes // 2)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._file = self._open()

    def _open(self) -> TextIO:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8", errors="replace")

    def write(self, text: str) -> None:
        text = _ANSI.sub("", text)
        if self._file.tell() + len(text.encode("utf-8", "replace")) > self._half:
            self._file.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._file = self._open()
        self._file.write(text[-self._half :])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Output:
    """Where log lines go: the stream, and a group's log file while it asks for one.

    One object, handed to structlog and to the stdlib handler at start, so a deployment can
    add or drop the file without reconfiguring either; a lock keeps lines from threads whole.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.file: _LogFile | None = None
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.stream.write(text)
            if self.file is not None:
                try:
                    self.file.write(text)
                except OSError:
                    # A full or read-only disk must not take the core's logging down with it.
                    self.file = None
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self.stream.flush()

    def use_file(self, file: _LogFile | None) -> None:
        with self._lock:
            old, self.file = self.file, file
        if old is not None:
            old.close()


_OUTPUT = _Output(sys.stderr)


def set_group_file(path: Path | None, max_bytes: int | None = None) -> None:
    """Also write the log to `path` (0600), within `max_bytes` over two files; None: stop."""
    current = _OUTPUT.file
    if path is None or max_bytes is None:
        _OUTPUT.use_file(None)
    elif current is None or (current.path, current.max_bytes) != (path, max_bytes):
        _OUTPUT.use_file(_LogFile(path, max_bytes))


def configure_logging(
    *, level: str = "info", fmt: str = "auto", stream: TextIO | None = None
) -> None:
    """Set up structlog for the process: contextvars first, redaction last before rendering.

    Args:
        level: "debug", "info", "warning" or "error".
        fmt: "console" (human-readable, coloured when `stream` is a terminal), "json" (one
            object per line) or "auto" (console on a terminal, JSON otherwise).
        stream: Where log lines go (default: stderr).
    """
    out = stream or sys.stderr
    _OUTPUT.use_file(None)
    _OUTPUT.stream = out
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if resolve_format(fmt, out) == "json"
        else structlog.dev.ConsoleRenderer(
            # Colour for people at a terminal, unless they opted out (no-color.org).
            colors=_is_tty(out) and "NO_COLOR" not in os.environ,
            # format_exc_info renders tracebacks before this; should one reach the renderer,
            # plain text, never rich's with local variables (a local can hold a secret value;
            # rich arrives with the demo's broker).
            exception_formatter=structlog.dev.plain_traceback,
        )
    )
    _GATE.configured = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            _GATE,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            REDACTOR,
            renderer,
        ],
        # Everything passes the class's filter: _GATE decides, so the level can change later.
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        # _Output writes and flushes, all PrintLogger asks of a file.
        logger_factory=structlog.PrintLoggerFactory(cast("TextIO", _OUTPUT)),
        cache_logger_on_first_use=False,
    )
    # Libraries (aiomqtt/paho, botocore) log through stdlib logging: keep them quiet but visible,
    # and through the same redaction.
    handler = logging.StreamHandler(_OUTPUT)
    handler.addFilter(_StdlibRedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


class _StdlibRedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # The handler would format a traceback after this filter, unmasked: it is rendered
        # here instead, into the message that is masked.
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + _TRACEBACK_FORMATTER.formatException(record.exc_info)
        if record.stack_info:
            message += "\n" + record.stack_info
        record.msg = REDACTOR.mask(message)
        record.args = record.exc_info = record.exc_text = record.stack_info = None
        return True


_TRACEBACK_FORMATTER = logging.Formatter()


def get_logger(name: str, **initial: Any) -> FilteringBoundLogger:  # noqa: ANN401
    """Return a bound structlog logger for a component."""
    logger: FilteringBoundLogger = structlog.get_logger(name).bind(component=name, **initial)
    return logger


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
