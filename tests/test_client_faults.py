"""The client against the real local emulator over HTTP, with injected faults.

Every wait the client makes (backoff, rate limit) goes through a recording fake sleep, so
these tests prove the delays without spending them; only the emulator's own command
durations and latency faults take real (sub-second) time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from reconciler.ailake.client import (
    AiLakeClient,
    ClientSettings,
    Operation,
    RequestRecord,
    ServiceInfo,
)
from reconciler.ailake.emulator import EmulatorConfig, start_background
from reconciler.errors import OutcomeUnknownError, PermanentError, TemporaryError

CONFIG: dict[str, Any] = {
    "services": [
        {
            "id": "svc-1",
            "name": "alpha",
            "status": {"ready": True},
            "commands": {
                "ok": {"duration": "200ms"},
                "bad": {"duration": "0s", "fail": True},
            },
        },
        {"id": "svc-2", "name": "beta", "status": {"ready": False}, "commands": {}},
    ],
    "dedup": True,
    "token": None,
}


class FakeSleep:
    """Records delays instead of waiting; runs an optional hook on each call."""

    def __init__(self, hook: Callable[[float], Awaitable[None]] | None = None) -> None:
        self.delays: list[float] = []
        self.hook = hook

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.hook is not None:
            await self.hook(delay)


@pytest.fixture
def emulator() -> Iterator[Any]:
    with start_background(EmulatorConfig.from_dict(CONFIG), host="127.0.0.1", port=0) as emu:
        yield emu


@pytest.fixture
async def admin(emulator: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.url, timeout=10.0) as http:
        yield http


async def set_faults(admin: httpx.AsyncClient, **faults: Any) -> None:
    response = await admin.put("/_emulator/faults", json=faults)
    assert response.status_code < 300, response.text


async def clear_faults(admin: httpx.AsyncClient) -> None:
    await set_faults(
        admin, errorRate=0.0, throttleRate=0.0, dropRate=0.0, latency="0s", retryAfter=1
    )


async def executions(admin: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await admin.get("/_emulator/executions")
    assert response.status_code == 200
    data = response.json()
    assert isinstance(data, list)
    return data


def client_for(
    emulator: Any,
    *,
    sleep: FakeSleep | None = None,
    records: list[RequestRecord] | None = None,
    **settings: Any,
) -> AiLakeClient:
    return AiLakeClient(
        ClientSettings(base_url=emulator.url, **settings),
        sleep=sleep or FakeSleep(),
        observer=records.append if records is not None else None,
    )


async def wait_terminal(client: AiLakeClient, operation_id: str) -> Operation:
    deadline = time.monotonic() + 10
    while True:
        op = await client.get_operation(operation_id)
        assert op is not None
        if op.terminal:
            return op
        assert time.monotonic() < deadline, f"operation still {op.status}"
        await asyncio.sleep(0.05)


def new_id() -> str:
    return str(uuid.uuid4())


async def test_list_services_status_run_and_poll_to_succeeded(emulator: Any) -> None:
    async with client_for(emulator) as client:
        services = await client.list_services(page_size=1)
        assert services == [
            ServiceInfo("svc-1", "alpha", "svc-1"),
            ServiceInfo("svc-2", "beta", "svc-2"),
        ]
        assert await client.service_status("svc-1") == {"ready": True}
        op_id = new_id()
        accepted = await client.run_command(
            "svc-1", "ok", operation_id=op_id, payload={"n": 1}, context={"by": "test"}
        )
        assert accepted.operation_id == op_id
        assert accepted.location.endswith(f"/api/v1/ailake/operations/{op_id}")
        first = await client.get_operation(op_id)
        assert first is not None and first.status == "pending" and not first.terminal
        op = await wait_terminal(client, op_id)
    assert op.status == "succeeded"
    assert op.kind == "run-service-command"
    assert op.error is None


async def test_run_and_poll_to_failed(emulator: Any) -> None:
    async with client_for(emulator) as client:
        op_id = new_id()
        await client.run_command("svc-1", "bad", operation_id=op_id, payload=None, context=None)
        op = await wait_terminal(client, op_id)
    assert op.status == "failed"
    assert op.error is not None and op.error.title


async def test_unknown_operation_is_none(emulator: Any) -> None:
    async with client_for(emulator) as client:
        assert await client.get_operation(new_id()) is None


async def test_unknown_command_is_permanent(emulator: Any) -> None:
    async with client_for(emulator) as client:
        with pytest.raises(PermanentError) as info:
            await client.run_command(
                "svc-1", "nope", operation_id=new_id(), payload=None, context=None
            )
    assert info.value.status == 404


async def test_503_fault_on_get_is_retried_then_temporary(
    emulator: Any, admin: httpx.AsyncClient
) -> None:
    await set_faults(admin, errorRate=1.0)
    records: list[RequestRecord] = []
    sleep = FakeSleep()
    async with client_for(emulator, sleep=sleep, records=records, get_retries=2) as client:
        with pytest.raises(TemporaryError) as info:
            await client.list_services()
    assert info.value.status == 503
    assert [r.code for r in records] == ["503", "503", "503"]
    assert len(sleep.delays) == 2


async def test_429_retry_after_is_honoured_on_get(emulator: Any, admin: httpx.AsyncClient) -> None:
    await set_faults(admin, throttleRate=1.0, retryAfter=2)

    async def lift(_: float) -> None:
        await clear_faults(admin)

    sleep = FakeSleep(lift)
    async with client_for(emulator, sleep=sleep) as client:
        assert await client.service_status("svc-1") == {"ready": True}
    assert len(sleep.delays) == 1
    assert sleep.delays[0] >= 2


async def test_429_on_run_is_retried_and_runs_once(emulator: Any, admin: httpx.AsyncClient) -> None:
    await set_faults(admin, throttleRate=1.0, retryAfter=3)

    async def lift(_: float) -> None:
        await clear_faults(admin)

    sleep = FakeSleep(lift)
    op_id = new_id()
    async with client_for(emulator, sleep=sleep) as client:
        accepted = await client.run_command(
            "svc-1", "ok", operation_id=op_id, payload=None, context=None
        )
    assert accepted.operation_id == op_id
    assert sleep.delays and sleep.delays[0] >= 3
    assert [e["operationId"] for e in await executions(admin)] == [op_id]


async def test_latency_fault_within_timeout_still_works(
    emulator: Any, admin: httpx.AsyncClient
) -> None:
    await set_faults(admin, latency="300ms")
    records: list[RequestRecord] = []
    async with client_for(emulator, records=records, timeout=5.0) as client:
        op_id = new_id()
        await client.run_command("svc-1", "ok", operation_id=op_id, payload=None, context=None)
        assert await client.get_operation(op_id) is not None
    assert [r.code for r in records] == ["202", "200"]
    assert all(r.duration >= 0.25 for r in records)


async def test_read_timeout_below_latency_on_run_is_outcome_unknown(
    emulator: Any, admin: httpx.AsyncClient
) -> None:
    await set_faults(admin, latency="1s")
    op_id = new_id()
    records: list[RequestRecord] = []
    async with client_for(emulator, records=records, timeout=0.3) as client:
        with pytest.raises(OutcomeUnknownError) as info:
            await client.run_command("svc-1", "ok", operation_id=op_id, payload=None, context=None)
    assert info.value.operation_id == op_id
    assert [r.code for r in records] == ["error"]


async def test_dropped_run_is_outcome_unknown_but_started(
    emulator: Any, admin: httpx.AsyncClient
) -> None:
    await set_faults(admin, dropRate=1.0)
    op_id = new_id()
    records: list[RequestRecord] = []
    async with client_for(emulator, records=records) as client:
        with pytest.raises(OutcomeUnknownError) as info:
            await client.run_command(
                "svc-1", "ok", operation_id=op_id, payload={"a": 1}, context=None
            )
        assert info.value.operation_id == op_id
        assert len(records) == 1  # never re-POSTed
        started = await executions(admin)
        assert [e["operationId"] for e in started] == [op_id]
        # What the engine does next: look it up instead of re-POSTing.
        await clear_faults(admin)
        op = await client.get_operation(op_id)
    assert op is not None and op.id == op_id


async def test_dropped_get_is_retried_then_temporary(
    emulator: Any, admin: httpx.AsyncClient
) -> None:
    await set_faults(admin, dropRate=1.0)
    records: list[RequestRecord] = []
    async with client_for(emulator, records=records, get_retries=2) as client:
        with pytest.raises(TemporaryError):
            await client.get_operation(new_id())
    assert [r.code for r in records] == ["error", "error", "error"]


def test_wrong_token_is_permanent_401_without_the_token() -> None:
    config = EmulatorConfig.from_dict({**CONFIG, "token": "right-token"})
    wrong = "tok-WRONG-456"

    async def scenario(url: str) -> None:
        settings = ClientSettings(base_url=url, token=wrong)
        async with AiLakeClient(settings, sleep=FakeSleep()) as client:
            with pytest.raises(PermanentError) as info:
                await client.list_services()
        error = info.value
        assert error.status == 401
        assert wrong not in str(error)
        assert wrong not in repr(error.args)
        assert wrong not in (error.body or "")
        settings = ClientSettings(base_url=url, token="right-token")
        async with AiLakeClient(settings) as client:
            assert len(await client.list_services()) == 2

    with start_background(config, host="127.0.0.1", port=0) as emu:
        asyncio.run(scenario(emu.url))
