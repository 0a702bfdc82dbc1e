# SPDX-License-Identifier: Apache-2.0
"""Progress of a bulk deployment for `edge cloud start-bulk-deployment --wait`.

On a terminal, one line rewritten in place: state, done / failed / in flight out of the total,
the finishing rate and the time left. Into a file or a pipe, plain lines instead, one when
something changed and at most every `PLAIN_EVERY_SECONDS`, so a CI log stays readable; the
last state is always written. Formatting is pure (`render`); `ProgressWriter` only writes.
"""

from __future__ import annotations

import collections
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TextIO

from edge.cloud.bulk.records import BulkDeployment
from edge.cloud.bulk.state import BulkState
from edge.cloud.bulk.store import BulkStore, Tally

#: Seconds of history the rate is measured over: long enough to smooth batches, short
#: enough to follow a ramp-up.
RATE_WINDOW_SECONDS: Final = 10.0
#: Least seconds between two plain lines while nothing ends.
PLAIN_EVERY_SECONDS: Final = 5.0
#: ANSI: erase to the end of the line.
_CLEAR: Final = "\x1b[K"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the progress line shows."""

    state: BulkState
    #: Records read so far (all of them, once Running).
    total: int
    succeeded: int
    failed: int
    in_flight: int
    invalid: int
    #: Deployments finished per second lately; None until it can be measured.
    rate: float | None = None

    @property
    def remaining(self) -> int:
        """Records neither finished nor invalid."""
        return max(0, self.total - self.succeeded - self.failed - self.invalid)


def snapshot(bulk: BulkDeployment, tally: Tally, rate: float | None = None) -> Snapshot:
    """A Snapshot of a bulk deployment and its tally."""
    counts = tally.counts
    total = tally.pending + tally.unconfirmed + tally.created + tally.invalid
    return Snapshot(
        bulk.state,
        total,
        counts.succeeded,
        counts.failed,
        counts.in_flight,
        tally.invalid,
        rate,
    )


class RateMeter:
    """Finished deployments per second over the last `window` seconds (times are given)."""

    def __init__(self, *, window: float = RATE_WINDOW_SECONDS) -> None:
        self._window = window
        self._points: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, now: float, finished: int) -> float | None:
        """Record the finished count at `now`; the rate, or None with under a second of data."""
        self._points.append((now, finished))
        while len(self._points) > 2 and now - self._points[1][0] >= self._window:  # noqa: PLR2004
            self._points.popleft()
        first_time, first_count = self._points[0]
        if now - first_time < 1.0:
            return None
        return (finished - first_count) / (now - first_time)


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`."""
    whole = round(seconds)
    if whole < 60:  # noqa: PLR2004 - a minute
        return f"{whole}s"
    if whole < 3600:  # noqa: PLR2004 - an hour
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def render(snap: Snapshot) -> str:
    """The progress line.

    For example `Running 1,200/5,000 done, 3 failed, 40 in flight, 2 invalid, 85.0/s, ETA 45s`.
    """
    parts = [
        f"{snap.state.value} {snap.succeeded:,}/{snap.total:,} done",
        f"{snap.failed:,} failed",
        f"{snap.in_flight:,} in flight",
    ]
    if snap.invalid:
        parts.append(f"{snap.invalid:,} invalid")
    if snap.rate is not None:
        parts.append(f"{snap.rate:,.1f}/s")
        if not snap.state.is_final and snap.remaining and snap.rate > 0:
            parts.append(f"ETA {duration(snap.remaining / snap.rate)}")
    return ", ".join(parts)


class ProgressWriter:
    """Writes progress lines: rewritten in place on a TTY, plain lines otherwise."""

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        width: Callable[[], int] = lambda: shutil.get_terminal_size().columns,
    ) -> None:
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._clock = clock
        self._width = width
        self._last_text: str | None = None
        self._last_time: float | None = None
        self._open = False

    def show(self, snap: Snapshot) -> None:
        """Show the current progress (a final state ends the line)."""
        text = render(snap)
        if self._tty:
            # Cut to the terminal: a wrapped line can't be rewritten with a carriage return.
            self._stream.write("\r" + text[: max(10, self._width() - 1)] + _CLEAR)
            self._open = True
            if snap.state.is_final:
                self.close()
            self._stream.flush()
            return
        now = self._clock()
        due = self._last_time is None or now - self._last_time >= PLAIN_EVERY_SECONDS
        changed = text != self._last_text
        if snap.state.is_final or (changed and due):
            self._stream.write(text + "\n")
            self._stream.flush()
            self._last_text, self._last_time = text, now

    def close(self) -> None:
        """End an in-place line, so what follows starts on a line of its own."""
        if self._open:
            self._stream.write("\n")
            self._open = False


async def watch(
    store: BulkStore,
    bulk_id: str,
    writer: ProgressWriter,
    *,
    interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]],
) -> BulkDeployment:
    """Show a bulk deployment's progress until it ends; the bulk deployment as it ended."""
    meter = RateMeter()
    try:
        while True:
            bulk, tally = await store.get(bulk_id), await store.tally(bulk_id)
            rate = meter.add(clock(), tally.counts.finished)
            writer.show(snapshot(bulk, tally, rate))
            if bulk.state.is_final:
                return bulk
            await sleep(interval)
    finally:
        writer.close()
