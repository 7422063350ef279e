"""Fixtures of the emulator tests: the spec validator, a fake clock, in-process clients and
a real emulator on a free port. Helpers live in ``emulator_support`` (a unique module name,
so nothing collides with other test folders' conftest modules).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from emulator_support import (
    ClientFactory,
    FakeClock,
    SpecValidator,
    base_config_dict,
    make_config,
)

from reconciler.ailake.emulator import EmulatorConfig, RunningEmulator, create_app, start_background
from reconciler.ailake.emulator.state import EmulatorState


@pytest.fixture(scope="session")
def spec_validator() -> SpecValidator:
    return SpecValidator()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client_factory(clock: FakeClock) -> AsyncIterator[ClientFactory]:
    """Builds in-process clients over ``create_app(config)`` with the fake clock installed."""
    clients: list[httpx.AsyncClient] = []

    def factory(
        config: EmulatorConfig | None = None, token: str | None = None
    ) -> httpx.AsyncClient:
        app = create_app(config or make_config(), token=token)
        state: EmulatorState = app.state.emulator
        state.clock = clock
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://emulator.test"
        )
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()


@pytest.fixture
async def client(client_factory: ClientFactory) -> httpx.AsyncClient:
    return client_factory()


@pytest.fixture
def running() -> Iterator[RunningEmulator]:
    """A real emulator on a free loopback port, with fast command durations."""
    data = base_config_dict()
    data["services"][0]["commands"]["reindex"] = {"duration": "300ms"}
    data["services"][0]["commands"]["broken"] = {"duration": "300ms", "fail": True}
    with start_background(EmulatorConfig.from_dict(data, source="test.yaml")) as emulator:
        yield emulator
