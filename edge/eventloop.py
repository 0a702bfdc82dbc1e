# SPDX-License-Identifier: Apache-2.0
"""The event loop `edge run` runs on (uvloop where installed, else asyncio's), and a stop on it.

uvloop is a dependency on Linux x86_64 and aarch64, where it ships wheels (pyproject.toml);
elsewhere `pip install 'edge[fast]'` builds it from source. On it the IPC server spends about a
third of the CPU per request that asyncio's loop needs (bench/ipc.py).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Final

#: `[core] event_loop`: auto (uvloop when importable), or one of the two by name.
EVENT_LOOPS: Final = ("auto", "uvloop", "asyncio")
#: How long a stopping task has to end before it is cancelled again: far more than closing an
#: MQTT connection or a worker's socket takes, short enough that a stop is still prompt.
RECANCEL_SECONDS: Final = 1.0


@dataclass(frozen=True, slots=True)
class EventLoop:
    """A loop's name as logged at start (`uvloop 0.21.0`, `asyncio`) and its runner."""

    name: str
    run: Callable[[Coroutine[Any, Any, None]], None]


def choose_event_loop(choice: str) -> EventLoop:
    """The loop for `[core] event_loop = choice` (edge.config checked that "uvloop" is there)."""
    if choice != "asyncio":
        try:
            import uvloop  # noqa: PLC0415 - absent where it ships no wheel
        except ImportError:
            pass
        else:
            # Its own attribute, not importlib.metadata's record: that would hold half a MB
            # of the core's memory, and cost ~9 ms, for one log line.
            return EventLoop(
                name=f"uvloop {getattr(uvloop, '__version__', '')}".rstrip(), run=uvloop.run
            )
    return EventLoop(name="asyncio", run=asyncio.run)


def uvloop_installed() -> bool:
    """Whether uvloop can be imported, without importing it."""
    return importlib.util.find_spec("uvloop") is not None


async def cancel_until_done(
    tasks: Iterable[asyncio.Task[Any]], *, every: float = RECANCEL_SECONDS
) -> None:
    """Cancel `tasks`, and cancel again every `every` seconds those that haven't ended.

    One cancel can be lost: Python 3.11's `asyncio.wait_for` (aiomqtt waits for every
    acknowledgement with it) returns its result, rather than raising, when the cancellation
    lands in the same turn of the loop as the awaited future completes. The task then goes on
    to its next wait as if never asked to stop, and `edge run` would ignore its SIGTERM.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
