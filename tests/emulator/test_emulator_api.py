"""Behaviour and policy tests of the emulator's four AI Lake paths, in process.

One behaviour per test, each named for the policy it pins down (spec/NOTES.md, DESIGN
section 8). Every 200 body and 202 header set is validated against the OpenAPI document.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from emulator_support import (
    OTHER_SERVICE_ID,
    SERVICE_ID,
    SPEC_OPERATION,
    SPEC_SERVICES,
    SPEC_STATUS,
    ClientFactory,
    FakeClock,
    SpecValidator,
    assert_problem,
    base_config_dict,
    make_config,
)

from reconciler.ailake.emulator import EmulatorConfig
from reconciler.ailake.emulator.app import DroppedConnection

RUN = "/api/v1/ailake/services/{service}/commands/{command}/run"


def run_url(command: str, service: str = SERVICE_ID) -> str:
    return RUN.format(service=service, command=command)


async def run(
    client: httpx.AsyncClient,
    command: str,
    *,
    service: str = SERVICE_ID,
    operation_id: str | None = None,
    body: object | None = None,
) -> httpx.Response:
    headers = {"operation-id": operation_id} if operation_id else {}
    return await client.post(
        run_url(command, service), json=body if body is not None else {}, headers=headers
    )


async def get_op(client: httpx.AsyncClient, spec: SpecValidator, op_id: str) -> dict[str, object]:
    response = await client.get(f"/api/v1/ailake/operations/{op_id}")
    assert response.status_code == 200, response.text
    body: dict[str, object] = spec.body(SPEC_OPERATION, "get", response)
    return body


async def executions(client: httpx.AsyncClient) -> list[dict[str, object]]:
    response = await client.get("/_emulator/executions")
    assert response.status_code == 200
    result: list[dict[str, object]] = response.json()
    return result


# --- list services ----------------------------------------------------------------------


async def test_list_services_returns_jsonapi_items_with_service_id(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    body = spec_validator.body(SPEC_SERVICES, "get", await client.get("/api/v1/ailake/services"))
    assert body["data"] == [
        {
            "id": SERVICE_ID,
            "type": "aiLakeService",
            "attributes": {"name": "vectors", "serviceId": SERVICE_ID},
        },
        {
            "id": OTHER_SERVICE_ID,
            "type": "aiLakeService",
            "attributes": {"name": "db", "serviceId": OTHER_SERVICE_ID},
        },
    ]
    assert body["meta"] == {"page": {"number": 0, "size": 50}}
    assert body["links"]["self"].endswith("/api/v1/ailake/services")


async def test_list_services_pages_are_zero_based(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    first = spec_validator.body(
        SPEC_SERVICES, "get", await client.get("/api/v1/ailake/services?page=0&size=1")
    )
    second = spec_validator.body(
        SPEC_SERVICES, "get", await client.get("/api/v1/ailake/services?page=1&size=1")
    )
    beyond = spec_validator.body(
        SPEC_SERVICES, "get", await client.get("/api/v1/ailake/services?page=2&size=1")
    )
    assert [item["id"] for item in first["data"]] == [SERVICE_ID]
    assert [item["id"] for item in second["data"]] == [OTHER_SERVICE_ID]
    assert beyond["data"] == []
    assert second["meta"]["page"] == {"number": 1, "size": 1}
    assert "page=1" in second["links"]["self"]


async def test_list_services_meta_include_page_adds_totals(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    body = spec_validator.body(
        SPEC_SERVICES, "get", await client.get("/api/v1/ailake/services?size=1&metaInclude=page")
    )
    assert body["meta"]["page"] == {"number": 0, "size": 1, "totalElements": 2, "totalPages": 2}


@pytest.mark.parametrize("query", ["size=0", "size=501", "page=-1", "page=x", "size=1.5"])
async def test_list_services_rejects_out_of_range_paging_with_400(
    client: httpx.AsyncClient, query: str
) -> None:
    assert_problem(await client.get(f"/api/v1/ailake/services?{query}"), 400)


async def test_list_services_accepts_size_bounds(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    for size in (1, 500):
        response = await client.get(f"/api/v1/ailake/services?size={size}")
        assert spec_validator.body(SPEC_SERVICES, "get", response)["meta"]["page"]["size"] == size


# --- service status ---------------------------------------------------------------------


async def test_service_status_serves_configured_status_object(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    response = await client.get(f"/api/v1/ailake/services/{SERVICE_ID}/status")
    body = spec_validator.body(SPEC_STATUS, "get", response)
    assert body == {"status": {"ready": True, "commands": ["reindex", "broken", "flaky", "hang"]}}


async def test_service_status_is_null_when_not_configured(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    response = await client.get(f"/api/v1/ailake/services/{OTHER_SERVICE_ID}/status")
    assert spec_validator.body(SPEC_STATUS, "get", response) == {"status": None}


async def test_service_status_of_unknown_service_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/api/v1/ailake/services/nope/status"), 404)


# --- run and operations -----------------------------------------------------------------


async def test_run_answers_202_with_empty_body_and_operation_headers(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    op_id = str(uuid.uuid4())
    response = await run(client, "reindex", operation_id=op_id)
    assert spec_validator.run_accepted(response) == op_id


async def test_run_without_operation_id_header_gets_a_uuid4(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    op_id = spec_validator.run_accepted(await run(client, "reindex"))
    assert uuid.UUID(op_id).version == 4


async def test_operation_is_readable_immediately_and_pending(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    op_id = spec_validator.run_accepted(await run(client, "reindex"))
    assert await get_op(client, spec_validator, op_id) == {
        "id": op_id,
        "kind": "run-service-command",
        "status": "pending",
    }


async def test_operation_succeeds_with_result_after_duration(
    client: httpx.AsyncClient, spec_validator: SpecValidator, clock: FakeClock
) -> None:
    op_id = spec_validator.run_accepted(await run(client, "reindex"))
    clock.advance(1.9)
    assert (await get_op(client, spec_validator, op_id))["status"] == "pending"
    clock.advance(0.2)
    operation = await get_op(client, spec_validator, op_id)
    assert operation["status"] == "succeeded"
    assert isinstance(operation["result"], dict)
    assert "error" not in operation


async def test_command_with_fail_true_fails_with_error_object(
    client: httpx.AsyncClient, spec_validator: SpecValidator, clock: FakeClock
) -> None:
    op_id = spec_validator.run_accepted(await run(client, "broken"))
    clock.advance(1.0)
    operation = await get_op(client, spec_validator, op_id)
    assert operation["status"] == "failed"
    error = operation["error"]
    assert isinstance(error, dict) and set(error) == {"title", "status", "detail"}
    assert isinstance(error["status"], int)
    assert "result" not in operation


async def test_fail_times_fails_first_executions_then_succeeds(
    client: httpx.AsyncClient, spec_validator: SpecValidator, clock: FakeClock
) -> None:
    ids = [spec_validator.run_accepted(await run(client, "flaky")) for _ in range(3)]
    clock.advance(1.0)
    statuses = [(await get_op(client, spec_validator, op_id))["status"] for op_id in ids]
    assert statuses == ["failed", "failed", "succeeded"]


async def test_duration_never_stays_pending_forever(
    client: httpx.AsyncClient, spec_validator: SpecValidator, clock: FakeClock
) -> None:
    op_id = spec_validator.run_accepted(await run(client, "hang"))
    clock.advance(10**9)
    assert (await get_op(client, spec_validator, op_id))["status"] == "pending"
    [execution] = await executions(client)
    assert execution["finishedAt"] is None and execution["status"] == "pending"


async def test_zero_duration_operation_is_succeeded_at_first_read(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    op_id = spec_validator.run_accepted(await run(client, "instant"))
    assert (await get_op(client, spec_validator, op_id))["status"] == "succeeded"


async def test_repeated_operation_id_with_same_request_is_deduplicated(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    op_id = str(uuid.uuid4())
    body = {"payload": {"index": "a"}, "context": {"who": "test"}}
    for _ in range(3):
        response = await run(client, "reindex", operation_id=op_id, body=body)
        assert spec_validator.run_accepted(response) == op_id
    assert len(await executions(client)) == 1
    [operation] = (await client.get("/_emulator/operations")).json()
    assert operation["posts"] == 3 and operation["id"] == op_id


async def test_repeated_operation_id_with_different_body_is_409(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    op_id = str(uuid.uuid4())
    spec_validator.run_accepted(await run(client, "reindex", operation_id=op_id, body={}))
    response = await run(client, "reindex", operation_id=op_id, body={"payload": {"x": 1}})
    assert_problem(response, 409)
    assert len(await executions(client)) == 1


async def test_repeated_operation_id_with_different_command_is_409(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    op_id = str(uuid.uuid4())
    spec_validator.run_accepted(await run(client, "reindex", operation_id=op_id))
    assert_problem(await run(client, "broken", operation_id=op_id), 409)


async def test_repeated_operation_id_with_different_service_is_409(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    op_id = str(uuid.uuid4())
    spec_validator.run_accepted(await run(client, "reindex", operation_id=op_id))
    assert_problem(await run(client, "reindex", operation_id=op_id, service=OTHER_SERVICE_ID), 409)


async def test_dedup_false_executes_a_repeated_operation_id_again(
    client_factory: ClientFactory, spec_validator: SpecValidator, clock: FakeClock
) -> None:
    client = client_factory(make_config(dedup=False))
    op_id = str(uuid.uuid4())
    spec_validator.run_accepted(await run(client, "reindex", operation_id=op_id))
    clock.advance(5)
    assert (await get_op(client, spec_validator, op_id))["status"] == "succeeded"
    spec_validator.run_accepted(await run(client, "reindex", operation_id=op_id))
    assert (await get_op(client, spec_validator, op_id))["status"] == "pending"  # restarted
    runs = await executions(client)
    assert [e["operationId"] for e in runs] == [op_id, op_id]
    [operation] = (await client.get("/_emulator/operations")).json()
    assert operation["posts"] == 2 and operation["executions"] == 2


async def test_unknown_operation_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"/api/v1/ailake/operations/{uuid.uuid4()}"), 404)


async def test_run_on_unknown_service_is_404_and_executes_nothing(
    client: httpx.AsyncClient,
) -> None:
    assert_problem(await run(client, "reindex", service="no-such-service"), 404)
    assert await executions(client) == []


async def test_run_of_unknown_command_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await run(client, "no-such-command"), 404)
    assert await executions(client) == []


async def test_payload_of_exactly_15000_compact_chars_is_accepted(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    payload = {"d": ""}
    payload["d"] = "x" * (15000 - len(json.dumps(payload, separators=(",", ":"))))
    assert len(json.dumps(payload, separators=(",", ":"))) == 15000
    spec_validator.run_accepted(await run(client, "reindex", body={"payload": payload}))


async def test_payload_over_15000_compact_chars_is_400(client: httpx.AsyncClient) -> None:
    payload = {"d": ""}
    payload["d"] = "x" * (15001 - len(json.dumps(payload, separators=(",", ":"))))
    assert_problem(await run(client, "reindex", body={"payload": payload}), 400)
    assert await executions(client) == []


async def test_malformed_json_body_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        run_url("reindex"), content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(response, 400)


async def test_missing_body_is_400(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post(run_url("reindex")), 400)


@pytest.mark.parametrize("body", [[], "text", 3, None])
async def test_non_object_body_is_400(client: httpx.AsyncClient, body: object) -> None:
    response = await client.post(run_url("reindex"), content=json.dumps(body).encode())
    assert_problem(response, 400)


@pytest.mark.parametrize("payload", [[1, 2], "text", 7, True])
async def test_non_object_payload_is_400(client: httpx.AsyncClient, payload: object) -> None:
    assert_problem(await run(client, "reindex", body={"payload": payload}), 400)


@pytest.mark.parametrize("context", [{"k": 1}, {"k": {"nested": "x"}}, {"k": True}, ["a"]])
async def test_non_string_context_value_is_400(client: httpx.AsyncClient, context: object) -> None:
    assert_problem(await run(client, "reindex", body={"context": context}), 400)


async def test_null_context_values_and_null_payload_are_accepted(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    body = {"context": {"a": "b", "c": None}, "payload": None}
    op_id = spec_validator.run_accepted(await run(client, "reindex", body=body))
    [execution] = await executions(client)
    assert execution["operationId"] == op_id
    assert execution["context"] == {"a": "b", "c": None} and execution["payload"] is None


async def test_unknown_path_under_api_is_404_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/api/v1/ailake/databases"), 404)


async def test_wrong_method_is_405_problem_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.delete("/api/v1/ailake/services")
    assert_problem(response, 405)
    assert "GET" in response.headers["allow"]


# --- auth -------------------------------------------------------------------------------


async def test_missing_bearer_token_is_401_when_token_configured(
    client_factory: ClientFactory,
) -> None:
    client = client_factory(make_config(token="s3cret"))
    assert_problem(await client.get("/api/v1/ailake/services"), 401)
    assert_problem(await run(client, "reindex"), 401)
    assert await executions(client) == []


async def test_wrong_bearer_token_is_401(client_factory: ClientFactory) -> None:
    client = client_factory(make_config(token="s3cret"))
    response = await client.get(
        "/api/v1/ailake/services", headers={"Authorization": "Bearer wrong"}
    )
    assert_problem(response, 401)


async def test_right_bearer_token_is_accepted(
    client_factory: ClientFactory, spec_validator: SpecValidator
) -> None:
    client = client_factory(make_config(token="s3cret"))
    response = await client.get(
        "/api/v1/ailake/services", headers={"Authorization": "Bearer s3cret"}
    )
    spec_validator.body(SPEC_SERVICES, "get", response)


async def test_token_argument_overrides_config_token(client_factory: ClientFactory) -> None:
    client = client_factory(make_config(token="from-config"), token="from-flag")
    ok = await client.get("/api/v1/ailake/services", headers={"Authorization": "Bearer from-flag"})
    assert ok.status_code == 200
    bad = await client.get(
        "/api/v1/ailake/services", headers={"Authorization": "Bearer from-config"}
    )
    assert_problem(bad, 401)


async def test_admin_endpoints_need_no_token(client_factory: ClientFactory) -> None:
    client = client_factory(make_config(token="s3cret"))
    assert (await client.get("/_emulator/operations")).status_code == 200
    assert (await client.get("/_emulator/executions")).status_code == 200


# --- admin ------------------------------------------------------------------------------


async def test_executions_list_started_runs_with_timestamps(
    client: httpx.AsyncClient, spec_validator: SpecValidator, clock: FakeClock
) -> None:
    body = {"payload": {"index": "a"}, "context": {"by": "me"}}
    op_id = spec_validator.run_accepted(await run(client, "reindex", body=body))
    [pending] = await executions(client)
    assert pending["operationId"] == op_id and pending["serviceId"] == SERVICE_ID
    assert pending["command"] == "reindex"
    assert pending["payload"] == {"index": "a"} and pending["context"] == {"by": "me"}
    assert pending["status"] == "pending" and pending["finishedAt"] is None
    assert isinstance(pending["startedAt"], str) and pending["startedAt"].endswith("Z")
    clock.advance(3)
    [done] = await executions(client)
    assert done["status"] == "succeeded"
    assert isinstance(done["finishedAt"], str) and done["finishedAt"] > pending["startedAt"]


async def test_admin_operations_list_body_status_and_posts(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    op_id = spec_validator.run_accepted(await run(client, "reindex", body={"payload": {"a": 1}}))
    [operation] = (await client.get("/_emulator/operations")).json()
    assert operation == {
        "id": op_id,
        "serviceId": SERVICE_ID,
        "command": "reindex",
        "body": {"payload": {"a": 1}},
        "status": "pending",
        "posts": 1,
        "executions": 1,
    }


async def test_reset_clears_operations_executions_and_restores_faults(
    client: httpx.AsyncClient, spec_validator: SpecValidator
) -> None:
    op_id = spec_validator.run_accepted(await run(client, "reindex"))
    put = await client.put("/_emulator/faults", json={"errorRate": 0.5})
    assert put.json()["errorRate"] == 0.5
    assert (await client.post("/_emulator/reset")).status_code == 204
    assert await executions(client) == []
    assert (await client.get("/_emulator/operations")).json() == []
    assert (await client.get("/_emulator/faults")).json()["errorRate"] == 0.0
    assert_problem(await client.get(f"/api/v1/ailake/operations/{op_id}"), 404)


async def test_reset_restarts_fail_times_counting(
    client: httpx.AsyncClient, spec_validator: SpecValidator, clock: FakeClock
) -> None:
    spec_validator.run_accepted(await run(client, "flaky"))
    await client.post("/_emulator/reset")
    op_id = spec_validator.run_accepted(await run(client, "flaky"))
    clock.advance(2)
    assert (await get_op(client, spec_validator, op_id))["status"] == "failed"


async def test_put_faults_returns_new_faults_and_keeps_unnamed_keys(
    client: httpx.AsyncClient,
) -> None:
    response = await client.put("/_emulator/faults", json={"throttleRate": 0.25, "latency": "5ms"})
    assert response.status_code == 200
    assert response.json() == {
        "errorRate": 0.0,
        "throttleRate": 0.25,
        "retryAfter": 1,
        "dropRate": 0.0,
        "latency": "5ms",
    }


@pytest.mark.parametrize(
    "body", [{"errorRate": 2}, {"bogus": 1}, {"latency": "soon"}, {"retryAfter": -1}, [1]]
)
async def test_put_faults_rejects_invalid_settings_with_400(
    client: httpx.AsyncClient, body: object
) -> None:
    assert_problem(await client.put("/_emulator/faults", json=body), 400)


# --- faults, in process -----------------------------------------------------------------


async def test_error_rate_one_answers_503_and_executes_nothing(
    client_factory: ClientFactory,
) -> None:
    client = client_factory(
        EmulatorConfig.from_dict(
            {**base_config_dict(), "faults": {"errorRate": 1}}, source="t.yaml"
        )
    )
    assert_problem(await run(client, "reindex"), 503)
    assert await executions(client) == []


async def test_throttle_rate_one_answers_429_plain_json_with_rate_headers(
    client_factory: ClientFactory,
) -> None:
    client = client_factory(
        EmulatorConfig.from_dict(
            {**base_config_dict(), "faults": {"throttleRate": 1, "retryAfter": 7}}, source="t.yaml"
        )
    )
    response = await client.get("/api/v1/ailake/services")
    assert response.status_code == 429
    assert response.headers["content-type"].startswith("application/json")
    assert set(response.json()) == {"error", "message"}
    assert response.headers["Retry-After"] == "7"
    for header in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert response.headers[header].isdigit()


async def test_drop_in_process_raises_after_the_run_started(
    client_factory: ClientFactory,
) -> None:
    client = client_factory(
        EmulatorConfig.from_dict({**base_config_dict(), "faults": {"dropRate": 1}}, source="t.yaml")
    )
    with pytest.raises(DroppedConnection):
        await run(client, "reindex", operation_id="op-1")
    [execution] = await executions(client)
    assert execution["operationId"] == "op-1"


async def test_seeded_fault_dice_are_reproducible(client_factory: ClientFactory) -> None:
    def config() -> EmulatorConfig:
        return EmulatorConfig.from_dict(
            {**base_config_dict(), "seed": 7, "faults": {"errorRate": 0.5}}, source="t.yaml"
        )

    async def statuses(client: httpx.AsyncClient) -> list[int]:
        return [(await client.get("/api/v1/ailake/services")).status_code for _ in range(30)]

    first = await statuses(client_factory(config()))
    second = await statuses(client_factory(config()))
    assert first == second
    assert set(first) == {200, 503}
