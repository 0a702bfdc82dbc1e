# SPDX-License-Identifier: Apache-2.0
"""Read function packages from S3 with aiobotocore, bounded in size."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self

from aiobotocore.session import AioSession, get_session

from edge.errors import CodeFetchError
from edge.workers.code import MAX_ZIP_BYTES


class S3CodeReader:
    """An async context manager owning one S3 client; call it with (bucket, key).

    The client is created by the first call: its service model holds about 7 MB, which a core
    whose deployments bring no code from S3 never needs.
    """

    def __init__(
        self, *, region: str, endpoint_url: str | None = None, session: AioSession | None = None
    ) -> None:
        self._session = session or get_session()
        self._region = region
        self._endpoint_url = endpoint_url
        self._client: Any = None
        self._context: Any = None
        self._creating = asyncio.Lock()

    async def __aenter__(self) -> Self:
        """Nothing yet: the first call creates the client."""
        return self

    async def _s3(self) -> Any:  # noqa: ANN401 - aiobotocore's clients are untyped
        async with self._creating:
            if self._client is None:
                context = self._session.create_client(
                    "s3", region_name=self._region, endpoint_url=self._endpoint_url
                )
                self._client = await context.__aenter__()
                self._context = context
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the client."""
        if self._context is not None:
            await self._context.__aexit__(exc_type, exc, tb)
        self._client = self._context = None

    async def __call__(self, bucket: str, key: str) -> bytes:
        """Return the object's bytes, refusing anything larger than a Lambda package may be."""
        response = await (await self._s3()).get_object(Bucket=bucket, Key=key)
        length = int(response.get("ContentLength") or 0)
        if length > MAX_ZIP_BYTES:
            raise CodeFetchError(
                f"s3://{bucket}/{key}", f"the object is larger than {MAX_ZIP_BYTES} bytes"
            )
        async with response["Body"] as body:
            data: bytes = await body.read()
        return data
