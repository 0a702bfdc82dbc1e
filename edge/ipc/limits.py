# SPDX-License-Identifier: Apache-2.0
"""What the core's IPC server rations: file descriptors, and warnings about refused peers."""

from __future__ import annotations

import asyncio
import resource
import time
from pathlib import Path
from typing import Any, Final

from structlog.typing import FilteringBoundLogger

#: Where Linux says how high RLIMIT_NOFILE may go when the hard limit is "unlimited".
_NR_OPEN = Path("/proc/sys/fs/nr_open")
_OWN_FDS = Path("/proc/self/fd")
#: How often, at most, `DescriptorBudget` counts the process's open descriptors in /proc.
#: Between counts it adds the connections opened since, and the kernel's own word (the number of
#: each accepted descriptor) covers whatever else opened meanwhile: see `DescriptorBudget`.
DESCRIPTOR_COUNT_SECONDS: Final = 1.0


def raise_open_files_limit() -> tuple[int, int]:
    """Lift this process's soft RLIMIT_NOFILE to its hard limit, where allowed.

    Distributions start services at a soft limit of 1024 with a hard one far above; the IPC
    server keeps a reserve below the soft limit, and a core serving many workers would refuse
    them long before the machine's real limit.

    Returns:
        The soft limit before and after (equal when it could not or need not be raised).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        # NOFILE can't really be unlimited: the kernel caps it at fs.nr_open.
        try:
            target = int(_NR_OPEN.read_text())
        except (OSError, ValueError):
            return soft, soft
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return soft, soft
    return soft, target


class DescriptorBudget:
    """Says when one more connection would leave fewer than `reserve` descriptors free.

    The reserve is for the core's own work (a deployment's files and worker pipes, the store,
    MQTT): a flood of connections must hit this limit, not the process's. Two cheap readings,
    whichever is higher:

    * the accepted descriptor's number: the kernel hands out the lowest free one, so when it
      is n, descriptors 0..n are all open;
    * the process's open descriptors, counted in /proc at most every
      `DESCRIPTOR_COUNT_SECONDS`, plus the connections opened since the count (minus those
      closed). This one sees descriptors open above a hole that the first one can't.

    Args:
        reserve: Descriptors to keep free below the soft RLIMIT_NOFILE, read on `start`.
    """

    def __init__(self, *, reserve: int) -> None:
        self._reserve = reserve
        self._ceiling = 0
        self._others = 0
        self._next_count = 0.0

    @property
    def ceiling(self) -> int:
        """Open descriptors at which connections are refused (the soft limit less the reserve)."""
        return self._ceiling

    def start(self, connections: int) -> None:
        """Read the limit (raise it first: `raise_open_files_limit`) and count what is open."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = soft if soft != resource.RLIM_INFINITY else 2**31
        self._ceiling = max(0, limit - self._reserve)
        self._count(connections)

    def short(self, fd: int, connections: int) -> bool:
        """Whether the connection that got descriptor `fd` must be refused.

        Args:
            fd: The accepted connection's descriptor (-1 if unknown).
            connections: The connections open before it.
        """
        if fd >= self._ceiling:
            return True
        if time.monotonic() >= self._next_count:
            self._count(connections)
        return self._others + connections + 1 > self._ceiling

    def _count(self, connections: int) -> None:
        self._next_count = time.monotonic() + DESCRIPTOR_COUNT_SECONDS
        try:
            # The listing holds a descriptor of its own while it runs.
            total = sum(1 for _ in _OWN_FDS.iterdir()) - 1
        except FileNotFoundError:  # no /proc: the descriptor numbers alone
            total = 0
        except OSError:  # EMFILE: no descriptor left even to count them
            total = self._ceiling
        self._others = max(0, total - connections)


class _Window:
    __slots__ = ("fields", "suppressed", "timer")

    def __init__(self, timer: asyncio.TimerHandle) -> None:
        self.timer = timer
        self.suppressed = 0
        self.fields: dict[str, Any] = {}


class LogThrottle:
    """At most one warning per event name (and key) every `interval` seconds; the rest counted.

    The first occurrence is logged at once with `suppressed=0` and opens a window of
    `interval` seconds. Occurrences inside the window are only counted; when it ends, the
    latest of them is logged (its own fields) with `suppressed` = how many others were not,
    and a new window opens, until one passes without any. Every line is thus one occurrence,
    the total is the lines plus their `suppressed`, and a flood of refused connections writes
    a line every `interval` seconds, not one per connection. Needs a running event loop.

    Args:
        logger: Where summary lines go (first lines go to the logger passed to `warning`).
        interval: Seconds between two lines of the same event.
    """

    def __init__(self, *, logger: FilteringBoundLogger, interval: float) -> None:
        self._log = logger
        self._interval = interval
        self._windows: dict[tuple[str, str | None], _Window] = {}

    def warning(
        self,
        event: str,
        logger: FilteringBoundLogger | None = None,
        *,
        key: str | None = None,
        **fields: Any,  # noqa: ANN401 - whatever the event carries
    ) -> None:
        """Log `event` with `fields` now, or count it if its window is open.

        Args:
            event: The event name.
            logger: Where the line goes if it is logged now (a logger with context bound).
            key: Occurrences of one event with different keys have windows of their own (from
                a small fixed set: one kind must not hide another).
            fields: The event's fields; no exceptions or buffers: the latest are kept until
                the window ends.
        """
        window = self._windows.get((event, key))
        if window is not None:
            window.suppressed += 1
            window.fields = fields
            return
        (logger or self._log).warning(event, suppressed=0, **fields)
        self._open((event, key))

    def flush(self) -> None:
        """Close every window now, logging what it still owes (on shutdown)."""
        windows, self._windows = self._windows, {}
        for (event, _key), window in windows.items():
            window.timer.cancel()
            self._log_latest(event, window)

    def _open(self, which: tuple[str, str | None]) -> None:
        timer = asyncio.get_running_loop().call_later(self._interval, self._close, which)
        self._windows[which] = _Window(timer)

    def _close(self, which: tuple[str, str | None]) -> None:
        if self._log_latest(which[0], self._windows.pop(which)):
            self._open(which)

    def _log_latest(self, event: str, window: _Window) -> bool:
        """Log the window's latest occurrence, counting the others; whether there was one."""
        if not window.suppressed:
            return False
        self._log.warning(event, suppressed=window.suppressed - 1, **window.fields)
        return True
