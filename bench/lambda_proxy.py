# SPDX-License-Identifier: Apache-2.0
"""A proxy in front of moto that serves Lambda packages from loopback.

moto's Lambda `GetFunction` answers a `Code.Location` on an AWS host
(`awslambda-REGION-tasks.s3.REGION.amazonaws.com`) that can't be reached here. This proxy
forwards everything to moto, as `LatencyProxy` does, and rewrites that one field of each
GetFunction answer to a URL of its own, where it serves the package the test registered under
the function's CodeSha256.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from bench.latency_proxy import LatencyProxy
from bench.proxy_thread import ProxyThread

_FUNCTIONS = "/2015-03-31/functions/"
_CODE = "/lambda-code/"


class LambdaCodeProxy(LatencyProxy):
    """`LatencyProxy` with GetFunction's Code.Location pointing at packages it serves."""

    def __init__(self, *, upstream: str) -> None:
        super().__init__(upstream=upstream, delay=0.0)
        #: Packages by hex SHA-256 of what Lambda holds; the bytes served for it.
        self.packages: dict[str, bytes] = {}
        #: How many times a package was served.
        self.downloads = 0

    def add(self, package: bytes, *, served: bytes | None = None) -> None:
        """Serve `package` (or other bytes, `served`, to fake a corrupted download)."""
        self.packages[hashlib.sha256(package).hexdigest()] = package if served is None else served

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith(_CODE):
            body = self.packages.get(request.path.removeprefix(_CODE))
            if body is None:
                return web.Response(status=404)
            self.downloads += 1
            return web.Response(body=body, content_type="application/zip")
        return await super()._handle(request)

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        response = await super()._forward(request, body)
        if request.method != "GET" or not request.path.startswith(_FUNCTIONS):
            return response
        if request.path.count("/") != 3 or response.status != 200:
            return response
        if not isinstance(response.body, bytes):  # _forward always answers with bytes
            raise TypeError("the upstream answer is not bytes")
        answer = json.loads(response.body)
        if "Location" in answer.get("Code", {}):
            digest = base64.b64decode(answer["Configuration"]["CodeSha256"]).hex()
            answer["Code"]["Location"] = f"{self.url}{_CODE}{digest}"
        return web.Response(
            status=200, body=json.dumps(answer).encode(), content_type="application/json"
        )


@contextmanager
def lambda_proxy(upstream: str) -> Iterator[LambdaCodeProxy]:
    """A started `LambdaCodeProxy`, run on a thread of its own until the block ends.

    `add` may be called from the test's thread: it only fills a dict the proxy reads.
    """
    thread = ProxyThread(upstream=upstream)
    proxy = LambdaCodeProxy(upstream=upstream)
    thread.proxy = proxy
    try:
        thread.start()
        yield proxy
    finally:
        thread.close()
