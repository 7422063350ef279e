"""The sharded connection pools behind the AI Lake client, against the emulator: requests go
to the least busy pool, every answer gives its slot back once closed (read, failed or not),
and the pools share the connection limit."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import pytest
from integration_support import running_emulator

from reconciler.ailake.client import AiLakeClient, ClientSettings
from reconciler.ailake.emulator import RunningEmulator
from reconciler.ailake.pools import ShardedTransport


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with running_emulator() as emu:
        yield emu


def busy(transport: ShardedTransport) -> list[int]:
    return [shard.busy for shard in transport._shards]


def test_the_pools_share_the_connection_limit() -> None:
    transport = ShardedTransport(max_connections=32, verify=False, shards=8)
    assert len(transport._shards) == 8
    assert all(s.transport._pool._max_connections == 4 for s in transport._shards)
    assert len(ShardedTransport(max_connections=3, verify=False)._shards) == 3


async def test_requests_at_once_are_spread_over_the_pools(emulator: RunningEmulator) -> None:
    transport = ShardedTransport(max_connections=8, verify=False, shards=4)
    peak: list[int] = []
    async with httpx.AsyncClient(base_url=emulator.url, transport=transport) as http:
        async def one() -> None:
            async with http.stream("GET", "/api/v1/ailake/services") as response:
                peak.append(max(busy(transport)))
                await response.aread()

        await asyncio.gather(*(one() for _ in range(8)))
        assert max(peak) <= 2  # 8 at once over 4 pools: never 3 on one
        assert busy(transport) == [0, 0, 0, 0]


async def test_an_answer_not_read_gives_its_slot_back_once_closed(
        emulator: RunningEmulator) -> None:
    transport = ShardedTransport(max_connections=4, verify=False, shards=2)
    async with httpx.AsyncClient(base_url=emulator.url, transport=transport) as http:
        response = await http.send(http.build_request("GET", "/api/v1/ailake/services"),
                                   stream=True)
        assert sum(busy(transport)) == 1
        await response.aclose()
        await response.aclose()  # twice: counted once
        assert busy(transport) == [0, 0]


async def test_a_request_that_fails_gives_its_slot_back() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    transport = ShardedTransport(max_connections=4, verify=False, shards=2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                 transport=transport) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/")
    assert busy(transport) == [0, 0]


async def test_the_client_sends_through_the_pools(emulator: RunningEmulator) -> None:
    async with AiLakeClient(ClientSettings(base_url=emulator.url)) as client:
        assert isinstance(client._http._transport, ShardedTransport)
        services = await asyncio.gather(*(client.list_services() for _ in range(10)))
        assert all(len(s) == 2 for s in services)
        assert busy(client._http._transport) == [0] * len(client._http._transport._shards)
