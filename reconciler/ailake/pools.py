"""Connection pools in shards: httpcore's pool looks at every connection it holds for every
request (an expiry check with a system call each), so one pool of 32 connections spends
more CPU on bookkeeping than on HTTP. A few small pools, each request sent through the
least busy, keep that cost flat (about 2.5 times the requests per second at 16 at once
against the emulator: ``bench/bench_pools.py``)."""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator

import certifi
import httpx

__all__ = ["MAX_SHARDS", "ShardedTransport"]

#: pools at most; each holds ``ceil(max_connections / shards)`` connections
MAX_SHARDS = 8


class _Shard:
    def __init__(self, transport: httpx.AsyncHTTPTransport) -> None:
        self.transport = transport
        #: requests sent through this pool whose answer is not closed yet
        self.busy = 0


class _Released(httpx.AsyncByteStream):
    """An answer's body that gives its pool's slot back once closed (exactly once)."""

    def __init__(self, stream: httpx.AsyncByteStream, shard: _Shard) -> None:
        self._stream = stream
        self._shard: _Shard | None = shard

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._shard is not None:
                self._shard.busy -= 1
                self._shard = None


class ShardedTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over ``shards`` connection pools sharing ``max_connections``."""

    def __init__(self, *, max_connections: int, verify: ssl.SSLContext | bool,
                 shards: int = MAX_SHARDS) -> None:
        if verify is True:  # one context for every pool (each would load the CA bundle)
            verify = ssl.create_default_context(cafile=certifi.where())
        count = max(1, min(shards, max_connections))
        each = math.ceil(max_connections / count)
        limits = httpx.Limits(max_connections=each, max_keepalive_connections=each)
        self._shards = [_Shard(httpx.AsyncHTTPTransport(verify=verify, limits=limits))
                        for _ in range(count)]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        shard = min(self._shards, key=lambda s: s.busy)
        shard.busy += 1
        try:
            response = await shard.transport.handle_async_request(request)
        except BaseException:
            shard.busy -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Released(response.stream, shard)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.transport.aclose()
