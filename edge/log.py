# SPDX-License-Identifier: Apache-2.0
"""Structured logging (structlog), every event passed through the redactor last.

`edge.redaction.REDACTOR` masks every secret value the core holds in every field of every
event, and in what libraries log through the standard `logging` module, before anything is
written.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Final, TextIO, cast

# Imports no structlog at run time: `_import_structlog` below stays the process's first.
from edge.redaction import REDACTOR

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
from structlog.typing import EventDict, FilteringBoundLogger  # noqa: E402

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
