"""GoodData's own generated client (``gooddata-api-client`` 1.78.0) against a real emulator.

If the official client deserializes every answer (list, status, run headers, operations in
each of pending, succeeded and failed), the emulator speaks the API as GoodData ships it,
not merely as we read the spec. Runs over a real socket with a bearer token configured.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import gooddata_api_client
import pytest
from emulator_support import OTHER_SERVICE_ID, SERVICE_ID, base_config_dict
from gooddata_api_client.api.ai_lake_services_operations_api import (
    AILakeServicesOperationsApi,
)
from gooddata_api_client.model.run_service_command_request import RunServiceCommandRequest

from reconciler.ailake.emulator import EmulatorConfig, RunningEmulator, start_background

TOKEN = "gd-test-token"


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    data = base_config_dict()
    commands = data["services"][0]["commands"]
    commands["reindex"] = {"duration": "200ms"}
    commands["broken"] = {"duration": "200ms", "fail": True}
    config = EmulatorConfig.from_dict(data, source="gooddata-test.yaml")
    with start_background(config, token=TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def api(emulator: RunningEmulator) -> Iterator[AILakeServicesOperationsApi]:
    configuration = gooddata_api_client.Configuration(host=emulator.url)
    with gooddata_api_client.ApiClient(
        configuration, header_name="Authorization", header_value=f"Bearer {TOKEN}"
    ) as client:
        yield AILakeServicesOperationsApi(client)


def _run(api: AILakeServicesOperationsApi, command: str, operation_id: str) -> dict[str, str]:
    request = RunServiceCommandRequest(payload={"index": "a"}, context={"by": "test"})
    data, status, headers = api.run_ai_lake_service_command(
        SERVICE_ID, command, request, operation_id=operation_id, _return_http_data_only=False
    )
    assert status == 202
    assert data is None
    return {key.lower(): value for key, value in headers.items()}


def _wait_for(api: AILakeServicesOperationsApi, operation_id: str, status: str) -> Any:
    deadline = time.monotonic() + 5
    while True:
        operation = api.get_ai_lake_operation(operation_id)
        if operation.status == status or time.monotonic() > deadline:
            return operation
        time.sleep(0.05)


def test_client_lists_services_with_page_meta(api: AILakeServicesOperationsApi) -> None:
    result = api.list_ai_lake_services(page=0, size=50, meta_include=["page"])
    assert [item.id for item in result.data] == [SERVICE_ID, OTHER_SERVICE_ID]
    assert result.data[0].attributes.name == "vectors"
    assert result.data[0].attributes.service_id == SERVICE_ID
    assert result.meta.page.total_elements == 2
    assert result.meta.page.total_pages == 1
    assert result.links["_self"].endswith("metaInclude=page")


def test_client_pages_through_services(api: AILakeServicesOperationsApi) -> None:
    first = api.list_ai_lake_services(page=0, size=1)
    second = api.list_ai_lake_services(page=1, size=1)
    assert [first.data[0].id, second.data[0].id] == [SERVICE_ID, OTHER_SERVICE_ID]
    assert second.meta.page.number == 1


def test_client_reads_service_status(api: AILakeServicesOperationsApi) -> None:
    result = api.get_ai_lake_service_status(SERVICE_ID)
    assert result.to_dict()["status"]["ready"] is True


def test_client_reads_null_service_status(api: AILakeServicesOperationsApi) -> None:
    assert api.get_ai_lake_service_status(OTHER_SERVICE_ID).status is None


def test_client_runs_command_and_reads_it_pending_then_succeeded(
    api: AILakeServicesOperationsApi,
) -> None:
    operation_id = str(uuid.uuid4())
    headers = _run(api, "reindex", operation_id)
    assert headers["operation-id"] == operation_id
    assert headers["operation-location"] == f"/api/v1/ailake/operations/{operation_id}"

    pending = api.get_ai_lake_operation(operation_id)
    assert pending.status == "pending"
    assert pending.kind == "run-service-command"
    assert pending.id == operation_id

    succeeded = _wait_for(api, operation_id, "succeeded")
    assert succeeded.status == "succeeded"
    assert isinstance(succeeded.to_dict()["result"], dict)


def test_client_reads_failed_operation_error(api: AILakeServicesOperationsApi) -> None:
    operation_id = str(uuid.uuid4())
    _run(api, "broken", operation_id)
    failed = _wait_for(api, operation_id, "failed")
    assert failed.status == "failed"
    # gooddata-api-client 1.78.0 quirk: ``failed.error`` raises ApiValueError; the SDK (and
    # we) read it through to_dict().
    error = failed.to_dict()["error"]
    assert set(error) == {"title", "status", "detail"}
    assert isinstance(error["status"], int)


def test_client_reads_never_ending_operation_as_pending(
    api: AILakeServicesOperationsApi,
) -> None:
    operation_id = str(uuid.uuid4())
    _run(api, "hang", operation_id)
    time.sleep(0.3)
    assert api.get_ai_lake_operation(operation_id).status == "pending"


def test_client_sees_404_for_unknown_operation(api: AILakeServicesOperationsApi) -> None:
    with pytest.raises(gooddata_api_client.ApiException) as info:
        api.get_ai_lake_operation(str(uuid.uuid4()))
    assert info.value.status == 404


def test_client_rerun_with_same_operation_id_does_not_execute_twice(
    api: AILakeServicesOperationsApi, emulator: RunningEmulator
) -> None:
    operation_id = str(uuid.uuid4())
    _run(api, "reindex", operation_id)
    assert _run(api, "reindex", operation_id)["operation-id"] == operation_id
    runs = [e for e in emulator.state.list_executions() if e["operationId"] == operation_id]
    assert len(runs) == 1
