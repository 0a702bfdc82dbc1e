# SPDX-License-Identifier: Apache-2.0
"""Request handling on the core's side: ask the handler, check and send its answer, count it.

Handlers answer from memory, so the usual path is synchronous: a handler may return a
`Response` directly (answered before the next frame is read, with no task created) or an
awaitable (run as a task of its own, so a slow `lambda.invoke` never holds up a
`get_secret_value`, on this connection or any other; answers carry their request id and may go
out of order). Whatever the handler does, the worker gets exactly one answer per request.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import Counter
from collections.abc import Awaitable
from typing import Final, Protocol

from structlog.typing import FilteringBoundLogger

from edge.errors import FrameTooLargeError, LocalProtocolError
from edge.ipc.answers import AnswerCache
from edge.ipc.auth import WorkerIdentity
from edge.ipc.connection import Connection, State
from edge.ipc.events import KNOWN_OPS, Request, Response

#: Upper bounds of the request latency histogram (`IpcServer.latency`), in seconds: answers
#: from memory take tens of microseconds, invocations up to a function's Timeout.
LATENCY_BOUNDS_SECONDS: Final = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.01,
    0.1,
    1.0,
    10.0,
    60.0,
)
_LATENCY_BOUNDS_NS: Final = tuple(int(b * 1e9) for b in LATENCY_BOUNDS_SECONDS)
_now_ns = time.perf_counter_ns
_bucket = bisect.bisect_left


class LatencyHistogram:
    """Request latencies of one operation: counts per `LATENCY_BOUNDS_SECONDS` bucket."""

    __slots__ = ("count", "counts", "total_ns")

    def __init__(self) -> None:
        self.count = 0
        self.total_ns = 0
        #: Per bucket (not cumulative); the last one counts what is over the largest bound.
        self.counts = [0] * (len(_LATENCY_BOUNDS_NS) + 1)

    def observe(self, nanoseconds: int) -> None:
        """Count one request that took `nanoseconds`."""
        self.count += 1
        self.total_ns += nanoseconds
        self.counts[bisect.bisect_left(_LATENCY_BOUNDS_NS, nanoseconds)] += 1


class RequestHandler(Protocol):
    """Answers one request of an authenticated worker.

    Return a `Response` when the answer is known at once (in-memory lookups: the fast path,
    no task is created) or an awaitable of one for work that waits (an invocation). Either way
    the response must carry the request's id; use `Response.success` / `Response.failure`.
    An exception becomes a status 500 answer and an `ipc.handler.failed` log event.

    A synchronous answer may carry `Response.replay`: the connection then answers requests
    with the same bytes (but for the id) from a cache (`edge.ipc.answers`), calling `replay()`
    instead of the handler, until `replay()` returns False. The handler is then asked again.
    A handler with an `on_change(callback)` method is given a callback that drops those caches
    at once.
    """

    def __call__(
        self, identity: WorkerIdentity, request: Request, /
    ) -> Response | Awaitable[Response]:
        """Answer `request` from `identity`."""
        ...


class Caller(Protocol):
    """The connection a request came in on, as request handling sees it."""

    conn: Connection
    conn_id: int
    log: FilteringBoundLogger
    answers: AnswerCache

    def write(self, data: bytes) -> None:
        """Send bytes unless the connection is closing."""
        ...

    def track(self, task: asyncio.Task[None]) -> None:
        """Own the task answering one request."""
        ...


class Dispatcher:
    """Passes requests to the handler and answers them; counts what it answers.

    Attributes:
        requests: Answered requests by (op, outcome), outcome "ok" or the error status as text;
            ops the core doesn't know are counted as "unknown".
        latency: Per operation (as in `requests`), how long answers took from the request's
            frame being parsed to the answer being handed to the transport.
        measure_latency: Whether to fill `latency` (two clock reads and a bucket per request:
            only when something exports it).
    """

    def __init__(self, handler: RequestHandler) -> None:
        self._handler = handler
        self.requests: Counter[tuple[str, str]] = Counter()
        self.latency: dict[str, LatencyHistogram] = {}
        self.measure_latency = False

    def dispatch(self, caller: Caller, identity: WorkerIdentity, request: Request) -> None:
        """Answer a request now (synchronous handler result) or from a task of its own."""
        started = _now_ns() if self.measure_latency else 0
        if request.op not in KNOWN_OPS:
            failure = Response.failure(request.request_id, 400, "unknown operation")
            self._respond(caller, request, failure, started)
            return
        try:
            answer = self._handler(identity, request)
        except Exception:
            caller.log.exception("ipc.handler.failed", op=request.op)
            answer = _internal_error(request)
        if isinstance(answer, Response):
            if self._respond(caller, request, answer, started) and answer.replay is not None:
                caller.answers.remember(request.op, answer.packed_result, answer.replay)
            return
        task = asyncio.ensure_future(self._finish(caller, request, answer, started))
        task.set_name(f"ipc-request-{caller.conn_id}-{request.request_id}")
        caller.track(task)

    async def _finish(
        self, caller: Caller, request: Request, answer: Awaitable[Response], started: int
    ) -> None:
        try:
            response = await answer
        except Exception:
            caller.log.exception("ipc.handler.failed", op=request.op)
            response = _internal_error(request)
        self._respond(caller, request, response, started)

    def _respond(self, caller: Caller, request: Request, response: Response, started: int) -> bool:
        """Send the answer, count it; whether `response` itself went out (not a substitute)."""
        log = caller.log
        if type(response) is not Response or response.request_id != request.request_id:
            log.error("ipc.handler.bad_response", op=request.op)
            response = _internal_error(request)
        conn = caller.conn
        if conn.state is not State.OPEN:
            return False  # the connection ended while the handler ran: nobody to answer
        given = response
        try:
            data = conn.send(response)
        except FrameTooLargeError as exc:
            log.warning("ipc.response.too_large", op=request.op, size=exc.size)
            response = Response.failure(
                request.request_id,
                413,
                f"the answer is {exc.size} bytes, over the {exc.limit}-byte IPC frame limit",
            )
            data = conn.send(response)
        except LocalProtocolError as exc:
            log.exception("ipc.response.unencodable", op=request.op, problem=exc.problem)
            response = _internal_error(request)
            data = conn.send(response)
        op = request.op if request.op in KNOWN_OPS else "unknown"
        outcome = "ok" if response.error is None else str(response.error["Status"])
        self.requests[op, outcome] += 1
        caller.write(data)
        if started:
            self.observe(op, started)
        return response is given

    def observe(self, op: str, started: int) -> None:
        """Count a request's latency, from `started` (`perf_counter_ns`) until now."""
        elapsed = _now_ns() - started
        histogram = self.latency.get(op)
        if histogram is None:
            histogram = self.latency[op] = LatencyHistogram()
        # LatencyHistogram.observe, inlined: this runs for every request.
        histogram.count += 1
        histogram.total_ns += elapsed
        histogram.counts[_bucket(_LATENCY_BOUNDS_NS, elapsed)] += 1


def _internal_error(request: Request) -> Response:
    return Response.failure(request.request_id, 500, "the core failed to handle the request")
