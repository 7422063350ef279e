"""Behaviour of reconciler.ailake.client against httpx.MockTransport.

MockTransport is used only for shapes a real server (or the emulator) cannot easily
produce; the happy paths and injected faults over real HTTP are in test_client_faults.py.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import httpx
import pytest

import reconciler
from reconciler.ailake.client import (
    AiLakeClient,
    ClientSettings,
    Operation,
    OperationFailure,
    RequestRecord,
    RunAccepted,
    ServiceInfo,
    TokenBucket,
)
from reconciler.errors import (
    ApiError,
    ConfigError,
    CredentialsError,
    OutcomeUnknownError,
    PermanentError,
    TemporaryError,
)

BASE = "https://ailake.example.com"
OP_ID = "e9fd5d74-8a1b-46bd-ac60-bd91e9206897"
OP_PATH = f"/api/v1/ailake/operations/{OP_ID}"
RUN_PATH = "/api/v1/ailake/services/svc-1/commands/reindex/run"

Handler = Callable[[httpx.Request], httpx.Response]


class FakeSleep:
    """Records every requested delay; advances an optional fake clock; never waits."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.now = 1000.0

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.now += delay

    def clock(self) -> float:
        return self.now


def make_client(
    handler: Handler,
    *,
    sleep: FakeSleep | None = None,
    records: list[RequestRecord] | None = None,
    clock: Callable[[], float] | None = None,
    **settings: Any,
) -> AiLakeClient:
    settings.setdefault("token", "tok-test")
    kwargs: dict[str, Any] = {}
    if clock is not None:
        kwargs["clock"] = clock
    return AiLakeClient(
        ClientSettings(base_url=BASE, **settings),
        transport=httpx.MockTransport(handler),
        sleep=sleep or FakeSleep(),
        observer=records.append if records is not None else None,
        **kwargs,
    )


def problem(status: int, title: str, detail: str, trace: str = "trace-1") -> httpx.Response:
    return httpx.Response(
        status,
        json={"title": title, "status": status, "detail": detail, "traceId": trace},
        headers={"content-type": "application/problem+json"},
    )


def accepted(op_id: str = OP_ID, body: bytes = b"") -> httpx.Response:
    return httpx.Response(
        202,
        content=body,
        headers={
            "operation-id": op_id,
            "operation-location": f"/api/v1/ailake/operations/{op_id}",
        },
    )


def pending(op_id: str = OP_ID) -> httpx.Response:
    return httpx.Response(
        200, json={"id": op_id, "kind": "run-service-command", "status": "pending"}
    )


async def run(client: AiLakeClient, **kwargs: Any) -> RunAccepted:
    kwargs.setdefault("payload", {"tables": ["orders"]})
    kwargs.setdefault("context", None)
    return await client.run_command("svc-1", "reindex", operation_id=OP_ID, **kwargs)


class Script:
    """A handler answering from a list of responses/exceptions, recording requests."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return answer(request)


# ----------------------------------------------------------------------- settings, headers


def test_settings_repr_hides_token() -> None:
    settings = ClientSettings(base_url=BASE, token="tok-SECRET-123")
    assert "tok-SECRET-123" not in repr(settings)
    assert "token" not in repr(settings)


def test_settings_reject_token_with_newline_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as info:
        ClientSettings(base_url=BASE, token="tok-SECRET-123\n")
    assert "tok-SECRET-123" not in str(info.value)


def test_settings_reject_non_http_url() -> None:
    with pytest.raises(ConfigError):
        ClientSettings(base_url="ftp://x")


async def test_requests_carry_bearer_token_and_user_agent() -> None:
    script = Script(pending())
    async with make_client(script, token="tok-abc") as client:
        await client.get_operation(OP_ID)
    request = script.requests[0]
    assert request.headers["authorization"] == "Bearer tok-abc"
    assert request.headers["user-agent"] == f"ailake-reconciler/{reconciler.__version__}"


async def test_no_authorization_header_without_token() -> None:
    script = Script(pending())
    async with make_client(script, token=None) as client:
        await client.get_operation(OP_ID)
    assert "authorization" not in script.requests[0].headers


def test_timeouts_and_limits_are_configured() -> None:
    client = AiLakeClient(
        ClientSettings(base_url=BASE, timeout=7.0, connect_timeout=2.0, pool_timeout=3.0)
    )
    timeout = client._http.timeout
    assert (timeout.read, timeout.connect, timeout.pool) == (7.0, 2.0, 3.0)


def test_missing_ca_file_is_a_config_error(tmp_path: Any) -> None:
    with pytest.raises(ConfigError):
        AiLakeClient(ClientSettings(base_url=BASE, ca_file=str(tmp_path / "nope.pem")))


# ----------------------------------------------------------------------- run_command


async def test_run_sends_operation_id_header_and_json_body() -> None:
    script = Script(accepted())
    async with make_client(script) as client:
        await run(client, payload={"tables": ["orders"]}, context={"requestedBy": "ci"})
    request = script.requests[0]
    assert request.method == "POST"
    assert request.url.path == RUN_PATH
    assert request.headers["operation-id"] == OP_ID
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "payload": {"tables": ["orders"]},
        "context": {"requestedBy": "ci"},
    }


async def test_run_without_payload_and_context_sends_empty_object() -> None:
    script = Script(accepted())
    async with make_client(script) as client:
        await run(client, payload=None, context=None)
    assert json.loads(script.requests[0].content) == {}


async def test_run_serializes_read_only_nested_mappings() -> None:
    script = Script(accepted())
    payload = MappingProxyType({"opts": MappingProxyType({"deep": True}), "t": ("a", "b")})
    async with make_client(script) as client:
        await run(client, payload=payload)
    assert json.loads(script.requests[0].content) == {
        "payload": {"opts": {"deep": True}, "t": ["a", "b"]}
    }


async def test_run_quotes_path_segments() -> None:
    script = Script(accepted())
    async with make_client(script) as client:
        await client.run_command(
            "svc/1 x", "re?index", operation_id=OP_ID, payload=None, context=None
        )
    assert script.requests[0].url.raw_path.startswith(
        b"/api/v1/ailake/services/svc%2F1%20x/commands/re%3Findex/run"
    )


async def test_run_202_with_empty_object_body_is_accepted() -> None:
    async with make_client(Script(accepted("server-id", body=b"{}"))) as client:
        result = await run(client)
    assert result == RunAccepted("server-id", "/api/v1/ailake/operations/server-id")


async def test_run_202_with_non_json_body_is_accepted() -> None:
    async with make_client(Script(accepted(body=b"<html>ok</html>"))) as client:
        assert (await run(client)).operation_id == OP_ID


async def test_run_202_without_operation_id_header_falls_back_to_sent_id() -> None:
    async with make_client(Script(httpx.Response(202))) as client:
        result = await run(client)
    assert result.operation_id == OP_ID
    assert result.location == OP_PATH


async def test_run_other_2xx_is_accepted() -> None:
    async with make_client(Script(httpx.Response(200, json={}))) as client:
        assert (await run(client)).operation_id == OP_ID


async def test_run_409_is_outcome_unknown() -> None:
    script = Script(problem(409, "Conflict", "operation exists with a different body"))
    async with make_client(script) as client:
        with pytest.raises(OutcomeUnknownError) as info:
            await run(client)
    assert info.value.operation_id == OP_ID
    assert info.value.status == 409
    assert len(script.requests) == 1


async def test_run_connect_error_before_send_is_retried() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), accepted())
    records: list[RequestRecord] = []
    sleep = FakeSleep()
    async with make_client(script, records=records, sleep=sleep) as client:
        assert (await run(client)).operation_id == OP_ID
    assert len(script.requests) == 3
    assert [r.code for r in records] == ["error", "error", "202"]
    assert len(sleep.delays) == 2


async def test_run_pool_timeout_is_retried() -> None:
    script = Script(httpx.PoolTimeout("pool full"), accepted())
    async with make_client(script) as client:
        assert (await run(client)).operation_id == OP_ID
    assert len(script.requests) == 2


async def test_run_connect_errors_exhausted_raise_temporary() -> None:
    script = Script(httpx.ConnectError("refused"))
    async with make_client(script, post_retries=2) as client:
        with pytest.raises(TemporaryError) as info:
            await run(client)
    assert not isinstance(info.value, OutcomeUnknownError)
    assert len(script.requests) == 3


async def test_run_read_timeout_is_outcome_unknown_and_not_retried() -> None:
    script = Script(httpx.ReadTimeout("read timed out"))
    async with make_client(script) as client:
        with pytest.raises(OutcomeUnknownError) as info:
            await run(client)
    assert info.value.operation_id == OP_ID
    assert len(script.requests) == 1


@pytest.mark.parametrize(
    "exc",
    [
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset"),
        httpx.WriteError("broken pipe"),
        httpx.WriteTimeout("write timed out"),
    ],
)
async def test_run_dropped_connection_is_outcome_unknown(exc: Exception) -> None:
    script = Script(exc)
    async with make_client(script) as client:
        with pytest.raises(OutcomeUnknownError):
            await run(client)
    assert len(script.requests) == 1


async def test_run_undecodable_answer_is_outcome_unknown() -> None:
    # The answer came (the command may be running) but its body cannot be decoded.
    script = Script(httpx.DecodingError("bad gzip"))
    async with make_client(script) as client:
        with pytest.raises(OutcomeUnknownError) as info:
            await run(client)
    assert info.value.operation_id == OP_ID
    assert len(script.requests) == 1


async def test_run_unsupported_protocol_is_permanent_and_not_retried() -> None:
    script = Script(httpx.UnsupportedProtocol("no such scheme"))
    async with make_client(script) as client:
        with pytest.raises(PermanentError, match="request could not be built"):
            await run(client)
    assert len(script.requests) == 1


async def test_run_429_longer_than_cap_is_returned_not_slept() -> None:
    throttled = httpx.Response(429, json={"error": "x"}, headers={"Retry-After": "600"})
    sleep = FakeSleep()
    script = Script(throttled)
    async with make_client(script, sleep=sleep, backoff_cap=30.0) as client:
        with pytest.raises(TemporaryError) as info:
            await run(client)
    assert info.value.delay == 600
    assert sleep.delays == []
    assert len(script.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
async def test_run_5xx_is_outcome_unknown_and_not_retried(status: int) -> None:
    script = Script(problem(status, "Server Error", "boom"))
    async with make_client(script) as client:
        with pytest.raises(OutcomeUnknownError) as info:
            await run(client)
    assert info.value.status == status
    assert len(script.requests) == 1


async def test_run_429_is_retried_after_retry_after() -> None:
    throttled = httpx.Response(
        429,
        json={"error": "Too Many Requests", "message": "slow down"},
        headers={"Retry-After": "3"},
    )
    script = Script(throttled, accepted())
    sleep = FakeSleep()
    async with make_client(script, sleep=sleep) as client:
        assert (await run(client)).operation_id == OP_ID
    assert len(sleep.delays) == 1
    assert sleep.delays[0] >= 3


async def test_run_429_exhausted_is_temporary_with_parsed_body() -> None:
    throttled = httpx.Response(
        429,
        json={"error": "Too Many Requests", "message": "slow down"},
        headers={"Retry-After": "1"},
    )
    script = Script(throttled)
    async with make_client(script, post_retries=1) as client:
        with pytest.raises(TemporaryError) as info:
            await run(client)
    assert not isinstance(info.value, OutcomeUnknownError)
    assert info.value.delay == 1
    assert info.value.title == "Too Many Requests"
    assert info.value.detail == "slow down"
    assert len(script.requests) == 2


async def test_run_400_is_permanent() -> None:
    script = Script(problem(400, "Bad Request", "payload too large"))
    async with make_client(script) as client:
        with pytest.raises(PermanentError) as info:
            await run(client)
    assert info.value.detail == "payload too large"
    assert len(script.requests) == 1


# ----------------------------------------------------------------------- error details


async def test_403_message_explains_entitlement_and_permission() -> None:
    async with make_client(Script(problem(403, "Forbidden", "denied"))) as client:
        with pytest.raises(CredentialsError) as info:
            await client.get_operation(OP_ID)
    message = str(info.value)
    assert "AiLake" in message
    assert "entitlement" in message
    assert "MANAGE" in message
    assert info.value.status == 403


async def test_401_is_permanent_and_blames_the_token() -> None:
    async with make_client(Script(problem(401, "Unauthorized", "bad token"))) as client:
        with pytest.raises(CredentialsError) as info:
            await client.list_services()
    assert isinstance(info.value, PermanentError)
    assert info.value.status == 401
    assert "token" in str(info.value)


async def test_401_without_a_token_says_none_is_configured() -> None:
    async with make_client(Script(problem(401, "Unauthorized", "no")), token=None) as client:
        with pytest.raises(CredentialsError, match="no API token configured"):
            await client.get_operation(OP_ID)


@pytest.mark.parametrize("status", [401, 403])
async def test_run_refused_for_credentials_is_not_retried(status: int) -> None:
    script = Script(problem(status, "Refused", "no"))
    async with make_client(script) as client:
        with pytest.raises(CredentialsError) as info:
            await run(client)
    assert info.value.status == status
    assert len(script.requests) == 1


async def test_problem_json_fields_are_parsed() -> None:
    async with make_client(Script(problem(404, "Not Found", "no svc", "trace-9"))) as client:
        with pytest.raises(PermanentError) as info:
            await client.service_status("svc-x")
    error = info.value
    assert (error.title, error.detail, error.trace_id) == ("Not Found", "no svc", "trace-9")
    assert error.method == "GET"
    assert error.endpoint == "/api/v1/ailake/services/svc-x/status"
    assert error.body is not None and "no svc" in error.body


async def test_trace_id_falls_back_to_header() -> None:
    response = httpx.Response(400, text="nope", headers={"X-GDC-TRACE-ID": "hdr-trace"})
    async with make_client(Script(response)) as client:
        with pytest.raises(PermanentError) as info:
            await client.get_operation(OP_ID)
    assert info.value.trace_id == "hdr-trace"


async def test_error_body_is_truncated() -> None:
    async with make_client(Script(httpx.Response(400, text="x" * 10_000))) as client:
        with pytest.raises(PermanentError) as info:
            await client.get_operation(OP_ID)
    assert info.value.body is not None
    assert 2000 <= len(info.value.body) < 2100


# ----------------------------------------------------------------------- GET retries


async def test_get_retried_on_503_then_succeeds() -> None:
    script = Script(
        problem(503, "Unavailable", "busy"), problem(503, "Unavailable", "busy"), pending()
    )
    records: list[RequestRecord] = []
    async with make_client(script, records=records) as client:
        op = await client.get_operation(OP_ID)
    assert op is not None and op.status == "pending"
    assert [r.code for r in records] == ["503", "503", "200"]


async def test_get_retries_exhausted_raise_temporary() -> None:
    script = Script(problem(502, "Bad Gateway", "upstream"))
    async with make_client(script, get_retries=3) as client:
        with pytest.raises(TemporaryError) as info:
            await client.get_operation(OP_ID)
    assert info.value.status == 502
    assert len(script.requests) == 4


async def test_get_read_timeout_is_retried() -> None:
    script = Script(httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("dropped"), pending())
    async with make_client(script) as client:
        assert await client.get_operation(OP_ID) is not None
    assert len(script.requests) == 3


async def test_get_transport_errors_exhausted_raise_temporary() -> None:
    script = Script(httpx.ConnectError("refused"))
    async with make_client(script, get_retries=2) as client:
        with pytest.raises(TemporaryError, match="gave up after 3 attempts"):
            await client.get_operation(OP_ID)
    assert len(script.requests) == 3


async def test_get_unsupported_protocol_is_permanent_and_not_retried() -> None:
    script = Script(httpx.UnsupportedProtocol("no such scheme"))
    async with make_client(script) as client:
        with pytest.raises(PermanentError, match="request could not be built"):
            await client.get_operation(OP_ID)
    assert len(script.requests) == 1


async def test_get_undecodable_answer_is_retried() -> None:
    script = Script(httpx.DecodingError("bad gzip"), pending())
    async with make_client(script) as client:
        assert await client.get_operation(OP_ID) is not None
    assert len(script.requests) == 2


async def test_get_409_is_temporary() -> None:
    script = Script(problem(409, "Conflict", "busy"))
    async with make_client(script, get_retries=1) as client:
        with pytest.raises(TemporaryError) as info:
            await client.get_operation(OP_ID)
    assert info.value.status == 409
    assert len(script.requests) == 2


async def test_get_html_200_is_temporary() -> None:
    html = httpx.Response(
        200, text="<html>proxy login</html>", headers={"content-type": "text/html"}
    )
    script = Script(html)
    async with make_client(script, get_retries=1) as client:
        with pytest.raises(TemporaryError) as info:
            await client.get_operation(OP_ID)
    assert "JSON" in str(info.value)
    assert len(script.requests) == 2


async def test_get_html_200_then_json_succeeds() -> None:
    script = Script(httpx.Response(200, text="<html></html>"), pending())
    async with make_client(script) as client:
        assert await client.get_operation(OP_ID) is not None


async def test_backoff_never_below_retry_after() -> None:
    throttled = httpx.Response(
        429, json={"error": "x", "message": "y"}, headers={"Retry-After": "7"}
    )
    sleep = FakeSleep()
    script = Script(throttled)
    async with make_client(script, sleep=sleep, get_retries=4, backoff_cap=30.0) as client:
        with pytest.raises(TemporaryError) as info:
            await client.get_operation(OP_ID)
    assert info.value.delay == 7
    assert len(sleep.delays) == 4
    assert all(delay >= 7 for delay in sleep.delays)


async def test_backoff_is_capped_full_jitter() -> None:
    sleep = FakeSleep()
    script = Script(problem(503, "Unavailable", "busy"))
    async with make_client(
        script, sleep=sleep, get_retries=6, backoff_base=0.5, backoff_cap=2.0
    ) as client:
        with pytest.raises(TemporaryError):
            await client.get_operation(OP_ID)
    ceilings = [min(2.0, 0.5 * 2**n) for n in range(6)]
    assert len(sleep.delays) == 6
    assert all(0 <= d <= c for d, c in zip(sleep.delays, ceilings, strict=True))


async def test_retry_after_http_date_is_parsed() -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    response = httpx.Response(503, text="busy", headers={"Retry-After": when})
    async with make_client(Script(response), get_retries=0) as client:
        with pytest.raises(TemporaryError) as info:
            await client.get_operation(OP_ID)
    assert info.value.delay is not None
    assert 115 <= info.value.delay <= 121


async def test_x_ratelimit_reset_used_without_retry_after() -> None:
    response = httpx.Response(429, json={"error": "x"}, headers={"X-RateLimit-Reset": "4"})
    sleep = FakeSleep()
    async with make_client(Script(response, pending()), sleep=sleep) as client:
        assert await client.get_operation(OP_ID) is not None
    assert sleep.delays[0] >= 4


async def test_retry_after_longer_than_cap_is_returned_not_slept() -> None:
    response = httpx.Response(503, text="busy", headers={"Retry-After": "600"})
    sleep = FakeSleep()
    script = Script(response)
    async with make_client(script, sleep=sleep, backoff_cap=30.0) as client:
        with pytest.raises(TemporaryError) as info:
            await client.get_operation(OP_ID)
    assert info.value.delay == 600
    assert sleep.delays == []
    assert len(script.requests) == 1


# ----------------------------------------------------------------------- get_operation


async def test_get_operation_404_is_none() -> None:
    script = Script(problem(404, "Not Found", "no such operation"))
    async with make_client(script) as client:
        assert await client.get_operation(OP_ID) is None
    assert len(script.requests) == 1


async def test_get_operation_parses_succeeded_with_result() -> None:
    body = {"id": OP_ID, "kind": "run-service-command", "status": "succeeded", "result": {"n": 1}}
    async with make_client(Script(httpx.Response(200, json=body))) as client:
        op = await client.get_operation(OP_ID)
    assert op == Operation(OP_ID, "run-service-command", "succeeded", {"n": 1}, None, body)
    assert op.terminal


async def test_get_operation_parses_failed_error() -> None:
    body = {
        "id": OP_ID,
        "kind": "run-service-command",
        "status": "failed",
        "error": {"title": "Command failed", "status": 500, "detail": "boom"},
    }
    async with make_client(Script(httpx.Response(200, json=body))) as client:
        op = await client.get_operation(OP_ID)
    assert op is not None and op.terminal
    assert op.error == OperationFailure("Command failed", 500, "boom")


async def test_get_operation_failed_without_error_gets_placeholder() -> None:
    body = {"id": OP_ID, "kind": "run-service-command", "status": "failed"}
    async with make_client(Script(httpx.Response(200, json=body))) as client:
        op = await client.get_operation(OP_ID)
    assert op is not None and op.error is not None


async def test_get_operation_keeps_unknown_kind_and_status() -> None:
    body = {"id": OP_ID, "kind": "brand-new-kind", "status": "cancelling", "extra": [1]}
    async with make_client(Script(httpx.Response(200, json=body))) as client:
        op = await client.get_operation(OP_ID)
    assert op is not None
    assert (op.kind, op.status, op.terminal) == ("brand-new-kind", "cancelling", False)
    assert op.raw["extra"] == [1]


async def test_get_operation_tolerates_malformed_fields() -> None:
    body = {"status": "failed", "kind": 7, "result": [1], "error": {"status": "bad"}}
    async with make_client(Script(httpx.Response(200, json=body))) as client:
        op = await client.get_operation(OP_ID)
    assert op is not None
    assert (op.id, op.kind, op.result) == (OP_ID, "", None)
    assert op.error == OperationFailure("", 0, "")


async def test_get_operation_without_status_is_temporary() -> None:
    async with make_client(Script(httpx.Response(200, json={"id": OP_ID})), get_retries=0) as c:
        with pytest.raises(TemporaryError):
            await c.get_operation(OP_ID)


async def test_get_operation_json_array_body_is_temporary() -> None:
    async with make_client(Script(httpx.Response(200, json=[1, 2])), get_retries=0) as c:
        with pytest.raises(TemporaryError):
            await c.get_operation(OP_ID)


# ----------------------------------------------------------------------- services


def services_page(items: list[tuple[str, str]], number: int, size: int, total: int | None) -> Any:
    page: dict[str, Any] = {"number": number, "size": size}
    if total is not None:
        page["totalPages"] = total
    return {
        "data": [
            {"id": i, "type": "serviceInfo", "attributes": {"name": n, "serviceId": i}}
            for i, n in items
        ],
        "links": {"self": f"{BASE}/api/v1/ailake/services?page={number}"},
        "meta": {"page": page},
    }


def paged_handler(pages: list[list[tuple[str, str]]], *, total: bool) -> Script:
    def answer(request: httpx.Request) -> httpx.Response:
        number = int(request.url.params["page"])
        size = int(request.url.params["size"])
        items = pages[number] if number < len(pages) else []
        return httpx.Response(
            200, json=services_page(items, number, size, len(pages) if total else None)
        )

    return Script(answer)


async def test_list_services_follows_total_pages() -> None:
    pages = [[("a", "alpha"), ("b", "beta")], [("c", "gamma"), ("d", "delta")]]
    script = paged_handler(pages, total=True)
    async with make_client(script) as client:
        services = await client.list_services(page_size=2)
    assert [s.id for s in services] == ["a", "b", "c", "d"]
    assert [r.url.params["page"] for r in script.requests] == ["0", "1"]
    assert all(r.url.params["metaInclude"] == "page" for r in script.requests)


async def test_list_services_stops_on_short_page() -> None:
    pages = [[("a", "alpha"), ("b", "beta")], [("c", "gamma"), ("d", "delta")], [("e", "eps")]]
    script = paged_handler(pages, total=False)
    async with make_client(script) as client:
        services = await client.list_services(page_size=2)
    assert services[-1] == ServiceInfo("e", "eps", "e")
    assert len(services) == 5
    assert len(script.requests) == 3


async def test_list_services_full_last_page_without_total_asks_once_more() -> None:
    script = paged_handler([[("a", "alpha")]], total=False)
    async with make_client(script) as client:
        services = await client.list_services(page_size=1)
    assert [s.name for s in services] == ["alpha"]
    assert len(script.requests) == 2


async def test_list_services_uses_item_id_when_service_id_missing() -> None:
    body = {"data": [{"id": "x", "type": "serviceInfo", "attributes": {"name": "n"}}, 5]}
    async with make_client(Script(httpx.Response(200, json=body))) as client:
        assert await client.list_services() == [ServiceInfo("x", "n", "x")]


async def test_list_services_rejects_bad_page_size() -> None:
    async with make_client(Script(pending())) as client:
        with pytest.raises(ValueError):
            await client.list_services(page_size=0)


async def test_service_status_returns_status_object() -> None:
    response = httpx.Response(200, json={"status": {"ready": True}})
    async with make_client(Script(response)) as client:
        assert await client.service_status("svc-1") == {"ready": True}


async def test_service_status_null_is_none() -> None:
    async with make_client(Script(httpx.Response(200, json={"status": None}))) as client:
        assert await client.service_status("svc-1") is None


# ----------------------------------------------------------------------- observer, rate limit


async def test_observer_gets_templated_endpoint_per_attempt() -> None:
    records: list[RequestRecord] = []
    script = Script(problem(503, "x", "y"), pending())
    async with make_client(script, records=records) as client:
        await client.get_operation(OP_ID)
    assert [(r.endpoint, r.method, r.code) for r in records] == [
        ("/api/v1/ailake/operations/{operationId}", "GET", "503"),
        ("/api/v1/ailake/operations/{operationId}", "GET", "200"),
    ]
    assert all(r.duration >= 0 for r in records)


async def test_observer_failure_does_not_break_calls() -> None:
    def broken(record: RequestRecord) -> None:
        raise RuntimeError("metrics bug")

    client = AiLakeClient(
        ClientSettings(base_url=BASE),
        transport=httpx.MockTransport(Script(pending())),
        observer=broken,
    )
    async with client:
        assert await client.get_operation(OP_ID) is not None


async def test_rate_limiter_spaces_sequential_requests() -> None:
    sleep = FakeSleep()
    async with make_client(
        Script(pending()), sleep=sleep, clock=sleep.clock, rate_limit=2.0
    ) as client:
        for _ in range(5):
            await client.get_operation(OP_ID)
    # burst of 2, then one request every 0.5 s
    assert sleep.delays == pytest.approx([0.5, 0.5, 0.5])


async def test_rate_limiter_queues_concurrent_requests() -> None:
    sleep = FakeSleep()
    frozen = 1000.0
    async with make_client(
        Script(pending()), sleep=sleep, clock=lambda: frozen, rate_limit=2.0
    ) as client:
        await asyncio.gather(*(client.get_operation(OP_ID) for _ in range(5)))
    assert sorted(sleep.delays) == pytest.approx([0.5, 1.0, 1.5])


async def test_rate_limiter_below_one_per_second_has_burst_one() -> None:
    sleep = FakeSleep()
    bucket = TokenBucket(0.5, sleep=sleep, clock=sleep.clock)
    await bucket.acquire()
    await bucket.acquire()
    assert sleep.delays == pytest.approx([2.0])


# ----------------------------------------------------------------------- token secrecy

SECRET = "tok-SECRET-123"


def echo_secret(status: int) -> Handler:
    """A hostile server that echoes the Authorization header back in its error body."""

    def answer(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization", "")
        return httpx.Response(
            status,
            json={"title": f"T {auth}", "detail": f"D {auth}", "traceId": auth},
            headers={"X-GDC-TRACE-ID": auth},
        )

    return answer


async def test_token_never_leaks_in_reprs_errors_or_records() -> None:
    records: list[RequestRecord] = []
    errors: list[ApiError] = []
    cases: list[tuple[Handler, str]] = [
        (echo_secret(401), "get"),
        (echo_secret(403), "run"),
        (echo_secret(503), "get"),
        (echo_secret(429), "run"),
        (echo_secret(500), "run"),
        (echo_secret(409), "run"),
        (Script(httpx.ReadTimeout(f"timeout {SECRET}")), "run"),
        (Script(httpx.ConnectError(f"refused {SECRET}")), "run"),
        (Script(httpx.ConnectError(f"refused {SECRET}")), "get"),
        (Script(httpx.Response(200, text=f"<html>{SECRET}</html>")), "get"),
    ]
    for handler, call in cases:
        client = make_client(handler, token=SECRET, records=records, get_retries=1, post_retries=1)
        assert SECRET not in repr(client)
        assert SECRET not in repr(client.settings)
        async with client:
            with pytest.raises(ApiError) as info:
                if call == "run":
                    await run(client)
                else:
                    await client.get_operation(OP_ID)
        errors.append(info.value)
    kinds = {type(e) for e in errors}
    assert kinds == {CredentialsError, TemporaryError, OutcomeUnknownError}
    for error in errors:
        assert SECRET not in str(error)
        assert SECRET not in repr(error.args)
        assert SECRET not in repr(vars(error))
        assert SECRET not in (error.body or "")
    assert records
    for record in records:
        assert SECRET not in repr(record)
