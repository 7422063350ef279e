"""Fault injection over a real socket: 503, 429, dropped connections, latency.

These run against ``start_background`` on a free loopback port because a dropped
connection only means something on TCP: the client must see the connection die (not a
500), while ``/_emulator/executions`` proves the run really started server-side.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from emulator_support import SERVICE_ID, SPEC_SERVICES, SpecValidator, assert_problem, make_config

from reconciler.ailake.emulator import RunningEmulator, start_background

RUN_URL = f"/api/v1/ailake/services/{SERVICE_ID}/commands/reindex/run"


@pytest.fixture
def http(running: RunningEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url, timeout=5) as client:
        yield client


def set_faults(http: httpx.Client, **faults: Any) -> dict[str, Any]:
    response = http.put("/_emulator/faults", json=faults)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def executions(http: httpx.Client) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = http.get("/_emulator/executions").json()
    return result


def test_error_rate_one_answers_503_and_executes_nothing(http: httpx.Client) -> None:
    set_faults(http, errorRate=1)
    assert_problem(http.post(RUN_URL, json={}), 503)
    assert_problem(http.get("/api/v1/ailake/services"), 503)
    assert executions(http) == []


def test_throttle_rate_one_answers_429_with_retry_after_and_executes_nothing(
    http: httpx.Client,
) -> None:
    set_faults(http, throttleRate=1, retryAfter=3)
    response = http.post(RUN_URL, json={}, headers={"operation-id": str(uuid.uuid4())})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert set(response.json()) == {"error", "message"}
    assert executions(http) == []


def test_drop_rate_one_drops_the_connection_after_the_run_started(http: httpx.Client) -> None:
    set_faults(http, dropRate=1)
    operation_id = str(uuid.uuid4())
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        http.post(RUN_URL, json={"payload": {"a": 1}}, headers={"operation-id": operation_id})
    [execution] = executions(http)
    assert execution["operationId"] == operation_id
    assert execution["payload"] == {"a": 1}
    set_faults(http, dropRate=0)
    operation = http.get(f"/api/v1/ailake/operations/{operation_id}")
    assert operation.status_code == 200
    assert operation.json()["id"] == operation_id


def test_drop_rate_one_drops_reads_too_and_the_server_keeps_serving(
    http: httpx.Client, spec_validator: SpecValidator
) -> None:
    set_faults(http, dropRate=1)
    for _ in range(3):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            http.get("/api/v1/ailake/services")
    set_faults(http, dropRate=0)
    spec_validator.body(SPEC_SERVICES, "get", http.get("/api/v1/ailake/services"))


def test_latency_delays_api_answers(http: httpx.Client) -> None:
    set_faults(http, latency="300ms")
    started = time.monotonic()
    assert http.get("/api/v1/ailake/services").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_faults_never_hit_admin_endpoints(http: httpx.Client) -> None:
    set_faults(http, errorRate=1, throttleRate=1, dropRate=1, latency="500ms")
    started = time.monotonic()
    assert http.get("/_emulator/operations").status_code == 200
    assert http.get("/_emulator/executions").status_code == 200
    assert http.get("/_emulator/faults").json()["errorRate"] == 1
    assert http.post("/_emulator/reset").status_code == 204
    assert time.monotonic() - started < 0.5


def test_put_faults_changes_them_at_run_time(http: httpx.Client) -> None:
    assert http.get("/api/v1/ailake/services").status_code == 200
    assert set_faults(http, errorRate=1)["errorRate"] == 1
    assert_problem(http.get("/api/v1/ailake/services"), 503)
    set_faults(http, errorRate=0)
    assert http.get("/api/v1/ailake/services").status_code == 200


def test_faults_from_config_apply_from_the_start() -> None:
    config = make_config(faults={"throttleRate": 1, "retryAfter": 2})
    with (
        start_background(config) as emulator,
        httpx.Client(base_url=emulator.url, timeout=5) as http,
    ):
        response = http.get("/api/v1/ailake/services")
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "2"


def test_start_background_picks_a_free_port_and_stops(running: RunningEmulator) -> None:
    assert running.port > 0
    assert running.url == f"http://127.0.0.1:{running.port}"
    with httpx.Client(base_url=running.url, timeout=5) as http:
        assert http.get("/_emulator/operations").status_code == 200
    running.stop()
    with pytest.raises(httpx.ConnectError), httpx.Client(base_url=running.url, timeout=2) as http:
        http.get("/_emulator/operations")
