# SPDX-License-Identifier: Apache-2.0
"""bench/latency_proxy.py served from a background thread, for tests that drive a core process."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from bench.latency_proxy import LatencyProxy

_T = TypeVar("_T")


class ProxyThread:
    """A `LatencyProxy` in front of moto, run on an event loop of its own thread.

    The core under test is a subprocess and the test code is synchronous, so the proxy gets its
    own loop; every change to it goes through `do`, which runs on that loop.
    """

    def __init__(self, *, upstream: str) -> None:
        self.proxy = LatencyProxy(upstream=upstream, delay=0.0)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="latency-proxy", daemon=True
        )
        self._thread.start()
        self.running = False

    @property
    def url(self) -> str:
        """The proxy's base URL (stable across `stop` and `start`)."""
        return self.proxy.url

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=15)

    def do(self, fn: Callable[[LatencyProxy], _T]) -> _T:
        """Run `fn(proxy)` on the proxy's loop and return its result."""

        async def call() -> _T:
            return fn(self.proxy)

        return self._run(call())

    def start(self) -> None:
        """Listen (again, on the same port after a `stop`)."""
        self._run(self.proxy.__aenter__())
        self.running = True

    def stop(self) -> None:
        """Stop listening: the port then refuses connections, like an endpoint that is down."""
        if self.running:
            self._run(self.proxy.__aexit__(None, None, None))
            self.running = False

    def requests(self) -> dict[str, int]:
        """Requests received so far, by operation."""
        return self.do(lambda p: dict(p.requests))

    def close(self) -> None:
        """Stop the proxy and its thread."""
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@contextlib.contextmanager
def proxy_thread(upstream: str) -> Iterator[ProxyThread]:
    """A started `ProxyThread` in front of `upstream`, closed on the way out."""
    proxy = ProxyThread(upstream=upstream)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.close()
