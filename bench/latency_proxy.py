# SPDX-License-Identifier: Apache-2.0
"""A loopback HTTP proxy in front of moto that adds latency, injects faults and counts calls.

moto answers on loopback in about a millisecond, so it hides what matters on a device: the
round trip to a regional endpoint (tens of milliseconds), throttling and 5xx answers. This
proxy puts them back. Every request waits `delay` seconds, then is either answered with an
injected fault (an AWS-style error, or a connection dropped without an answer) or forwarded to
moto. Requests are counted by operation (the `X-Amz-Target` header of the AWS JSON protocol),
with the most in flight at once, overall and per operation.

Use it as a library::

    async with LatencyProxy(upstream=moto_url, delay=0.030) as proxy:
        proxy.inject(status=429, code="ThrottlingException", count=3)
        ...  # point the client at proxy.url

or run it alone: `python bench/latency_proxy.py --upstream http://127.0.0.1:5000`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from types import TracebackType

#: What a 30 ms round trip looks like: a device talking to its own region's endpoint.
DEFAULT_DELAY_SECONDS = 0.030

#: Headers that describe one hop, not the message; aiohttp sets its own.
_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "accept-encoding",
        "date",
        "server",
    }
)


@dataclass
class Fault:
    """An answer the proxy gives instead of forwarding, for `remaining` matching requests."""

    #: HTTP status of the injected error; None forwards the request after the extra delay.
    status: int | None
    #: AWS error code put in `__type` and `x-amzn-ErrorType`, e.g. ThrottlingException.
    code: str
    #: Operation to match (e.g. "GetSecretValue"); None matches every operation.
    operation: str | None
    #: Requests left to fault; None means forever.
    remaining: int | None
    #: Seconds to wait on top of the proxy's delay.
    delay: float = 0.0
    #: The error's `message`, which botocore quotes in its exception text.
    message: str = "injected by latency_proxy"
    #: Drop the connection without an answer (a reset mid-request) instead of answering.
    reset: bool = False

    def matches(self, operation: str) -> bool:
        """Tell whether this fault applies to a request for the operation."""
        live = self.remaining is None or self.remaining > 0
        return live and self.operation in (None, operation)


def operation_of(target: str | None, path: str) -> str:
    """Return the API operation of a request: `X-Amz-Target`'s suffix, or the path."""
    if target:
        return target.rsplit(".", 1)[-1]
    return path


class LatencyProxy:
    """An aiohttp loopback server that delays, faults and forwards requests to `upstream`.

    Attributes:
        delay: Seconds every request waits before it is answered or forwarded; may be changed
            while the proxy runs.
        requests: Requests received, by operation.
        injected: Faults answered, by operation.
        max_in_flight: The most requests being handled at once.
        max_in_flight_by_op: The same, per operation.
    """

    def __init__(
        self, *, upstream: str, delay: float = DEFAULT_DELAY_SECONDS, port: int = 0
    ) -> None:
        """Configure the proxy; it listens from `__aenter__` on.

        Args:
            upstream: Base URL requests are forwarded to, e.g. moto's `http://127.0.0.1:5000`.
            delay: Seconds added to every request.
            port: Loopback port to listen on; 0 picks a free one.
        """
        self.upstream = upstream.rstrip("/")
        self.delay = delay
        self.port = port
        self.requests: collections.Counter[str] = collections.Counter()
        #: Requests received, by the access key id their SigV4 signature names.
        self.access_keys: collections.Counter[str] = collections.Counter()
        self.injected: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._in_flight_by_op: collections.Counter[str] = collections.Counter()
        self.max_in_flight_by_op: collections.Counter[str] = collections.Counter()
        self._faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """Return the proxy's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def inject(
        self,
        *,
        status: int | None = 429,
        code: str = "ThrottlingException",
        count: int | None = 1,
        operation: str | None = None,
        delay: float = 0.0,
        message: str = "injected by latency_proxy",
    ) -> None:
        """Answer the next `count` matching requests with an AWS-style error.

        Args:
            status: HTTP status (429 throttles, 5xx fails); None only delays and forwards.
            code: The AWS error code clients see.
            count: How many requests to fault; None for every one from now on.
            operation: Only requests for this operation; None for all.
            delay: Extra seconds those requests wait.
            message: The error's message text (a hostile server may echo anything there).
        """
        self._faults.append(Fault(status, code, operation, count, delay, message))

    def reset(self, *, count: int | None = 1, operation: str | None = None) -> None:
        """Drop the connection of the next `count` matching requests without answering.

        Args:
            count: How many requests to drop; None for every one from now on.
            operation: Only requests for this operation; None for all.
        """
        self._faults.append(Fault(None, "", operation, count, reset=True))

    def clear_faults(self) -> None:
        """Forget every pending fault: from now on requests are only delayed and forwarded."""
        self._faults.clear()

    def refuse(self, operation: str, *, code: str = "AccessDeniedException") -> None:
        """Refuse every request for the operation with HTTP 400 and the code, for good."""
        self.inject(status=400, code=code, count=None, operation=operation)

    def reset_counts(self) -> None:
        """Zero the counters, keeping the faults still pending."""
        self.requests.clear()
        self.injected.clear()
        self.max_in_flight = self.in_flight
        self.max_in_flight_by_op = collections.Counter(+self._in_flight_by_op)

    async def __aenter__(self) -> Self:
        """Start listening on loopback."""
        # No pool limit: the proxy must never be the bottleneck it is measuring.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        )
        # Function packages (S3 PutObject, up to Lambda's 250 MiB) pass through too; aiohttp's
        # default would refuse bodies over 1 MiB.
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Cancel a handler when its client goes away (a fetch hit its deadline), and don't wait
        # long for stragglers on shutdown.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server  # noqa: SLF001 - the only way to learn the port picked for 0
        if isinstance(server, asyncio.Server) and server.sockets:
            self.port = int(server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop listening and close the upstream connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _take_fault(self, operation: str) -> Fault | None:
        """Return the first pending fault for the operation and use one of its requests up."""
        for fault in self._faults:
            if fault.matches(operation):
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Delay, then fault or forward one request."""
        operation = operation_of(request.headers.get("X-Amz-Target"), request.path)
        body = await request.read()
        self.requests[operation] += 1
        credential = request.headers.get("Authorization", "").partition("Credential=")[2]
        self.access_keys[credential.partition("/")[0]] += 1
        self.in_flight += 1
        self._in_flight_by_op[operation] += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.max_in_flight_by_op[operation] = max(
            self.max_in_flight_by_op[operation], self._in_flight_by_op[operation]
        )
        try:
            fault = self._take_fault(operation)
            await asyncio.sleep(self.delay + (fault.delay if fault else 0.0))
            if fault is not None and fault.reset:
                self.injected[operation] += 1
                if request.transport is not None:
                    request.transport.abort()
                # Nothing reaches the client: the connection is already gone.
                return web.Response(status=500)
            if fault is not None and fault.status is not None:
                self.injected[operation] += 1
                return _error_response(fault.status, fault.code, fault.message)
            return await self._forward(request, body)
        finally:
            self.in_flight -= 1
            self._in_flight_by_op[operation] -= 1

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        """Send the request on to the upstream and relay its answer."""
        if self._session is None:
            raise RuntimeError("the proxy is not running")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as upstream:
            payload = await upstream.read()
            relayed = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            return web.Response(status=upstream.status, body=payload, headers=relayed)


def _error_response(status: int, code: str, message: str) -> web.Response:
    """Build an error as the AWS JSON protocol sends it, which botocore parses by code."""
    body = json.dumps({"__type": code, "message": message})
    return web.Response(
        status=status,
        body=body.encode(),
        headers={"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": code},
    )


async def _serve(upstream: str, delay: float, port: int) -> None:
    """Run the proxy until cancelled, printing its URL."""
    async with LatencyProxy(upstream=upstream, delay=delay, port=port) as proxy:
        print(proxy.url, flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()


def main() -> None:
    """Run the proxy from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--upstream", required=True, help="URL to forward to, e.g. moto's")
    parser.add_argument("--delay-ms", type=float, default=DEFAULT_DELAY_SECONDS * 1000)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.upstream, args.delay_ms / 1000, args.port))


if __name__ == "__main__":
    main()
