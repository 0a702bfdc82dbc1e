# SPDX-License-Identifier: Apache-2.0
"""Run `python -m edge …` and measure where its CPU goes: by part of the control plane.

    .venv/bin/python bench/profile_serve.py OUT_DIR [--cprofile] -- --log-format json cloud …

Every callback the event loop runs, and every call the database thread runs, is timed with
`time.thread_time` (the thread's own CPU, so waiting on PostgreSQL or the broker counts
nothing), and its CPU is added to the part of the control plane it belongs to:

* a task's step goes to the part its coroutine's module belongs to (`PARTS`: the bulk runner
  and `edge.cloud.deployments` are creation, the outbox drain and the publisher's sends are
  drain + publish, the status follower is status ingest, aiohttp's handlers the HTTP API);
* a database call goes to the part of the function it runs (`DatabaseThread.call`);
* what is neither (the MQTT socket's reads and writes, which carry PUBACKs and statuses alike,
  timers, the selector) is "MQTT I/O, event loop".

Timing a callback costs two clock reads, so the figures are the service's own, unlike a
tracing profiler's. SIGUSR1 starts the measured window over, SIGUSR2 writes `split.json` to
OUT_DIR (and, with `--cprofile`, a per-thread cProfile of the window, far slower). The
benchmark (`bench/fleet.py --profile DIR`) sends them around its rounds and prints the split.
"""

from __future__ import annotations

import asyncio
import collections
import cProfile
import functools
import io
import json
import marshal
import pstats
import runpy
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CREATION = "creation (bulk runner, deployments, signing)"
DRAIN = "drain + publish (outbox claims, publisher)"
INGEST = "status ingest (follower, recording)"
HTTP = "HTTP API (requests, SigV4)"
OTHER = "MQTT I/O, event loop, other"
#: Parts by where the code is: the first (path fragment, function name or "") that matches.
PARTS: tuple[tuple[str, str, str], ...] = (
    ("edge/cloud/bulk/", "", CREATION),
    ("edge/cloud/deployments.py", "", CREATION),
    ("edge/cloud/serve/drain.py", "", DRAIN),
    ("edge/cloud/outbox.py", "", DRAIN),
    ("edge/cloud/publisher.py", "watch", INGEST),
    ("edge/cloud/publisher.py", "", DRAIN),
    ("edge/cloud/serve/follow.py", "", INGEST),
    ("edge/cloud/status.py", "", INGEST),
    ("aiohttp/web_protocol.py", "", HTTP),
    ("edge/cloud/serve/", "", HTTP),
)


def part_of(filename: str, name: str) -> str:
    """The part a function belongs to, by its file and name."""
    for fragment, function, part in PARTS:
        if fragment in filename and (not function or function in name):
            return part
    return OTHER


def _callable_part(fn: Callable[..., Any]) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    code = getattr(fn, "__code__", None)
    if code is None:
        return OTHER
    return part_of(code.co_filename, code.co_qualname)


class Meter:
    """CPU seconds by part and thread, for the window since the last `restart`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds: collections.Counter[tuple[str, str]] = collections.Counter()
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()

    def add(self, thread: str, part: str, seconds: float) -> None:
        """Count one callback's or call's CPU."""
        with self.lock:
            self.seconds[thread, part] += seconds
            self.calls[thread, part] += 1

    def restart(self) -> None:
        """Start the window over."""
        with self.lock:
            self.seconds.clear()
            self.calls.clear()

    def snapshot(self) -> dict[str, Any]:
        """The window so far, as JSON-ready lists."""
        with self.lock:
            return {
                "seconds": [[t, p, s] for (t, p), s in sorted(self.seconds.items())],
                "calls": [[t, p, n] for (t, p), n in sorted(self.calls.items())],
            }


def _task_part(callback: Any) -> str:
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        coro: Any = task.get_coro()
        code = getattr(coro, "cr_code", None)
        if code is not None:
            return part_of(code.co_filename, code.co_qualname)
    return _callable_part(callback)


def instrument(meter: Meter) -> None:
    """Time every event-loop callback and every database-thread call."""
    handle_run = asyncio.events.Handle._run  # noqa: SLF001 - the one place callbacks run

    def timed_run(self: asyncio.events.Handle) -> None:
        began = time.thread_time()
        try:
            handle_run(self)
        finally:
            part = _task_part(self._callback)  # type: ignore[attr-defined]
            meter.add("event loop", part, time.thread_time() - began)

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]  # noqa: SLF001

    from edge.cloud.serve.dbthread import DatabaseThread  # noqa: PLC0415

    call = DatabaseThread.call

    async def timed_call(self: DatabaseThread, fn: Callable[[Any], Any]) -> Any:
        part = _callable_part(fn)

        def run(db: Any) -> Any:
            began = time.thread_time()
            try:
                return fn(db)
            finally:
                meter.add("database thread", part, time.thread_time() - began)

        return await call(self, run)

    DatabaseThread.call = timed_call  # type: ignore[method-assign]


def main() -> None:
    """Run `python -m edge ARGS` measured; SIGUSR1 restarts the window, SIGUSR2 writes it."""
    out = Path(sys.argv[1])
    use_cprofile = "--cprofile" in sys.argv[2 : sys.argv.index("--")]
    args = sys.argv[sys.argv.index("--") + 1 :]
    out.mkdir(parents=True, exist_ok=True)
    meter = Meter()
    instrument(meter)
    profiles: dict[str, cProfile.Profile] = {}

    def start_thread_profile(*_: Any) -> None:
        sys.setprofile(None)
        profile = cProfile.Profile(time.thread_time)
        profiles[f"{threading.current_thread().name}-{threading.get_ident()}"] = profile
        profile.enable()

    def restart(*_: Any) -> None:
        meter.restart()
        # Entries of a thread in the middle of a call go too; cProfile then ignores that
        # call's return, so the counts start over cleanly.
        for profile in list(profiles.values()):
            profile.clear()

    def dump(*_: Any) -> None:
        for name, profile in list(profiles.items()):
            profile.snapshot_stats()
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
            with (out / f"{safe}.prof").open("wb") as file:
                marshal.dump(profile.stats, file)  # type: ignore[attr-defined] # set by snapshot
        (out / "split.json").write_text(json.dumps(meter.snapshot()))

    signal.signal(signal.SIGUSR1, restart)
    signal.signal(signal.SIGUSR2, dump)
    main_profile = cProfile.Profile(time.thread_time)
    if use_cprofile:
        threading.setprofile(start_thread_profile)
        profiles["main"] = main_profile
        main_profile.enable()
    sys.argv = ["edge", *args]
    try:
        runpy.run_module("edge", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        main_profile.disable()


def split(directory: Path) -> dict[str, dict[str, float]]:
    """The written window: CPU seconds by part, then by thread."""
    data = json.loads((directory / "split.json").read_text())
    out: dict[str, dict[str, float]] = {}
    for thread, part, seconds in data["seconds"]:
        out.setdefault(part, {})[thread] = seconds
    return out


def top(directory: Path, count: int = 40) -> str:
    """With `--cprofile`: the functions taking the most CPU of their own, over every thread."""
    paths = sorted(str(p) for p in directory.glob("*.prof"))
    if not paths:
        return ""
    buffer = io.StringIO()
    pstats.Stats(*paths, stream=buffer).sort_stats("tottime").print_stats(count)
    return buffer.getvalue()


if __name__ == "__main__":
    main()
