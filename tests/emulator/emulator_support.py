"""Helpers of the emulator tests: configs, a fake clock, spec validation, problem checks.

Every emulator answer the tests look at is checked against ``schemas/ailake-openapi.json``
(the repository's copy of the contract) with openapi-schema-validator, so a test that passes
also proves the answer is one a real client of the spec accepts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from reconciler.ailake.emulator import EmulatorConfig

SPEC_PATH = Path(__file__).resolve().parents[2] / "schemas" / "ailake-openapi.json"
SPEC_URI = "urn:ailake-openapi"

SERVICE_ID = "6f1c2a4e-0000-4000-8000-00000000aaaa"
OTHER_SERVICE_ID = "6f1c2a4e-0000-4000-8000-00000000bbbb"
SPEC_OPERATION = "/api/v1/ailake/operations/{operationId}"
SPEC_SERVICES = "/api/v1/ailake/services"
SPEC_STATUS = "/api/v1/ailake/services/{serviceId}/status"
SPEC_RUN = "/api/v1/ailake/services/{serviceId}/commands/{commandName}/run"


def base_config_dict() -> dict[str, Any]:
    """A small config exercising every command behaviour."""
    return {
        "services": [
            {
                "id": SERVICE_ID,
                "name": "vectors",
                "status": {"ready": True, "commands": ["reindex", "broken", "flaky", "hang"]},
                "commands": {
                    "reindex": {"duration": "2s"},
                    "broken": {"duration": "1s", "fail": True},
                    "flaky": {"duration": "1s", "failTimes": 2},
                    "hang": {"duration": "never"},
                    "instant": {"duration": "0s"},
                },
            },
            {"id": OTHER_SERVICE_ID, "name": "db", "commands": {"reindex": {"duration": "1s"}}},
        ]
    }


def make_config(**overrides: Any) -> EmulatorConfig:
    data = base_config_dict()
    data.update(overrides)
    return EmulatorConfig.from_dict(data, source="test.yaml")


class FakeClock:
    """A monotonic clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SpecValidator:
    """Validates bodies and headers against the OpenAPI document's response definitions."""

    def __init__(self) -> None:
        self.spec: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
        resource = Resource.from_contents(self.spec, default_specification=DRAFT4)
        self.registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)

    def _pointer(self, path: str, method: str, status: int) -> str:
        escaped = path.replace("~", "~0").replace("/", "~1")
        return f"{SPEC_URI}#/paths/{escaped}/{method}/responses/{status}"

    def body(self, path: str, method: str, response: httpx.Response) -> Any:
        """Assert ``response`` is the documented JSON answer of ``method path``; return it."""
        status = response.status_code
        definition = self.spec["paths"][path][method]["responses"][str(status)]
        assert "application/json" in definition["content"]
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        schema = {"$ref": f"{self._pointer(path, method, status)}/content/application~1json/schema"}
        OAS30Validator(schema, registry=self.registry).validate(body)
        return body

    def run_accepted(self, response: httpx.Response) -> str:
        """Assert a documented 202 of the run endpoint (headers per spec, empty body)."""
        assert response.status_code == 202, response.text
        definition = self.spec["paths"][SPEC_RUN]["post"]["responses"]["202"]
        assert response.content == b""
        for name, header in definition["headers"].items():
            if header.get("required"):
                assert name in response.headers, f"missing header {name}"
            if name in response.headers:
                OAS30Validator(header["schema"]).validate(response.headers[name])
        operation_id = response.headers["operation-id"]
        assert response.headers["operation-location"] == f"/api/v1/ailake/operations/{operation_id}"
        return operation_id


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert an ``application/problem+json`` error with trace id in body and header."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"title", "status", "detail", "traceId"}
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert response.headers["X-GDC-TRACE-ID"] == body["traceId"]
    return body


ClientFactory = Callable[..., httpx.AsyncClient]
