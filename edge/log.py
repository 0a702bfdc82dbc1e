# SPDX-License-Identifier: Apache-2.0
"""Structured logging (structlog) with a last-line-of-defence redaction of secret values.

The code never logs a secret value on purpose; `SecretRedactor` makes sure an accident (an
exception message from a library, a worker's print) can't leak one either: every string in
every event is scanned for every value the core holds, and matches become `****`.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

MASK = "****"
#: Values shorter than this are not masked: masking every "a" in every line would make logs
#: unreadable, and a value that short is not a credential anyone should rely on.
MIN_MASKED_LENGTH = 4
#: Keys whose value is always masked, whatever it is.
_SECRET_KEYS = frozenset({"SecretString", "SecretBinary", "secret_string", "secret_binary"})


class SecretRedactor:
    """Masks known secret values in text; safe to update from one thread while others read.

    Values are indexed by their first `MIN_MASKED_LENGTH` characters, so masking a line costs
    one dict lookup per character whatever the number of secrets (a regex alternation of 10,000
    values takes a third of a second to compile and milliseconds per line).
    """

    def __init__(self) -> None:
        self._index: dict[str, tuple[str, ...]] = {}

    def update(self, values: Iterable[str | bytes]) -> None:
        """Replace the set of values to mask (call after every store rotation)."""
        forms: set[str] = set()
        for value in values:
            forms.update(f for f in _textual_forms(value) if len(f) >= MIN_MASKED_LENGTH)
        grouped: dict[str, list[str]] = {}
        for form in forms:
            grouped.setdefault(form[:MIN_MASKED_LENGTH], []).append(form)
        # Longest first, so a value that contains another is masked whole.
        index = {k: tuple(sorted(v, key=len, reverse=True)) for k, v in grouped.items()}
        self._index = index  # one reference swap: readers see the old or the new index

    def mask(self, text: str) -> str:
        """Return text with every known secret value replaced by `****`."""
        index = self._index
        if not index or len(text) < MIN_MASKED_LENGTH:
            return text
        pieces: list[str] = []
        start = i = 0
        end = len(text) - MIN_MASKED_LENGTH
        while i <= end:
            candidates = index.get(text[i : i + MIN_MASKED_LENGTH])
            match = (
                next((v for v in candidates if text.startswith(v, i)), None) if candidates else None
            )
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

    def _scrub(self, value: object) -> object:  # noqa: PLR0911 - one return per kind of value
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, bytes):
            return self.mask(value.decode("utf-8", "replace"))
        if isinstance(value, Mapping):
            return {k: MASK if k in _SECRET_KEYS else self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._scrub(v) for v in value]
        if isinstance(value, BaseException):
            return self.mask(f"{type(value).__name__}: {value}")
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.mask(str(value))


def _textual_forms(value: str | bytes) -> set[str]:
    """The ways a value can show up in text: itself, its UTF-8 decoding, its base64."""
    if isinstance(value, str):
        return {value}
    forms = {base64.b64encode(value).decode("ascii")}
    with contextlib.suppress(UnicodeDecodeError):
        forms.add(value.decode("utf-8"))
    return forms


#: The process-wide redactor; the supervisor feeds it after every store change.
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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            REDACTOR,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries (aiomqtt/paho, botocore) log through stdlib logging: keep them quiet but visible,
    # and through the same redaction.
    handler = logging.StreamHandler(out)
    handler.addFilter(_StdlibRedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


class _StdlibRedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = REDACTOR.mask(record.getMessage())
        record.args = None
        return True


def get_logger(name: str, **initial: Any) -> FilteringBoundLogger:  # noqa: ANN401
    """Return a bound structlog logger for a component."""
    logger: FilteringBoundLogger = structlog.get_logger(name).bind(component=name, **initial)
    return logger


def scrub_mapping(data: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask secret values in a mapping that is about to leave the process (status reports)."""
    for key, value in data.items():
        if isinstance(value, str):
            data[key] = REDACTOR.mask(value)
    return data
