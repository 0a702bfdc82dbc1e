# SPDX-License-Identifier: Apache-2.0
"""The core's side of a one-shot child: `python -m <module>`, one request, its answer, then gone.

The core keeps libraries it needs only now and then (an AWS SDK, `cryptography`) out of its
own memory by running the code that needs them in a child for each request. `OneShot` starts
the child at once, so that a caller can start it before the core's own imports are done (the
store's unseal at start), and `exchange` talks to it later, from the event loop:

- the request goes in as one frame on the child's stdin (a pipe); frames come back on its stdout
  (a socket, see `OneShot.__init__`; `edge.oneshot.wire`); `interim` handles those that are
  not the answer (the fetch's counts and rate-limit waits) and may reply to them;
- the whole exchange has one deadline, a `loop.time()`: past it, `TimeoutError`;
- the child is killed and reaped when `exchange` returns, raises or is cancelled, whatever
  state it is in; its stderr is relayed into the core's log line by line (through the log's
  redactor), JSON events keeping their name, level and fields;
- a child that can't start, dies without an answer or writes something that is not a frame
  is a `NoAnswerError` saying which.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from edge.oneshot.wire import MAX_FRAME_BYTES, FrameReader, pack

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

#: How long the stderr relay may lag behind the child's exit.
_RELAY_DRAIN_SECONDS: Final = 2.0
#: Fields of a child's JSON log lines that the core's own logger sets again.
_OWN_FIELDS: Final = frozenset({"event", "level", "timestamp"})
#: Exit statuses that say nothing went wrong: done, or killed by us once it had answered.
_CLEAN_EXITS: Final = frozenset({0, -9})
#: How long a child that closed its stdout without an answer is given to exit by itself, so
#: that its exit status can be told; past it, it is killed like any other.
_EXIT_WAIT_SECONDS: Final = 1.0

#: The directory that holds the core's own `edge` package. It goes first on the child's path, and
#: the child runs with `-P`: it runs the very code the core runs, and never a module that
#: happens to be in the core's working directory (`python -m` would put that first).
_EDGE_ROOT: Final = str(Path(__file__).resolve().parents[2])

#: Sends a frame to the child (a reply to an interim frame).
Reply = Callable[[Mapping[str, Any]], Awaitable[None]]
#: Handles a frame that may not be the answer; True if it was not (see `OneShot.exchange`).
Interim = Callable[[dict[str, Any], Reply], Awaitable[bool]]


class NoAnswerError(Exception):
    """The child gave no answer: it could not start, died first, or wrote something else."""

    def __init__(self, why: str) -> None:
        #: What happened, for a message: "ended without an answer (exit status 1)".
        self.why = why
        super().__init__(why)


class OneShot:
    """One child process running one request; see the module's docstring."""

    def __init__(self, module: str, *, name: str) -> None:
        """Start `python -m module` now, its stdin a pipe, its outputs sockets; don't wait for it.

        Args:
            module: The child's module.
            name: Its name in log events (`{name}.process.output`, `{name}.process.exited`).

        Raises:
            NoAnswerError: The process could not be started (no memory, no descriptors...).
        """
        self.name = name
        self._exited_event = f"{name}.process.exited"
        self._output_event = f"{name}.process.output"
        try:
            # Its stdout and stderr are sockets, not pipes: an event loop's transport must be
            # the only one to close what it reads. uvloop's pipe transport has libuv close the
            # descriptor and then closes the file object it was given too, a second close that
            # can land on a descriptor another thread has just opened under the same number; a
            # socket object it detaches instead. asyncio's own loop closes either once.
            ours, theirs = zip(socket.socketpair(), socket.socketpair(), strict=True)
        except OSError as exc:
            raise NoAnswerError(f"could not start ({exc.strerror or exc})") from exc
        self._outputs: tuple[socket.socket, ...] | None = ours
        try:
            self._proc: subprocess.Popen[bytes] = subprocess.Popen(
                [sys.executable, "-P", "-m", module],
                stdin=subprocess.PIPE,
                stdout=theirs[0].fileno(),
                stderr=theirs[1].fileno(),
                env=_child_env(),
            )
        except OSError as exc:
            self._close_outputs()
            raise NoAnswerError(f"could not start ({exc.strerror or exc})") from exc
        finally:
            for end in theirs:
                end.close()
        self._spent = False

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._proc.pid

    def send_now(self, frame: Mapping[str, Any]) -> None:
        """Write a small frame to the child's stdin, blocking; before any event loop runs.

        A frame no larger than a pipe's buffer (64 KiB on Linux) never blocks. A child that is
        already gone makes `exchange` say so; it is not raised here.
        """
        with contextlib.suppress(BrokenPipeError):
            self._stdin.write(pack(frame))
            self._stdin.flush()

    def kill(self) -> None:
        """Kill the child if `exchange` never ran (the caller gave up on it before)."""
        if not self._spent:
            self._spent = True
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            self._proc.wait()
            self._stdin.close()
            self._close_outputs()

    async def exchange(
        self,
        request: Mapping[str, Any] | None,
        *,
        deadline: float,
        log: FilteringBoundLogger,
        interim: Interim | None = None,
    ) -> dict[str, Any]:
        """Send `request` (None: it went with `send_now`) and return the child's answer.

        Args:
            request: The request frame, or None if it was sent already.
            deadline: A `loop.time()` by which the answer must have come.
            log: Where the child's stderr goes.
            interim: Called with each frame and a function that sends a frame back; returns
                True for a frame it handled (not the answer). Without it, the first frame is
                the answer.

        Returns:
            The answer frame.

        Raises:
            TimeoutError: The deadline passed (the child is killed).
            NoAnswerError: The child died without an answer or wrote something that is not
                a frame.
            RuntimeError: `exchange` or `kill` ran before on this child.
        """
        if self._spent:
            raise RuntimeError("a one-shot child answers once")
        self._spent = True
        loop = asyncio.get_running_loop()
        proc = self._proc
        # The same limit for stderr: it bounds the longest line relayed.
        out, err = (asyncio.StreamReader(limit=MAX_FRAME_BYTES) for _ in range(2))
        transports = await self._attach(loop, out, err)
        relay = asyncio.create_task(
            _relay(err, log, self._output_event), name=f"{self.name}-stderr"
        )

        async def reply(frame: Mapping[str, Any]) -> None:
            # In a thread: a large frame blocks until the child has read it; a child that is
            # killed meanwhile ends the write with EPIPE.
            await asyncio.to_thread(self._write, pack(frame))

        try:
            async with asyncio.timeout_at(deadline):
                if request is not None:
                    await reply(request)
                frames = FrameReader(out)
                while True:
                    frame = await frames.next()
                    if interim is None or not await interim(frame, reply):
                        return frame
        except (EOFError, BrokenPipeError, ConnectionResetError):
            raise NoAnswerError(await self._ended()) from None
        except (TypeError, ValueError):
            raise NoAnswerError("answered something that is not a frame") from None
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.to_thread(proc.wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(relay, _RELAY_DRAIN_SECONDS)
            for transport in transports:
                transport.close()
            with contextlib.suppress(OSError):
                self._stdin.close()
            if proc.returncode not in _CLEAN_EXITS:
                log.warning(self._exited_event, status=proc.returncode)

    async def _attach(
        self, loop: asyncio.AbstractEventLoop, *streams: asyncio.StreamReader
    ) -> list[asyncio.BaseTransport]:
        """Feed `streams` from the child's outputs; each socket then belongs to its transport."""
        outputs, self._outputs = self._outputs or (), None
        transports: list[asyncio.BaseTransport] = []
        try:
            for end, stream in zip(outputs, streams, strict=True):
                transports.append(await _connect(loop, end, stream))
        except BaseException:
            for end in outputs[len(transports) :]:
                end.close()
            for transport in transports:
                transport.close()
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await asyncio.to_thread(self._proc.wait)
            raise
        return transports

    def _close_outputs(self) -> None:
        for end in self._outputs or ():
            end.close()
        self._outputs = None

    @property
    def _stdin(self) -> IO[bytes]:
        if self._proc.stdin is None:  # pragma: no cover - started with a pipe
            raise RuntimeError("the child was started without a stdin pipe")
        return self._proc.stdin

    def _write(self, data: bytes) -> None:
        self._stdin.write(data)
        self._stdin.flush()

    async def _ended(self) -> str:
        """Why there was no answer: the child's exit status, if it exits by itself soon."""
        try:
            status = await asyncio.to_thread(self._proc.wait, _EXIT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            return "closed its answer pipe without an answer"
        return f"ended without an answer (exit status {status})"


def _child_env() -> dict[str, str]:
    """The core's environment (AWS settings, proxies...), with `_EDGE_ROOT` first on the path."""
    paths = [_EDGE_ROOT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


async def _connect(
    loop: asyncio.AbstractEventLoop, end: socket.socket, stream: asyncio.StreamReader
) -> asyncio.BaseTransport:
    """Feed `stream` from our end of a child's output on the event loop."""
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream), end)
    return transport


async def _relay(stderr: asyncio.StreamReader, log: FilteringBoundLogger, output: str) -> None:
    """Log the child's stderr lines; JSON events keep their name, level and fields.

    A line that is not such an event is logged as the event `output`.
    """
    async for raw in stderr:
        line = raw.decode("utf-8", "replace").rstrip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            log.warning(output, line=line)
            continue
        level = str(event.get("level", "info"))
        emit = getattr(log, level, None) if level in {"debug", "info", "warning", "error"} else None
        fields = {k: v for k, v in event.items() if k not in _OWN_FIELDS}
        (emit or log.info)(event["event"], **fields)
